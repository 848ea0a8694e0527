"""The job worker: the database is the queue.

A worker validates new jobs' files, claims the oldest queued job with a row lock
(``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite has one embedded worker), and runs it as
ONE ``hone train`` subprocess in its own process group (the same training code as the CLI; the child
is killed if the worker dies, so two processes never write one run directory). While it runs, the
worker beats a heartbeat into the job row and ingests what the run writes (metrics rows, log lines,
checkpoints) as events and checkpoint rows, each keyed so that ingesting twice inserts nothing twice.

A job whose worker stopped beating (``stale_after`` seconds; at once on SQLite, where the only worker is
this process) is claimed again and continues with ``hone train --resume`` from its last complete
checkpoint: bitwise the run it would have been.

    validating_files -> queued -> running -> succeeded | failed | cancelled
                                   running -> (pause) paused -> (resume) queued -> running ...
"""

from __future__ import annotations

import csv
import io
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from sqlalchemy import and_, case, or_, select, update

from honing.config import TrainConfig, apply_overrides, save_recipe, validate_config
from honing.data.rft import check_rft
from honing.errors import HoningError
from honing.graders import load_grader
from honing.graders.sandbox import UNSAFE_ENV
from honing.rundir import PAUSE_FILE, RunDir
from honing.serve import jobs as J
from honing.serve.db import Checkpoint, File, Job, add_event, insert_ignore, new_id, now
from honing.serve.redact import Redactor
from honing.serve.retraining import PolicyRunner
from honing.serve.settings import Settings

log = logging.getLogger("honing.serve.worker")

# Problems listed in a failed job's error message (all of them are events).
MAX_PROBLEMS_IN_ERROR = 20


def _libc():
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:  # not glibc Linux: no parent-death signal (the pid-based cleanup still applies)
        return None


_LIBC = _libc()  # loaded before any fork: the child only makes one system call


