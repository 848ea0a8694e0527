"""How one `hone serve` (or `hone worker`) process is configured."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from honing.serve.db import default_db_url


@dataclass
class Settings:
    data_dir: Path = Path("hone-data")
    db_url: str | None = None  # default: SQLite at DATA_DIR/honing.db
    no_auth: bool = False  # every request acts for project `default_project` (localhost only)
    default_project: str = "default"
    embedded_worker: bool = True  # run queued jobs in this process (the SQLite setup)
    host: str = "127.0.0.1"
    adapter_cache: int = 4  # fine-tuned adapters kept loaded per base model (least recently used leaves)
    # The chat engine (honing.serve.engines): auto = llama.cpp where installed and the model exports to GGUF.
    engine: str = "auto"
    engine_quant: str = "f16"  # base models' GGUF precision for llama.cpp (f32 | f16 | q8_0)
    engine_ctx: int = 8192  # llama.cpp's KV cache, in tokens, shared by the sequences decoded together
    engine_slots: int = 16  # sequences llama.cpp decodes together (more wait for a free one)
    engine_threads: int | None = None  # llama.cpp's threads (default: the CPUs this process may use)
    poll_interval: float = 0.5  # seconds between the worker's looks at the queue and at a running job
    heartbeat_interval: float = 2.0
    stale_after: float = 30.0  # a running job whose worker was silent this long is taken over
    job_set: tuple[str, ...] = field(default_factory=tuple)  # `--set key=value` added to every job's training
    # Base models beyond the catalog that clients may name: NAME -> (path on the server, projects or None = all).
    base_models: dict[str, tuple[str, tuple[str, ...] | None]] = field(default_factory=dict)
    allow_model_paths: bool = False  # any model directory or .gguf on the server by its path (trusted setups)
    # Baselines of the end-of-training evaluation of a job with a validation_file (the report and the gate).
    eval_baselines: str = "zero-shot,few-shot,rag"

    def __post_init__(self):
        self.data_dir = Path(self.data_dir).resolve()
        if not self.db_url:
            self.db_url = default_db_url(self.data_dir)

    def base_model_ref(self, project: str, model: str) -> str | None:
        """What a client's base ``model`` loads for ``project``: the operator's model of that name (when offered
        to the project), a catalog name as is, a path on the server only with ``allow_model_paths``; None for
        anything else, whatever exists on disk (the caller answers every such name the same way)."""
        offer = self.base_models.get(model)
        if offer is not None:
            path, projects = offer
            return path if projects is None or project in projects else None
        from honing.models.catalog import EMBEDDED

        if model in EMBEDDED:
            return model
        if self.allow_model_paths:
            p = Path(model).expanduser()
            if (p.is_dir() and (p / "config.json").is_file()) or (p.suffix.lower() == ".gguf" and p.is_file()):
                return model
        return None

    def offered_base_models(self, project: str) -> list[str]:
        """The operator's model names offered to ``project``."""
        return [n for n, (_, projects) in self.base_models.items() if projects is None or project in projects]

    @property
    def is_sqlite(self) -> bool:
        return self.db_url.startswith("sqlite")

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"

    @property
    def engine_cache_dir(self) -> Path:
        return self.data_dir / "engine-cache"

    @property
    def checkpoints_dir(self) -> Path:
        return self.data_dir / "checkpoints"


NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$"


def parse_base_models(items: list[str] | tuple[str, ...]) -> dict[str, tuple[str, tuple[str, ...] | None]]:
    """``NAME=PATH`` (every project) or ``NAME=PATH@PROJECT[,PROJECT...]`` items of ``hone serve --models``,
    checked: a name is not a path, the path is a model directory (config.json) or a .gguf file."""
    import re

    from honing.errors import ConfigError

    out: dict[str, tuple[str, tuple[str, ...] | None]] = {}
    for item in items:
        name, sep, rest = item.partition("=")
        name = name.strip()
        if not sep or not rest.strip():
            raise ConfigError(f"--models {item!r}: expected NAME=PATH or NAME=PATH@PROJECT,...")
        if not re.match(NAME_RE, name):
            raise ConfigError(f"--models {item!r}: the name '{name}' must be 1-100 letters, digits, '_', '.', ':' "
                              "or '-' (a name, not a path: clients never see the path)")
        path, at, projects = rest.rpartition("@") if "@" in rest else (rest, "", "")
        p = Path(path.strip()).expanduser().resolve()
        if not ((p.is_dir() and (p / "config.json").is_file()) or (p.suffix.lower() == ".gguf" and p.is_file())):
            raise ConfigError(f"--models {name}: {p} is not a model directory (with config.json) or a .gguf file")
        names = tuple(x.strip() for x in projects.split(",") if x.strip()) if at else None
        if at and not names:
            raise ConfigError(f"--models {item!r}: no project after '@'")
        out[name] = (str(p), names)
    return out
