"""The run directory as one typed thing. Everything that reads a run (evaluation, export, the service's
worker and dashboard, compare/retrain) goes through :class:`RunDir` instead of parsing files itself.

    RUN/
      config.yaml       the configuration the service's worker hands to `hone train` (written once per job)
    run.json          the run record: config, base model, data fingerprints, status, results, lineage
      metrics.jsonl     one JSON object per optimizer step / eval (a line cut by kill -9 is skipped)
      events.jsonl      structured events (messages and metrics) for the CLI, the API and the dashboard
      PAUSE             present: the training process checkpoints after its current step and stops
      checkpoints/step-N/  complete when COMPLETE exists (honing.train.checkpoint)
      final/            the result: a PEFT adapter (adapter_config.json) or a full model (config.json)
      merged/           optional merged model
      eval/             optional evaluation report (report.md, report.html, eval.json)
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from honing.errors import ConfigError, ModelError
from honing.fileio import write_json_atomic

# The run directory's contract with the processes that share it (the loop, the service's worker, a user):
# a checkpoint directory is complete once COMPLETE exists in it (written last); a PAUSE file asks the
# running loop to checkpoint after its current step and stop.
COMPLETE = "COMPLETE"
PAUSE_FILE = "PAUSE"
# Every other name in a run directory (see the module docstring); nothing else spells them.
RUN_RECORD = "run.json"
METRICS = "metrics.jsonl"
EVENTS = "events.jsonl"
CONFIG_FILE = "config.yaml"
CHECKPOINTS = "checkpoints"
FINAL = "final"
MERGED = "merged"
EVAL = "eval"
REPORT_HTML = "report.html"
REFERENCE_LOGPS = "reference_logps.safetensors"  # DPO/KTO full fine-tuning: the starting model's log-probs


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [d for d in root.iterdir() if d.name.startswith("step-") and (d / COMPLETE).is_file()]
    return sorted(found, key=lambda d: int(d.name.split("-")[1]))


@dataclass(frozen=True)
class CheckpointInfo:
    step: int
    path: Path


class RunDir:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # -- what is there ------------------------------------------------------------------------
    @staticmethod
    def is_run(path: str | os.PathLike) -> bool:
        p = Path(path)
        return p.is_dir() and (p / RUN_RECORD).is_file()

    @property
    def record_path(self) -> Path:
        return self.path / RUN_RECORD

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    @property
    def final_dir(self) -> Path:
        return self.path / FINAL

    @property
    def merged_dir(self) -> Path:
        return self.path / MERGED

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def eval_dir(self) -> Path:
        return self.path / EVAL

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def report_html(self) -> Path:
        """The end-of-training evaluation's report (eval/report.html)."""
        return self.eval_dir / REPORT_HTML

    def has_adapter(self) -> bool:
        return (self.final_dir / "adapter_config.json").is_file()

    def has_full_model(self) -> bool:
        return (self.final_dir / "config.json").is_file() and not self.has_adapter()

    def is_finished(self) -> bool:
        return self.record().get("status") in ("completed", "early_stopped") and (
            self.has_adapter() or self.has_full_model()
        )

    # -- reading ----------------------------------------------------------------------------
    def record(self) -> dict:
        """run.json, parsed. A missing or corrupt record is a ModelError naming the file."""
        if not self.record_path.is_file():
            raise ModelError(f"{self.path} is not a Honing run directory (no {RUN_RECORD})")
        try:
            return json.loads(self.record_path.read_text())
        except json.JSONDecodeError as e:
            raise ModelError(f"{self.record_path} is not valid JSON ({e})") from e

    def base_model_reference(self) -> str:
        try:
            return self.record()["base_model"]["reference"]
        except KeyError as e:
            raise ModelError(f"{self.record_path} does not name its base model (base_model.reference)") from e

    def metrics(self) -> list[dict]:
        """Rows of metrics.jsonl; a line cut by an interrupted write is skipped."""
        rows = []
        if self.metrics_path.is_file():
            for line in self.metrics_path.read_text().splitlines():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return rows

    def eval_report(self) -> dict | None:
        """eval/eval.json (the last `hone eval` of this run), parsed; None when there is none."""
        path = self.eval_dir / "eval.json"
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ModelError(f"{path} is not valid JSON ({e})") from e

    @property
    def events_path(self) -> Path:
        return self.path / EVENTS

    def events(self, after_seq: int = 0) -> list[dict]:
        """Events of events.jsonl with ``seq`` > ``after_seq``, oldest first (honing.train.reporting.EventLog:
        seq, created_at, type message|metrics, level, message, data). A cut last line is skipped."""
        out = []
        if self.events_path.is_file():
            for line in self.events_path.read_text().splitlines():
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(event, dict) and event.get("seq", 0) > after_seq:
                    out.append(event)
        return out

    def request_pause(self) -> None:
        """Ask a running training process to save a checkpoint after its current step and stop (status
        "paused"); resuming the run continues it."""
        (self.path / PAUSE_FILE).touch()

    def checkpoints(self) -> list[CheckpointInfo]:
        """Complete checkpoints, oldest first."""
        return [CheckpointInfo(int(p.name.split("-")[1]), p) for p in complete_checkpoints(self.path)]

    # -- writing ----------------------------------------------------------------------------
    def write_record(self, record: dict) -> None:
        write_json_atomic(self.record_path, record)

    def update_record(self, **fields) -> dict:
        record = self.record()
        record.update(fields)
        self.write_record(record)
        return record


@contextmanager
def sole_writer(run_dir: str | os.PathLike):
    """Hold an exclusive lock on ``run_dir`` (created if missing) while a training process writes it.

    Two `hone train` processes started with the same ``out`` would otherwise both pass the "already holds a
    run" check (``run.json`` is written later) and interleave their metrics and checkpoints, and a run could
    restore the other's best checkpoint. The lock is an ``flock`` on the directory itself (no file added);
    the kernel releases it when the process dies, so a killed run never leaves a stale lock. Under torchrun
    only rank 0 takes it (every rank writes the same directory). Where ``fcntl`` is missing: no lock."""
    path = Path(run_dir)
    if int(os.environ.get("RANK", "0") or 0) != 0:
        yield
        return
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        _lock_or_refuse(fcntl, fd, path)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


# A killed writer's lock goes only when the kernel closes its files, after its memory is unmapped: a run
# resumed the moment the old one was killed (the FSDP kill -9 test: torchrun's workers exit after the
# launcher is reaped) may find it still held for a moment. A live writer holds it for the whole run.
LOCK_WAIT_S = 15.0


def _lock_or_refuse(fcntl, fd: int, path: Path) -> None:
    import time

    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise ConfigError(f"out: {path} is being written by another training run right now; wait for it "
                                  "to end, or choose another out directory") from None
            time.sleep(0.1)
