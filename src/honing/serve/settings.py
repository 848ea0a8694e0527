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
    # Baselines of the end-of-training evaluation of a job with a validation_file (the report and the gate).
    eval_baselines: str = "zero-shot,few-shot,rag"

    def __post_init__(self):
        self.data_dir = Path(self.data_dir).resolve()
        if not self.db_url:
            self.db_url = default_db_url(self.data_dir)

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
