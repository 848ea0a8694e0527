"""The service's state: SQLAlchemy 2 tables, the engine, and schema migrations (Alembic).

SQLite in the data dir (WAL, so the API reads while the worker writes) or PostgreSQL by URL
(``postgresql+psycopg://``): the same tables, created and upgraded only by the versioned migrations in
``honing/serve/migrations`` (never ``create_all``), so an old database is upgraded in place.

Every row that a client can name belongs to a project; every lookup filters by it (see ``api.py``).
Uploaded bytes and run directories live under the data dir; rows hold their paths.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def now() -> int:
    return int(time.time())


class Base(DeclarativeBase):
    pass


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project: Mapped[str] = mapped_column(String(100), index=True)
    # sha256 of the whole key: keys carry 192 random bits, so a fast hash is enough and lookups are exact.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(20))  # shown in listings; never the secret part
    created_at: Mapped[int] = mapped_column(BigInteger)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class File(Base):
    __tablename__ = "files"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project: Mapped[str] = mapped_column(String(100), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(40))
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[int] = mapped_column(BigInteger, index=True)
    validation: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # `hone data validate` as JSON


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project: Mapped[str] = mapped_column(String(100), index=True)
    model: Mapped[str] = mapped_column(Text)
    training_file: Mapped[str] = mapped_column(String(40))
    validation_file: Mapped[str | None] = mapped_column(String(40), nullable=True)
    status: Mapped[str] = mapped_column(String(20), index=True)
    method: Mapped[dict] = mapped_column(JSON)  # {"type": "supervised", "supervised": {"hyperparameters": {...}}}
    config: Mapped[dict] = mapped_column(JSON)  # the job's training keys (the worker adds paths: RUN/config.yaml)
    resolved: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # hyperparameters as resolved by the loop
    suffix: Mapped[str | None] = mapped_column(String(64), nullable=True)
    seed: Mapped[int] = mapped_column(Integer)
    job_metadata: Mapped[dict | None] = mapped_column("metadata", JSON, nullable=True)
    fine_tuned_model: Mapped[str | None] = mapped_column(Text, nullable=True, index=True)
    model_deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    total_steps: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    result_files: Mapped[list] = mapped_column(JSON, default=list)
    run_dir: Mapped[str] = mapped_column(Text)
    created_at: Mapped[int] = mapped_column(BigInteger, index=True)
    enqueued_at: Mapped[float] = mapped_column(Float, default=0.0)  # FIFO order within the same second
    finished_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    estimated_finish: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # The queue: who runs it, since when it last said so, what it was asked to do, how often it started.
    worker_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    heartbeat_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    control: Mapped[str | None] = mapped_column(String(20), nullable=True)  # cancel | pause
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    host: Mapped[str | None] = mapped_column(String(255), nullable=True)


class JobEvent(Base):
    __tablename__ = "job_events"
    __table_args__ = (UniqueConstraint("job_id", "key", name="uq_job_events_job_key"),)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)  # insertion order
    id: Mapped[str] = mapped_column(String(40), unique=True)
    job_id: Mapped[str] = mapped_column(String(40), ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    project: Mapped[str] = mapped_column(String(100))
    # What makes an event unique within its job (e.g. "metrics:train:12", "log:2:40"): re-ingesting the
    # same source after a restart inserts nothing twice.
    key: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[int] = mapped_column(BigInteger)
    level: Mapped[str] = mapped_column(String(10))
    type: Mapped[str] = mapped_column(String(10))  # message | metrics
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict | None] = mapped_column(JSON, nullable=True)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "step", name="uq_checkpoints_job_step"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(40), ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    project: Mapped[str] = mapped_column(String(100))
    step: Mapped[int] = mapped_column(Integer)
    model_name: Mapped[str] = mapped_column(Text, index=True)  # fine_tuned_model_checkpoint
    weights: Mapped[str] = mapped_column(Text)  # a copy of the step's trainable tensors (survives pruning)
    metrics: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[int] = mapped_column(BigInteger)


class IdempotentRequest(Base):
    __tablename__ = "idempotent_requests"
    __table_args__ = (UniqueConstraint("project", "key", name="uq_idempotency_project_key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project: Mapped[str] = mapped_column(String(100))
    key: Mapped[str] = mapped_column(String(255))
    path: Mapped[str] = mapped_column(String(255))
    object_id: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[int] = mapped_column(BigInteger)


class StoredCompletion(Base):
    """A chat completion kept with ``store: true`` (OpenAI's stored completions), and Honing's feedback on it."""

    __tablename__ = "stored_completions"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # the completion's own id (chatcmpl-...)
    project: Mapped[str] = mapped_column(String(100), index=True)
    model: Mapped[str] = mapped_column(Text)
    created_at: Mapped[int] = mapped_column(BigInteger)
    created_ts: Mapped[float] = mapped_column(Float, index=True)  # list order within one second
    request: Mapped[dict] = mapped_column(JSON)  # {"messages": [...], and the sampling parameters sent}
    response: Mapped[dict] = mapped_column(JSON)  # the chat.completion object as answered
    completion_metadata: Mapped[dict | None] = mapped_column("metadata", JSON, nullable=True)
    rating: Mapped[str | None] = mapped_column(String(10), nullable=True)  # up | down
    correction: Mapped[str | None] = mapped_column(Text, nullable=True)  # the answer it should have given
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    feedback_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class ProjectSettings(Base):
    """Per-project settings; a project without a row has the defaults (stored completions kept forever)."""

    __tablename__ = "project_settings"
    project: Mapped[str] = mapped_column(String(100), primary_key=True)
    store_retention_days: Mapped[int | None] = mapped_column(Integer, nullable=True)
    updated_at: Mapped[int] = mapped_column(BigInteger)


class RetrainPolicy(Base):
    """A production model kept up to date by itself (``honing.serve.retraining``): when to look at its traffic,
    when that calls for retraining, the gate a retrained model must pass, and where the loop stands."""

    __tablename__ = "retrain_policies"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project: Mapped[str] = mapped_column(String(100), index=True)
    model: Mapped[str] = mapped_column(Text)  # the production model now (a fine_tuned_model)
    production_job: Mapped[str] = mapped_column(String(40))  # the job that made it
    lineage: Mapped[list] = mapped_column(JSON, default=list)  # every model it has been (their feedback counts)
    every_n_completions: Mapped[int | None] = mapped_column(Integer, nullable=True)
    interval_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)
    min_feedback: Mapped[int] = mapped_column(Integer)
    drift: Mapped[bool] = mapped_column(Boolean, default=True)
    gate: Mapped[dict] = mapped_column(JSON)  # the release gate's settings (production is set by the loop)
    honing_config: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # training keys for the retrain
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    # Where the loop stands: the stored completions and feedback already looked at, the retrain job in flight.
    cycles: Mapped[int] = mapped_column(Integer, default=0)
    cursor_ts: Mapped[float] = mapped_column(Float, default=0.0)  # newest stored completion checked
    feedback_cursor: Mapped[int] = mapped_column(BigInteger, default=0)  # newest feedback_at used
    checked_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    current_job: Mapped[str | None] = mapped_column(String(40), nullable=True)
    last_cycle: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    # A check in progress: which worker, until when (a killed worker's check is taken over after that).
    lease_worker: Mapped[str | None] = mapped_column(String(100), nullable=True)
    lease_until: Mapped[float | None] = mapped_column(Float, nullable=True)


def insert_ignore(session, model, rows: list[dict]) -> None:
    """INSERT rows, skipping those that collide with a unique key (idempotent ingestion)."""
    if not rows:
        return
    name = session.get_bind().dialect.name
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    session.execute(insert(model).values(rows).on_conflict_do_nothing())


def add_event(session, job: Job, key: str, message: str, *, level: str = "info", type: str = "message",
              data: dict | None = None) -> None:
    """One event of ``job`` (what its page and ``GET .../events`` show); ``key`` unique within the job, so
    recording the same thing twice (a retried step, a re-read file) inserts it once."""
    insert_ignore(session, JobEvent, [{"id": new_id("ftevent"), "job_id": job.id, "project": job.project,
                                       "key": key, "created_at": now(), "level": level, "type": type,
                                       "message": message, "data": data}])


def default_db_url(data_dir: str | Path) -> str:
    return f"sqlite:///{Path(data_dir).resolve() / 'honing.db'}"


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            # WAL: readers never wait for the worker's writes; synchronous=NORMAL is durable in WAL mode
            # across process crashes (kill -9), which is the failure the service must survive.
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def upgrade(url: str) -> None:
    """Bring the database to the newest schema (Alembic ``upgrade head``)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    command.upgrade(cfg, "head")


def sessions(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False)
