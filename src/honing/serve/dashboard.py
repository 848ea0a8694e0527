"""The web dashboard at ``/``: one static page (vanilla HTML, CSS and JavaScript, no build step) that
talks to the same HTTP API as the official ``openai`` client, with the same key.

    GET /                       index.html (the page; hash routes #/, #/jobs/<id>, #/new, #/chat)
    GET /dashboard/static/...   app.js, style.css

Nothing here reads the database or a run directory: the page shows exactly what the API returns, so
the dashboard, the client and the CLI report the same facts. Every string from the API is inserted as
text (``textContent``), never as HTML; the evaluation report is shown in a sandboxed ``srcdoc`` frame
(no scripts, opaque origin), and a Content-Security-Policy allows only this origin's scripts.
"""

from __future__ import annotations

from pathlib import Path

STATIC_DIR = Path(__file__).with_name("dashboard")
STATIC_PREFIX = "/dashboard/static"

# Scripts only from this origin (no inline script, no eval); inline styles and data: images because
# the evaluation report (shown in a srcdoc frame, which inherits this policy) embeds both.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; frame-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # The page is small and changes with the installed version: always revalidate.
    "Cache-Control": "no-cache",
}


def mount(app) -> None:
    """Serve the dashboard on ``app``: ``/`` and its static assets (not part of the OpenAPI document)."""
    from fastapi.responses import FileResponse, PlainTextResponse
    from fastapi.staticfiles import StaticFiles

    if not (STATIC_DIR / "index.html").is_file():
        # An install without the package data: the API still works; the page says what is missing.
        @app.get("/", include_in_schema=False)
        def dashboard_missing():
            return PlainTextResponse(f"dashboard assets missing: {STATIC_DIR / 'index.html'}", status_code=503)

        return

    @app.get("/", include_in_schema=False)
    def dashboard_index():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=HEADERS)

    app.mount(STATIC_PREFIX, StaticFiles(directory=STATIC_DIR), name="dashboard-static")