def _set_parent_death_signal() -> None:
    # Runs in the child before exec: if the worker thread dies (kill -9 of the server), the kernel kills
    # the training process too, so a resumed attempt never shares the run directory with a stray one.
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Worker:
    def __init__(self, settings: Settings, Session, worker_id: str | None = None):
        self.settings = settings
        self.Session = Session
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{new_id('w')[-6:]}"
        self.host = socket.gethostname()
        self.stop_event = threading.Event()
        # SQLite serves one worker per database: whatever another process was running is orphaned.
        self.takeover_all = settings.is_sqlite
        self.policies = PolicyRunner(settings, Session, self.id, takeover_all=self.takeover_all)
        self.redact = Redactor(settings)  # what reaches events and errors names no server path

    # -- the loop -----------------------------------------------------------------------------
    def run_forever(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.validate_pending()
                self.policies.poll()  # retraining policies: settle ended retrains, check the ones due
                job = self.claim()
                if job is not None:
                    self.run(job)
                    continue
            except Exception:  # a database hiccup must not end the worker (logged)
                log.exception("worker %s: error in the queue loop", self.id)
            self.stop_event.wait(self.settings.poll_interval)

    def start_thread(self) -> threading.Thread:
        t = threading.Thread(target=self.run_forever, name="honing-worker", daemon=True)
        t.start()
        return t

    # -- validating_files -> queued | failed --------------------------------------------------
    def validate_pending(self) -> None:
        with self.Session() as s:
            ids = s.scalars(select(Job.id).where(Job.status == "validating_files").order_by(Job.enqueued_at)
                            .limit(20)).all()
        for job_id in ids:
            self._validate(job_id)

    def _validate(self, job_id: str) -> None:
        with self.Session.begin() as s:
            job = s.scalar(select(Job).where(Job.id == job_id, Job.status == "validating_files")
                           .with_for_update(skip_locked=True))
            if job is None:
                return
            add_event(s, job, "status:validating", "Validating training file: " + job.training_file)
            for role, file_id in (("training", job.training_file), ("validation", job.validation_file)):
                if file_id is None:
                    continue
                f = s.get(File, file_id)
                report = f.validation if f is not None else None
                if f is None or report is None or not Path(f.path).is_file():
                    self._fail(s, job, f"invalid_{role}_file", f"The {role} file {file_id} is no longer "
                               "available.", f"{role}_file")
                    return
                problems = [p for p in _file_problems(job, f.path, report) if p.get("severity") == "error"
                            # a held-out set may be small: the 10-example minimum is for training data
                            and not (role == "validation" and p.get("category") == "too_few_examples")]
                if problems:
                    for i, p in enumerate(problems):
                        where = f"line {p['line']}" if p.get("line") else "file"
                        add_event(s, job, f"problem:{role}:{i}", f"{role} file {where}: {p['category']}: "
                                  f"{p['message']}", level="error", data={"file": file_id, **p})
                    listed = "; ".join(f"line {p['line']}: {p['category']}: {p['message']}" if p.get("line")
                                       else f"{p['category']}: {p['message']}"
                                       for p in problems[:MAX_PROBLEMS_IN_ERROR])
                    more = len(problems) - MAX_PROBLEMS_IN_ERROR
                    self._fail(s, job, f"invalid_{role}_file",
                               f"The {role} file {file_id} has {report.get('errors', len(problems))} error(s): "
                               f"{listed}{f' (and {more} more)' if more > 0 else ''}", f"{role}_file")
                    return
            job.status = "queued"
            add_event(s, job, "status:queued", "Files validated, moving job to queued state")

    def _fail(self, s, job: Job, code: str, message: str, param: str | None = None) -> None:
        message = self.redact.text(message)
        job.status = "failed"
        job.error = {"code": code, "message": message, "param": param}
        job.finished_at = now()
        job.worker_id = None
        add_event(s, job, f"status:failed:{job.attempts}", message, level="error")

    # -- claiming -----------------------------------------------------------------------------
    def claim(self) -> Job | None:
        stale = time.time() - self.settings.stale_after
        orphaned = Job.worker_id != self.id if self.takeover_all else Job.heartbeat_at < stale
        with self.Session.begin() as s:
            job = s.scalar(
                select(Job).where(or_(Job.status == "queued", and_(Job.status == "running", orphaned)))
                # interrupted jobs first (they hold a half-done run), then first come, first served
                .order_by(case((Job.status == "running", 0), else_=1), Job.enqueued_at, Job.id).limit(1)
                .with_for_update(skip_locked=True)
            )
            if job is None:
                return None
            resumed = job.status == "running"
            if resumed:
                self._kill_stray(job)
            if job.control == "cancel":
                job.status, job.finished_at, job.control = "cancelled", now(), None
                add_event(s, job, "status:cancelled", "Fine-tuning job cancelled")
                return None
            if job.control == "pause":
                job.status, job.control, job.worker_id = "paused", None, None
                add_event(s, job, f"status:paused:{job.attempts}", "Fine-tuning job paused")
                return None
            job.status, job.worker_id, job.heartbeat_at = "running", self.id, time.time()
            job.attempts = (job.attempts or 0) + 1
            job.host, job.pid = self.host, None
            if resumed:
                add_event(s, job, f"status:takeover:{job.attempts}", "The worker running this job stopped; "
                          "resuming from the last checkpoint", level="warn")
            add_event(s, job, f"status:running:{job.attempts}",
                      "Fine-tuning job started" if job.attempts == 1 else
                      f"Fine-tuning job resumed (attempt {job.attempts})")
        return job

    def _kill_stray(self, job: Job) -> None:
        """A previous attempt's training process on this machine (normally already killed with its worker)."""
        if job.pid and job.host == self.host:
            try:
                os.killpg(job.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    # -- running ------------------------------------------------------------------------------
    def train_config(self, job: Job) -> TrainConfig:
        """The job's whole training configuration, validated: its settings, the base model, its files' paths,
        the run directory and the operator's ``--set`` items (``hone worker --set``) on top."""
        with self.Session() as s:
            train = s.get(File, job.training_file)
            val = s.get(File, job.validation_file) if job.validation_file else None
        raw = {**job.config, "tensorboard": False, "model": J.base_of(job), "data": train.path, "out": job.run_dir}
        if val is not None:
            raw["eval_data"] = val.path
        return validate_config(apply_overrides(raw, self.settings.job_set), f"job {job.id}")

    def command(self, job: Job) -> list[str]:
        """``hone train RUN/config.yaml --resume``. The configuration is written into the run directory once,
        so every attempt of a job (a resume after a crash or a pause) trains with the same one, and no value
        goes through a command line where it would be parsed again."""
        path = RunDir(job.run_dir).config_path
        if not path.is_file():
            save_recipe(self.train_config(job), path)
        # Always --resume: a first attempt finds no run and starts fresh; a later one continues. No --quiet:
        # the output is a file, so the loop prints plain progress lines (step, loss, eval, rates, ETA) at a
        # steady cadence, and the attempt's log says what the job's metrics events say while it runs.
        args = [sys.executable, "-c", "from honing.cli import main; main()", "train", str(path), "--resume"]
        if job.validation_file is not None:
            args += ["--eval-baselines", self.settings.eval_baselines]
        else:
            args += ["--no-eval"]
        return args

    def run(self, job: Job) -> None:
        run_dir = Path(job.run_dir)
        logs = run_dir.parent / f"{run_dir.name}.logs"
        logs.mkdir(parents=True, exist_ok=True)
        (run_dir / PAUSE_FILE).unlink(missing_ok=True)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", "NO_COLOR": "1",
               "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1", "TOKENIZERS_PARALLELISM": "false"}
        env.pop(UNSAFE_ENV, None)  # a job's python graders run in the sandbox, whatever the server's shell says
        ingest = Ingestor(self, job)
        ingest.previous_logs(logs)
        log_path = logs / f"attempt-{job.attempts}.log"
        try:
            command = self.command(job)
        except HoningError as e:  # an operator's --set the job's settings do not validate with
            with self.Session.begin() as s:
                row = s.scalar(select(Job).where(Job.id == job.id, Job.worker_id == self.id).with_for_update())
                if row is not None:
                    self._fail(s, row, "invalid_configuration", str(e))
            return
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                    stdin=subprocess.DEVNULL, start_new_session=True,
                                    preexec_fn=_set_parent_death_signal)  # noqa: PLW1509 (one async-signal-safe syscall)
        self._update(job, pid=proc.pid)
        control_seen = None
        last_beat = 0.0
        while True:
            rc = proc.poll()
            ingest.step(log_path)
            if rc is not None:
                break
            if time.time() - last_beat >= self.settings.heartbeat_interval:
                last_beat = time.time()
                control = self._heartbeat(job, ingest)
                if control == "lost":
                    _kill_group(proc)
                    return
                if control and control != control_seen:
                    control_seen = control
                    self._control(proc, run_dir, control)
            if self.stop_event.is_set():  # a graceful shutdown of the server: stop, resume later
                _kill_group(proc)
                self._update(job, status="queued", worker_id=None, pid=None)
                with self.Session.begin() as s:
                    add_event(s, job, f"status:requeued:{job.attempts}", "The worker stopped; the job is queued "
                              "again and resumes from its last checkpoint", level="warn")
                return
            self.validate_pending()
            self.stop_event.wait(self.settings.poll_interval)
        ingest.step(log_path)
        self._finish(job, rc, ingest, log_path)

    def _update(self, job: Job, **fields) -> int:
        with self.Session.begin() as s:
            res = s.execute(update(Job).where(Job.id == job.id, Job.worker_id == self.id).values(**fields))
            return res.rowcount

    def _heartbeat(self, job: Job, ingest: Ingestor) -> str | None:
        """Beat; return the job's pending control (cancel | pause), or "lost" when another worker owns it."""
        fields = {"heartbeat_at": time.time(), **ingest.progress_fields()}
        with self.Session.begin() as s:
            res = s.execute(update(Job).where(Job.id == job.id, Job.worker_id == self.id,
                                              Job.status == "running").values(**fields))
            if res.rowcount == 0:
                return "lost"
            return s.scalar(select(Job.control).where(Job.id == job.id))

    def _control(self, proc: subprocess.Popen, run_dir: Path, control: str) -> None:
        if control == "cancel":
            _kill_group(proc)
        elif control == "pause":
            # The loop saves a checkpoint after its current step and exits with run.json status "paused".
            RunDir(run_dir).request_pause()

    def _finish(self, job: Job, rc: int, ingest: Ingestor, log_path: Path) -> None:
        rd = RunDir(job.run_dir)
        with self.Session.begin() as s:
            row = s.scalar(select(Job).where(Job.id == job.id).with_for_update())
            if row is None or row.worker_id != self.id:
                return
            row.pid, row.worker_id = None, None
            for k, v in ingest.progress_fields().items():
                setattr(row, k, v)
            finished = rc == 0 and RunDir.is_run(rd.path) and rd.is_finished()
            if row.control == "cancel":
                row.status, row.finished_at, row.control = "cancelled", now(), None
                add_event(s, row, "status:cancelled", "Fine-tuning job cancelled")
            elif row.control == "pause" and not finished:
                row.status, row.control = "paused", None
                add_event(s, row, f"status:paused:{row.attempts}", "Fine-tuning job paused")
            elif finished:
                row.control = None
                self._succeed(s, row, rd)
            else:
                message = _failure_message(rd, log_path, rc)
                self._fail(s, row, "training_failed", message)

    def _succeed(self, s, job: Job, rd: RunDir) -> None:
        record = rd.record()
        job.status, job.finished_at = "succeeded", now()
        job.result_files = [self._results_file(s, job, rd)]
        verdict = release_gate(job, rd)
        if verdict is None or verdict.passed:
            job.fine_tuned_model = J.fine_tuned_name(job)
            if verdict is not None:
                add_event(s, job, "status:gate", "Release gate passed", data=self.redact.data(verdict.to_dict()))
            add_event(s, job, "status:model", f"New fine-tuned model created: {job.fine_tuned_model}")
        else:
            reasons = self.redact.text("; ".join(verdict.reasons))
            add_event(s, job, "status:gate", f"Release gate failed, the model is not promoted: {reasons}. "
                      f"POST /v1/fine_tuning/jobs/{job.id}/promote with {{\"force\": true}} promotes it anyway",
                      level="error", data=self.redact.data(verdict.to_dict()))
        report = rd.report_html
        if report.is_file():
            add_event(s, job, "status:report", "Evaluation report attached (GET "
                      f"/v1/fine_tuning/jobs/{job.id}/report)", data={"report": str(report.name)})
        add_event(s, job, "status:succeeded", "The job has successfully completed",
                  data={"status": record.get("status"), "steps": record.get("steps_done")})

    def _results_file(self, s, job: Job, rd: RunDir) -> str:
        """OpenAI's result file: the metrics as CSV, a file of this project (purpose fine-tune-results)."""
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["step", "train_loss", "valid_loss", "learning_rate", "trained_tokens"])
        for r in rd.metrics():
            if r.get("step", 0) > 0:
                w.writerow([r["step"], r.get("train_loss"), r.get("eval_loss"), r.get("lr"), r.get("trained_tokens")])
        data = buf.getvalue().encode()
        from honing.serve.files import store_bytes

        return store_bytes(s, self.settings, job.project, f"{job.id}-results.csv", "fine-tune-results", data,
                           validate=False).id


