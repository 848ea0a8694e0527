"""`hone serve`: the OpenAI-compatible fine-tuning + chat API; `hone serve keys create`; `hone worker`.
Parsing and printing only; the service is honing.serve."""

from __future__ import annotations

import ipaddress
import socket

import typer

serve_app = typer.Typer(help="Serve the OpenAI-compatible fine-tuning and chat API (docs/service.md).",
                        invoke_without_command=True)
keys_app = typer.Typer(help="API keys: each scoped to one project, stored hashed.", no_args_is_help=True)
serve_app.add_typer(keys_app, name="keys")
projects_app = typer.Typer(help="A project's data as a whole.", no_args_is_help=True)
serve_app.add_typer(projects_app, name="projects")

DB_HELP = "Database URL (default: SQLite at DATA_DIR/honing.db); PostgreSQL: postgresql+psycopg://USER@HOST/DB."
DATA_HELP = "Uploaded files and run directories live here."


def _is_local(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(a[4][0]).is_loopback for a in socket.getaddrinfo(host, None))
        except OSError:
            return False


@serve_app.callback()
def serve_cmd(
    ctx: typer.Context,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port to bind."),
    db: str = typer.Option(None, "--db", help=DB_HELP),
    data_dir: str = typer.Option("hone-data", "--data-dir", help=DATA_HELP),
    workers: int = typer.Option(1, "--workers", min=0, help="Job workers in this process (on CPU: 1; 0: only "
                                "`hone worker` processes run jobs, e.g. on GPU machines)."),
    no_auth: bool = typer.Option(False, "--no-auth", help="No API key needed (every request acts for project "
                                 "'default'); only allowed when bound to localhost."),
    adapter_cache: int = typer.Option(4, "--adapter-cache", min=1, help="Fine-tuned adapters kept in memory "
                                      "per base model."),
    stale_after: float = typer.Option(30.0, "--stale-after", min=1.0, help="Seconds without a heartbeat after "
                                      "which another worker takes a running job over."),
    job_set: list[str] = typer.Option(None, "--job-set", help="A training key=value added to every job "  # noqa: B008
                                      "(repeatable), e.g. --job-set save_every=10."),
    eval_baselines: str = typer.Option("zero-shot,few-shot,rag", "--eval-baselines", help="Baselines of the "
                                       "evaluation that ends a job with a validation_file (report and gate)."),
    engine: str = typer.Option("auto", "--engine", help="Chat engine: auto (llama.cpp where installed and the "
                               "model exports to GGUF, else transformers), llama.cpp or transformers."),
    engine_quant: str = typer.Option("f16", "--engine-quant", help="llama.cpp: base models' GGUF precision "
                                     "(f32, f16, q8_0)."),
    engine_ctx: int = typer.Option(8192, "--engine-ctx", min=256, help="llama.cpp: KV cache tokens shared by "
                                   "the sequences decoded together (a prompt + max_tokens must fit)."),
    engine_slots: int = typer.Option(16, "--engine-slots", min=1, max=256, help="llama.cpp: sequences decoded "
                                     "together (continuous batching); more requests wait for a free one."),
    engine_threads: int = typer.Option(None, "--engine-threads", min=1, help="llama.cpp: threads (default: "
                                       "the CPUs this process may use)."),
    models: list[str] = typer.Option(None, "--models", help="A base model clients may name beyond the catalog: "  # noqa: B008
                                     "NAME=PATH (every project) or NAME=PATH@PROJECT,... (repeatable). Clients "
                                     "see the name, never the path."),
    allow_model_paths: bool = typer.Option(False, "--allow-model-paths", help="Also accept any model directory "
                                           "or .gguf file on this server by its path (a trusted, single-user "
                                           "setup: it lets every key holder load what the server can read)."),
    log_level: str = typer.Option("warning", "--log-level", help="uvicorn log level."),
) -> None:
    """Serve the API (and the dashboard at /) until interrupted."""
    if ctx.invoked_subcommand is not None:
        return
    import uvicorn
    from rich.console import Console

    from honing.errors import ConfigError
    from honing.serve.app import create_app
    from honing.serve.settings import Settings, parse_base_models

    console = Console(stderr=True, highlight=False)
    if no_auth and not _is_local(host):
        raise ConfigError(f"no_auth: refused while bound to {host}; it is only allowed on localhost "
                          "(create keys with `hone serve keys create --project NAME`)")
    if workers > 1:
        raise ConfigError(f"workers: {workers} embedded workers; this version runs at most 1 per process "
                          "(start more `hone worker --db URL` processes against PostgreSQL)")
    settings = Settings(data_dir=data_dir, db_url=db, no_auth=no_auth, embedded_worker=workers > 0, host=host,
                        adapter_cache=adapter_cache, stale_after=stale_after, job_set=tuple(job_set or ()),
                        eval_baselines=eval_baselines, engine=engine, engine_quant=engine_quant,
                        engine_ctx=engine_ctx, engine_slots=engine_slots, engine_threads=engine_threads,
                        base_models=parse_base_models(models or ()), allow_model_paths=allow_model_paths)
    from honing.export.gguf_writer import QUANTS

    if engine_quant not in QUANTS:
        raise ConfigError(f"engine_quant: '{engine_quant}' is not one of {', '.join(QUANTS)}")
    if settings.is_sqlite and workers == 0:
        console.print("note: SQLite with --workers 0: jobs wait until a worker runs on this database")
    app = create_app(settings)
    if no_auth:
        console.print(f"[bold yellow]--no-auth[/]: no API key needed; every request acts for project "
                      f"'{settings.default_project}' (bound to {host} only)")
    console.print(f"hone serve: http://{host}:{port}/v1 (dashboard http://{host}:{port}/); database "
                  f"{_redact(settings.db_url)}; data in {settings.data_dir}")
    console.print(f"chat engine: {app.state.pool.summary()}")
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=log_level in ("info", "debug"))


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@keys_app.command("create")
def keys_create(
    project: str = typer.Option(..., "--project", help="The project this key acts for."),
    db: str = typer.Option(None, "--db", help=DB_HELP),
    data_dir: str = typer.Option("hone-data", "--data-dir", help=DATA_HELP),
) -> None:
    """Create an API key for PROJECT and print it (only its hash is stored: keep it now)."""
    from honing.serve.auth import create_key
    from honing.serve.db import make_engine, sessions, upgrade
    from honing.serve.settings import Settings

    settings = Settings(data_dir=data_dir, db_url=db)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.db_url)
    engine = make_engine(settings.db_url)
    print(create_key(sessions(engine), project))
    engine.dispose()


