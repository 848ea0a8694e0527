"""The dashboard at ``/``, in a real headless Chromium (Debian's ``chromium``, driven by Playwright) against
a real ``hone serve`` subprocess: upload a file and start a job through the form, watch it succeed with its
loss curve drawn, then chat with the fine-tuned model (streamed).

The documentation's screenshot is made by a separate test, skipped unless asked for (it fine-tunes the
embedded model for a few minutes, so the picture shows a real curve and a real report):

    HONING_DASHBOARD_SCREENSHOT=docs/dashboard.png .venv/bin/python -m pytest tests/test_dashboard.py -k screenshot
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STATIC = REPO / "src" / "honing" / "serve" / "dashboard"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


# ---------------------------------------------------------------------------------------------- static checks
def test_no_api_string_reaches_the_page_as_html():
    """The escaping rule, checked on the source: nothing in the front end parses strings as HTML."""
    js = (STATIC / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in js, f"app.js uses {sink}: insert API strings with h()/textContent"
    # The one deliberate HTML sink is the report frame, and it is sandboxed with no permissions.
    assert js.count(".srcdoc =") == 1 and 'sandbox: ""' in js


def test_mount_serves_the_page_with_a_strict_policy():
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from honing.serve.dashboard import mount

    app = FastAPI()
    mount(app)
    client = TestClient(app)
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-eval" not in csp
    # Every asset the page names is served.
    for ref in re.findall(r'(?:src|href)="(/dashboard/static/[^"]+)"', page.text):
        assert client.get(ref).status_code == 200, ref
    assert client.get("/dashboard/static/nope.js").status_code == 404
    assert "/" not in client.get("/openapi.json").json()["paths"]


# ---------------------------------------------------------------------------------------------- the browser
@pytest.fixture(scope="module")
def browser():
    path = chromium_path()
    if path is None:
        pytest.skip("chromium not found (apt-get install -y chromium; scripts/system_deps.sh installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install -e '.[dev]')")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield b
        b.close()


class PageLog:
    """Console errors and uncaught exceptions of a page: a dashboard that throws fails the test."""

    def __init__(self, page):
        self.errors: list[str] = []
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        page.on("console", lambda m: self.errors.append(f"console: {m.text}") if m.type == "error" else None)

    def unexpected(self, allowed=()) -> list[str]:
        return [e for e in self.errors if not any(a in e for a in allowed)]


def api_json(server, path: str, body: dict | None = None) -> dict:
    """The same API the page calls, from Python (to compare what the page shows with what the API says)."""
    import urllib.request

    req = urllib.request.Request(server.base_url + path, data=json.dumps(body).encode() if body else None,
                                 headers={"Content-Type": "application/json",
                                          "Authorization": f"Bearer {server.api_key}"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def start_job_through_form(page, *, model: str, train: Path, valid: Path, epochs: int, honing_config: dict,
                           suffix: str, timeout_s: float) -> str:
    """Fill the New job form, submit, and wait on the job page (updated in place by polling, no reload)
    until the job ends. Returns the job id."""
    page.click("nav >> text=New job")
    # The model list comes from GET /v1/models; the embedded model is always there.
    page.wait_for_selector("#model-list option[value='smollm2-135m-instruct']", state="attached")
    page.fill("#model", model)
    page.set_input_files("#training-file", str(train))
    page.set_input_files("#validation-file", str(valid))
    page.fill("#n_epochs", str(epochs))
    page.fill("#suffix", suffix)
    page.fill("#honing-config", json.dumps(honing_config))
    page.click("#start-job")
    page.wait_for_selector("#loss-chart")
    first = page.text_content(".headline [data-status]", timeout=30_000)
    assert first in ("validating_files", "queued", "running", "succeeded")
    page.wait_for_selector(".headline [data-status=succeeded], .headline [data-status=failed]",
                           timeout=timeout_s * 1000)
    return page.text_content(".headline h1")


def test_dashboard_end_to_end(browser, tiny_llama_dir, tmp_path):
    """Load /, upload a file and start a job through the form, watch it run and succeed with its loss curve
    drawn, its events, checkpoints, validation and evaluation report, then chat with the result."""
    from serve_helpers import chat_rows, start_server

    train = tmp_path / "train.jsonl"
    train.write_text(chat_rows(16))
    valid = tmp_path / "valid.jsonl"
    valid.write_text(chat_rows(10).replace("code word", "secret word"))
    server = start_server(tmp_path)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    log = PageLog(page)
    try:
        page.goto(server.url + "/")
        page.wait_for_selector("#jobs >> text=No jobs yet")
        job_id = start_job_through_form(page, model=str(tiny_llama_dir), train=train, valid=valid, epochs=2,
                                        honing_config={"max_steps": 4}, suffix="dash", timeout_s=180)
        job = api_json(server, f"/fine_tuning/jobs/{job_id}")
        assert job["status"] == "succeeded", (job["error"], server.log()[-3000:])

        # The curve shows exactly the run's metrics: one train point per step, evals where they were run.
        rows = api_json(server, f"/fine_tuning/jobs/{job_id}/metrics")["data"]
        chart = page.locator("#loss-chart svg")
        n_train = sum(r.get("train_loss") is not None for r in rows)
        n_eval = sum(r.get("eval_loss") is not None for r in rows)
        assert n_train == 4 and int(chart.get_attribute("data-train-points")) == n_train
        assert int(chart.get_attribute("data-eval-points")) == n_eval >= 1
        assert len(page.get_attribute("#loss-chart polyline.train", "points").split()) == n_train
        assert page.text_content("#progress-text") == "step 4 of 4"
        # Hyperparameters as resolved (auto batch size became a number), both files validated.
        hyper = page.text_content("#hyperparameters")
        assert "n_epochs2" in hyper.replace(" ", "") and "auto" not in hyper.split("batch_size")[1][:8]
        assert page.locator("#file-validation .validation[data-ok=true]").count() == 2
        ckpts = api_json(server, f"/fine_tuning/jobs/{job_id}/checkpoints?limit=100")["data"]
        assert ckpts and page.locator("#checkpoints tbody tr").count() == len(ckpts)
        assert page.locator("#events tr.metrics").count() >= 4
        # The evaluation report (fine-tuned vs zero-shot, forgetting) in its sandboxed frame.
        page.wait_for_selector("#report-frame", timeout=60_000)
        report = page.frame_locator("#report-frame").locator("body")
        assert "zero-shot" in report.inner_text() and "fine-tuned" in report.inner_text()

        # The jobs list shows it finished, with its progress.
        page.click("nav >> text=Jobs")
        row = page.locator(f"#jobs tr[data-job='{job_id}']")
        row.locator("[data-status=succeeded]").wait_for()
        assert row.locator(".progress .num").text_content() == "4/4"

        # Chat with the fine-tuned model, streamed; the text arrives as text (no markup is parsed).
        page.click(f"#jobs a[href='#/jobs/{job_id}']")
        page.click("#chat-with-model")
        page.wait_for_selector("#chat-model option", state="attached")
        assert page.input_value("#chat-model") == job["fine_tuned_model"]
        prompt = 'Say the code word number 3. <img src=x onerror="document.title=1">'
        page.fill("#chat-max-tokens", "8")
        page.fill("#chat-temperature", "0")
        page.fill("#chat-input", prompt)
        page.click("#chat-send")
        page.wait_for_selector(".msg.assistant[data-done=true]", timeout=60_000)
        assert page.text_content(".msg.user") == prompt and page.locator("#chat-log img").count() == 0
        # Control: the same string parsed as HTML does make an element (so the check above can fail), and
        # its inline handler is still refused by the page's Content-Security-Policy.
        assert page.evaluate("s => { const d = document.createElement('div'); d.innerHTML = s; "
                             "document.body.append(d); return d.querySelectorAll('img').length; }", prompt) == 1
        page.wait_for_timeout(300)
        assert page.title() == "Honing"
        streamed = page.text_content(".msg.assistant")
        # Greedy decoding: the pieces the page assembled from the stream equal the server's whole answer.
        whole = api_json(server, "/chat/completions", {"model": job["fine_tuned_model"], "max_tokens": 8,
                                                       "temperature": 0, "messages": [{"role": "user", "content": prompt}]})
        assert streamed == whole["choices"][0]["message"]["content"] and streamed
        assert "completion tokens" in page.text_content("#chat-usage")
        # Only the report's 404 while it was being written, the control's refused handler and its image.
        assert log.unexpected(allowed=("404", "Content Security Policy", "/x")) == [], log.errors
    finally:
        page.close()
        server.stop()


def save_screenshot(page, path: Path) -> None:
    """The job page as docs show it. A viewport as tall as the page, not full_page: Chromium leaves
    out-of-process frames (the sandboxed report) blank in full-page captures."""
    height = page.locator("main").bounding_box()["height"] + 80
    page.set_viewport_size({"width": 1280, "height": int(height)})
    page.wait_for_timeout(500)
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path))
    page.set_viewport_size({"width": 1280, "height": 900})


def test_dashboard_asks_for_a_key_on_401_and_cancels(browser, tiny_llama_dir, tmp_path):
    """With keys on, the page shows the key form on the API's 401, and works once a project key is saved;
    a wrong key brings the form back. Then a long job started from the form is cancelled from its page."""
    from serve_helpers import chat_rows, create_key, start_server

    server = start_server(tmp_path, no_auth=False)
    page = browser.new_page()
    log = PageLog(page)
    try:
        key = create_key(server.data_dir, "dash-team")
        page.goto(server.url + "/")
        page.wait_for_selector("#key-panel:not([hidden])")
        assert "API key" in page.text_content("#flash")
        page.fill("#key-input", "sk-wrong")
        page.click("#key-form button[type=submit]")
        page.wait_for_selector("#key-panel:not([hidden])")
        page.fill("#key-input", key)
        page.click("#key-form button[type=submit]")
        page.wait_for_selector("#jobs >> text=No jobs yet")
        assert page.is_hidden("#key-panel") and page.is_hidden("#flash")
        assert page.evaluate("localStorage.getItem('honing.apiKey')") == key
        assert all("401" in e for e in log.errors), log.errors  # only the refused requests

        train = tmp_path / "train.jsonl"
        train.write_text(chat_rows(16))
        page.click("nav >> text=New job")
        page.wait_for_selector("#model-list option", state="attached")
        page.fill("#model", str(tiny_llama_dir))
        page.set_input_files("#training-file", str(train))
        page.fill("#honing-config", json.dumps({"max_steps": 100_000}))
        page.click("#start-job")
        page.wait_for_selector(".headline [data-status=running]", timeout=120_000)
        page.click("#cancel-job")
        page.wait_for_selector(".headline [data-status=cancelled]", timeout=60_000)
        assert page.locator("#cancel-job").count() == 0
    finally:
        page.close()
        server.stop()


@pytest.mark.skipif(not os.environ.get("HONING_DASHBOARD_SCREENSHOT"),
                    reason="makes docs/dashboard.png: set HONING_DASHBOARD_SCREENSHOT=docs/dashboard.png")
def test_dashboard_screenshot(browser, tmp_path):
    """The embedded model, a few dozen LoRA steps on the docstring example through the form, evaluated on
    40 held-out examples; the job page when it ends is the documentation's screenshot."""
    from serve_helpers import start_server

    steps = int(os.environ.get("HONING_DASHBOARD_SCREENSHOT_STEPS", "30"))
    example = REPO / "examples" / "docstring_module"
    valid = tmp_path / "eval.jsonl"
    valid.write_text("".join((example / "eval.jsonl").read_text().splitlines(keepends=True)[:40]))
    server = start_server(tmp_path)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.goto(server.url + "/")
        job_id = start_job_through_form(page, model="smollm2-135m-instruct", train=example / "train.jsonl",
                                        valid=valid, epochs=1, suffix="docstrings",
                                        honing_config={"max_steps": steps, "eval_max_examples": 40},
                                        timeout_s=3600)
        assert page.text_content(".headline [data-status]") == "succeeded", server.log()[-3000:]
        page.wait_for_selector("#report-frame", timeout=120_000)
        save_screenshot(page, Path(os.environ["HONING_DASHBOARD_SCREENSHOT"]))
        print(f"saved {os.environ['HONING_DASHBOARD_SCREENSHOT']} ({job_id})")
    finally:
        page.close()
        server.stop()