class Ingestor:
    """Turns what a run writes into rows, idempotently: the loop's events.jsonl -> events (messages keyed by
    their ``seq``, metrics by step: a resumed run re-emits the steps it replays), metrics.jsonl rows ->
    metrics events too (same keys: whichever is read first wins, the other inserts nothing), error lines of
    the process output -> error events (key: attempt + line number), complete checkpoints -> checkpoint
    rows (key: step)."""

    def __init__(self, worker: Worker, job: Job):
        self.w, self.job = worker, job
        self.rd = RunDir(job.run_dir)
        self.log_offsets: dict[Path, tuple[int, int]] = {}  # path -> (byte offset, lines read)
        self.steps_seen: set[int] = set()
        self.last_seq = 0
        self.ckpts_seen: set[int] = set()
        self.total_steps: int | None = None
        self.resolved: dict | None = None
        self.trained_tokens: int | None = None
        self.started = time.time()
        self.first_step: tuple[int, float] | None = None
        self.last_step: tuple[int, float] | None = None

    def previous_logs(self, logs_dir: Path) -> None:
        for p in sorted(logs_dir.glob("attempt-*.log")):
            self.step(p, metrics=False)

    def step(self, log_path: Path, metrics: bool = True) -> None:
        with self.w.Session.begin() as s:
            self._log_lines(s, log_path)
            if metrics:
                self._record(s)
                self._events(s)
                self._metrics(s)
                self._checkpoints(s)

    def _log_lines(self, s, path: Path) -> None:
        if not path.is_file():
            return
        offset, n = self.log_offsets.get(path, (0, 0))
        with open(path, "rb") as f:
            f.seek(offset)
            chunk = f.read()
        end = chunk.rfind(b"\n")
        if end < 0:
            return
        attempt = path.stem.split("-")[-1]
        lines = chunk[: end + 1].decode("utf-8", "replace").splitlines()
        for line in lines:
            n += 1
            text = line.strip()
            # Progress is in events.jsonl; the output adds what the loop could not log (a failed start).
            if text.lower().startswith(("error", "traceback")):
                add_event(s, self.job, f"log:{attempt}:{n}", self.w.redact.text(text)[:2000], level="error")
        self.log_offsets[path] = (offset + end + 1, n)

    def _record(self, s) -> None:
        if self.resolved is not None or not RunDir.is_run(self.rd.path):
            return
        try:
            hp = self.rd.record().get("hyperparameters") or {}
        except Exception:  # noqa: BLE001 (a run dir of a failed start may hold anything)
            return
        if hp:
            self.resolved = hp
            self.total_steps = hp.get("total_steps")

    def _events(self, s) -> None:
        for e in self.rd.events(after_seq=self.last_seq):
            self.last_seq = max(self.last_seq, int(e.get("seq", 0)))
            data = e.get("data") or {}
            if e.get("type") == "metrics" and isinstance(data.get("step"), int):
                self._metrics_event(s, data)
                continue
            level = {"warning": "warn"}.get(e.get("level"), e.get("level") or "info")
            add_event(s, self.job, f"ev:{e.get('seq')}", self.w.redact.text(str(e.get("message", "")))[:2000],
                      level=level if level in ("info", "warn", "error") else "info",
                      data=self.w.redact.data(data) or None)

    def _metrics(self, s) -> None:
        for r in self.rd.metrics():
            if isinstance(r.get("step"), int):
                self._metrics_event(s, r)

    def _metrics_event(self, s, r: dict) -> None:
        """One metrics event per step, in OpenAI's names (valid_loss is Honing's eval_loss)."""
        step = r["step"]
        if step in self.steps_seen:
            return
        self.steps_seen.add(step)
        self.total_steps = self.total_steps or r.get("total_steps")
        if step == 0:
            before = (f"Eval reward before training: {r.get('eval_reward')}" if "eval_reward" in r
                      else f"Eval loss before training: {r.get('eval_loss')}")
            add_event(s, self.job, "metrics:0", before, type="metrics",
                      data={"step": 0, "total_steps": self.total_steps, "train_loss": None,
                            "valid_loss": r.get("eval_loss"), "train_mean_token_accuracy": None,
                            "learning_rate": None, "epoch": 0, **_reward_metrics(r)})
            return
        self.trained_tokens = r.get("trained_tokens", self.trained_tokens)
        t = time.time()
        self.first_step = self.first_step or (step, t)
        self.last_step = (step, t)
        data = {"step": step, "total_steps": self.total_steps, "train_loss": r.get("train_loss"),
                "valid_loss": r.get("eval_loss"), "train_mean_token_accuracy": r.get("train_mean_token_accuracy"),
                "learning_rate": r.get("lr"), "epoch": r.get("epoch"), **_reward_metrics(r)}
        loss = r.get("train_loss")
        add_event(s, self.job, f"metrics:{step}",
                  f"Step {step}/{self.total_steps}: training loss={loss:.4f}" if isinstance(loss, float)
                  else f"Step {step}/{self.total_steps}", type="metrics", data=data)

    def _checkpoints(self, s) -> None:
        rows = {r.get("step"): r for r in self.rd.metrics()}
        for ck in self.rd.checkpoints() if self.rd.checkpoints_dir.is_dir() else []:
            if ck.step in self.ckpts_seen:
                continue
            target = self.w.settings.checkpoints_dir / self.job.id / f"step-{ck.step}.safetensors"
            if not target.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    from honing.fileio import atomic_path

                    with atomic_path(target, overwrite=True) as tmp:
                        shutil.copyfile(ck.path / "trainable.safetensors", tmp)
                except FileNotFoundError:  # pruned by the loop between listing and copying
                    continue
            self.ckpts_seen.add(ck.step)
            r = rows.get(ck.step, {})
            metrics = {"step": ck.step, "train_loss": r.get("train_loss"), "valid_loss": r.get("eval_loss"),
                       "train_mean_token_accuracy": None, "valid_mean_token_accuracy": None,
                       "full_valid_loss": None, "full_valid_mean_token_accuracy": None, **_reward_metrics(r)}
            insert_ignore(s, Checkpoint, [{
                "id": new_id("ftckpt"), "job_id": self.job.id, "project": self.job.project, "step": ck.step,
                "model_name": J.checkpoint_name(self.job, ck.step), "weights": str(target), "metrics": metrics,
                "created_at": now()}])

    def progress_fields(self) -> dict:
        out: dict = {}
        if self.resolved is not None:
            out["resolved"] = self.resolved
            out["total_steps"] = self.total_steps
        if self.trained_tokens is not None:
            out["trained_tokens"] = self.trained_tokens
        if self.first_step and self.last_step and self.total_steps and self.last_step[0] > self.first_step[0]:
            (s0, t0), (s1, t1) = self.first_step, self.last_step
            per_step = (t1 - t0) / (s1 - s0)
            out["estimated_finish"] = int(t1 + per_step * max(0, self.total_steps - s1))
        return out