@projects_app.command("delete")
def projects_delete(
    project: str = typer.Argument(..., help="The project whose data goes."),
    yes: bool = typer.Option(False, "--yes", help="Really delete (without it, nothing is done)."),
    db: str = typer.Option(None, "--db", help=DB_HELP),
    data_dir: str = typer.Option("hone-data", "--data-dir", help=DATA_HELP),
) -> None:
    """Delete PROJECT's data: keys, files, jobs, checkpoints, stored chat completions and their feedback."""
    from honing.errors import ConfigError
    from honing.serve.db import make_engine, sessions, upgrade
    from honing.serve.projects import delete_project
    from honing.serve.settings import Settings

    if not yes:
        raise ConfigError(f"projects delete {project}: pass --yes to delete all of its data")
    settings = Settings(data_dir=data_dir, db_url=db)
    upgrade(settings.db_url)
    engine = make_engine(settings.db_url)
    try:
        counts = delete_project(settings, sessions(engine), project)
    finally:
        engine.dispose()
    print(f"deleted project {project}: " + ", ".join(f"{n} {k}" for k, n in counts.items()))


def worker_cmd(
    db: str = typer.Option(..., "--db", help="The service's database (PostgreSQL for workers on other machines)."),
    data_dir: str = typer.Option("hone-data", "--data-dir", help="The service's data dir (shared storage: the "
                                 "same path the server uses)."),
    stale_after: float = typer.Option(30.0, "--stale-after", min=1.0, help="Seconds without a heartbeat after "
                                      "which a running job is taken over."),
    job_set: list[str] = typer.Option(None, "--job-set", help="A training key=value added to every job."),  # noqa: B008
    eval_baselines: str = typer.Option("zero-shot,few-shot,rag", "--eval-baselines", help="Baselines of the "
                                       "evaluation that ends a job with a validation_file (report and gate)."),
) -> None:
    """Run queued fine-tuning jobs from the service's database (a queue shared with other workers)."""
    import signal

    from rich.console import Console

    from honing.serve.db import make_engine, sessions, upgrade
    from honing.serve.settings import Settings
    from honing.serve.worker import Worker

    settings = Settings(data_dir=data_dir, db_url=db, stale_after=stale_after, job_set=tuple(job_set or ()),
                        eval_baselines=eval_baselines)
    upgrade(settings.db_url)
    worker = Worker(settings, sessions(make_engine(settings.db_url)))
    signal.signal(signal.SIGTERM, lambda *_: worker.stop_event.set())
    Console(stderr=True, highlight=False).print(f"hone worker {worker.id}: taking jobs from "
                                                f"{_redact(settings.db_url)}")
    try:
        worker.run_forever()
    except KeyboardInterrupt:
        worker.stop_event.set()


def register(app: typer.Typer) -> None:
    app.add_typer(serve_app, name="serve")
    app.command("worker")(worker_cmd)
