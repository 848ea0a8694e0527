"""`create_app(settings)`: the FastAPI application of `hone serve`.

State in the database (migrated to the newest schema at start), uploads and runs under the data dir, an
embedded worker thread (unless the settings turn it off, as for PostgreSQL with `hone worker`s
elsewhere), and the chat engines (:class:`~honing.serve.engines.Engines`: llama.cpp or transformers).
"""

from __future__ import annotations

import contextlib
import logging

from fastapi import FastAPI

from honing.serve import api, chat, errors, graders, retraining, stored
from honing.serve.db import make_engine, sessions, upgrade
from honing.serve.engines import Engines
from honing.serve.schemas import Health
from honing.serve.settings import Settings
from honing.serve.worker import Worker

log = logging.getLogger("honing.serve")


def _document_errors_as_answered(app: FastAPI) -> None:
    """Request validation errors are answered 400 in OpenAI's shape (errors.py), never FastAPI's 422:
    say so in the OpenAPI document."""
    original = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            spec = original()
            for item in spec.get("paths", {}).values():
                for op in item.values():
                    if isinstance(op, dict):
                        op.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                spec.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi


def create_app(settings: Settings) -> FastAPI:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.db_url)
    engine = make_engine(settings.db_url)
    Session = sessions(engine)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        worker = thread = None
        if settings.embedded_worker:
            worker = Worker(settings, Session)
            thread = worker.start_thread()
        app.state.worker = worker
        sweeper = stored.Sweeper(Session).start()  # stored completions past their project's retention
        try:
            yield
        finally:
            sweeper.stop()
            if worker is not None:
                # A graceful stop: the running job's process is stopped and the job re-queued (it resumes
                # from its last checkpoint at the next start).
                worker.stop_event.set()
                thread.join(timeout=30)
            app.state.pool.close()  # the llama.cpp engine's process
            engine.dispose()

    from honing import __version__

    app = FastAPI(title="Honing", version=__version__, lifespan=lifespan,
                  description="OpenAI-compatible fine-tuning and chat API (files, fine_tuning jobs, events, "
                              "checkpoints, models, chat completions). See docs/service.md.")
    app.state.settings = settings
    app.state.engine = engine
    app.state.Session = Session
    app.state.pool = Engines(settings.engine, settings.engine_cache_dir, settings.adapter_cache,
                             quant=settings.engine_quant, n_ctx=settings.engine_ctx, n_seq=settings.engine_slots,
                             threads=settings.engine_threads)
    errors.install(app)

    @app.get("/health", tags=["service"], response_model=Health)
    async def health() -> dict:
        # Answered by the event loop without touching models or the database: stays quick while a job
        # trains in its own process and chat requests run in the thread pool.
        return {"status": "ok"}

    app.include_router(api.router)
    app.include_router(chat.router)
    app.include_router(stored.router)
    app.include_router(graders.router)
    app.include_router(retraining.router)
    _document_errors_as_answered(app)
    try:
        from honing.serve.dashboard import mount

        mount(app)
    except ImportError:
        pass
    return app