# Reinforcement jobs' metrics (objective grpo's rows) under the names events and checkpoints carry.
REWARD_METRICS = {"train_reward": "train_reward", "train_reward_std": "train_reward_std",
                  "train_frac_reward_zero_std": "train_frac_reward_zero_std",
                  "train_completion_length": "train_completion_length", "train_grader_errors": "train_grader_errors",
                  "eval_reward": "valid_reward", "eval_reward_ci_low": "valid_reward_ci_low",
                  "eval_reward_ci_high": "valid_reward_ci_high"}


def _reward_metrics(row: dict) -> dict:
    return {name: row[key] for key, name in REWARD_METRICS.items() if key in row}


def _file_problems(job: Job, path: str, report: dict) -> list[dict]:
    """A file's problems for this job: its upload validation's, or for a reinforcement job the RFT checks
    (messages ending with the user's turn, every field the grader references present)."""
    if (job.method or {}).get("type") != "reinforcement":
        return report.get("problems", [])
    fields = load_grader(job.method["reinforcement"]["grader"]).item_fields()
    examples, problems = check_rft(path, fields)
    if not examples and not problems:
        return [{"line": None, "category": "too_few_examples", "severity": "error", "message": "no examples"}]
    return [p.as_dict() for p in problems]


def release_gate(job: Job, rd: RunDir):
    """The job's release gate (honing.lifecycle.gate) when its configuration has a ``gate`` section, judged on
    the end-of-training evaluation and recorded with the run; None for a job without one. A job whose
    evaluation is missing (no validation file) fails the gate: it cannot be shown to be good enough. A gate
    naming a production run was judged by the training process itself (``hone train`` evaluates production
    on the same examples after its own evaluation); its recorded verdict is the one that counts."""
    if "gate" not in (job.config or {}):
        return None
    from honing.lifecycle.gate import (
        GateCheck,
        GateVerdict,
        evaluate_gate,
        gate_config_of_run,
        record_verdict,
    )

    gate = gate_config_of_run(rd.path)
    evaluation = rd.eval_report()
    if evaluation is None:
        missing = GateCheck("evaluation", False, "no evaluation report (the job needs a validation_file for the "
                            "gate to judge it)")
        verdict = GateVerdict(False, [missing], gate.model_dump(mode="json"))
        record_verdict(rd.path, verdict)
        return verdict
    if gate.production is not None:
        recorded = rd.record().get("gate")
        if recorded:
            return GateVerdict.from_dict(recorded)
        missing = GateCheck("production", False, "the production model was not evaluated on the same examples")
        verdict = GateVerdict(False, [missing], gate.model_dump(mode="json"))
        record_verdict(rd.path, verdict)
        return verdict
    verdict = evaluate_gate(evaluation, gate)
    record_verdict(rd.path, verdict, rd.eval_dir)
    return verdict


def _kill_group(proc: subprocess.Popen, sig=signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        return
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _failure_message(rd: RunDir, log_path: Path, rc: int) -> str:
    """The one line that says why: the CLI's `error: ...` line, else run.json's error, else the exit code."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    for line in reversed(lines):
        if line.startswith("error:"):
            return line.removeprefix("error:").strip()
    try:
        err = rd.record().get("error") if RunDir.is_run(rd.path) else None
    except Exception:  # noqa: BLE001 (best effort: the log line or exit status is said instead)
        err = None
    if err:
        return str(err)
    tail = next((ln for ln in reversed(lines) if ln.strip()), "")
    return f"training exited with status {rc}" + (f": {tail.strip()[:500]}" if tail else "")
