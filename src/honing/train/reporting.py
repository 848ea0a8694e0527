"""What the user sees and what the run directory keeps: metrics.jsonl, TensorBoard, the progress bar,
the loss-curve PNG and summary.md. Only rank 0 reports."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

from honing.fileio import write_json_atomic  # noqa: F401  (re-exported: one atomic-write helper)
from honing.rundir import EVENTS, METRICS


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl`` and mirrors scalars to TensorBoard."""

    def __init__(self, run_dir: Path, tensorboard: bool, resume_step: int | None = None):
        self.path = run_dir / METRICS
        self.rows: list[dict] = []
        if self.path.is_file():
            # On resume, forget what was logged after the checkpoint: those steps are replayed.
            for line in self.path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by kill -9
                if resume_step is not None and row.get("step", 0) <= resume_step:
                    self.rows.append(row)
            tmp = self.path.with_name(".metrics.jsonl.tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in self.rows))
            os.replace(tmp, self.path)
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=(resume_step or 0) + 1 if resume_step else None)
            except ImportError:  # tensorboard is a declared dependency; don't fail a run over it
                self.tb = None

    def log(self, row: dict) -> None:
        self.rows.append(row)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(k, v, row["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


class EventLog:
    """``events.jsonl``: what happened during the run as structured events, one JSON object per line, so
    the CLI, the service's API and the dashboard show the same facts. Each event: ``seq`` (increasing over
    the run's life, resumes included), ``created_at`` (unix seconds), ``type`` (``message`` | ``metrics``),
    ``level`` (``info`` | ``warning`` | ``error``), ``message`` and ``data`` (a metrics row for metrics
    events). Append-only: a resumed run adds a "resumed" message and re-emits the metrics of the steps it
    replays (same ``step``), so consumers key metrics by step."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.path = run_dir / EVENTS
        self.enabled = enabled
        self.seq = 0
        if enabled and self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    self.seq = max(self.seq, int(json.loads(line).get("seq", 0)))
                except (json.JSONDecodeError, ValueError, TypeError, AttributeError):
                    continue  # a line cut by kill -9

    def emit(self, type_: str, message: str, data: dict | None = None, level: str = "info") -> None:
        if not self.enabled:
            return
        import time

        self.seq += 1
        event = {"seq": self.seq, "created_at": round(time.time(), 3), "type": type_, "level": level,
                 "message": message, "data": data or {}}
        with open(self.path, "a") as f:
            f.write(json.dumps(event, default=str) + "\n")

    def message(self, text: str, level: str = "info") -> None:
        self.emit("message", text, level=level)

    def metrics(self, row: dict, total_steps: int) -> None:
        data = {k: v for k, v in row.items() if k != "lines"}
        data["total_steps"] = total_steps
        parts = [f"step {row['step']}/{total_steps}"]
        for key in ("train_loss", "eval_loss"):
            if row.get(key) is not None:
                parts.append(f"{key.replace('_', ' ')} {row[key]:.4f}")
        self.emit("metrics", ", ".join(parts), data)


def plot_loss_curve(rows: list[dict], out: Path) -> None:
    """Train and eval loss against optimizer step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["train_loss"]) for r in rows if r.get("train_loss") is not None]
    evals = [(r["step"], r["eval_loss"]) for r in rows if r.get("eval_loss") is not None]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1)
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = out.with_name(f".{out.stem}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, out)


def overfitting_warning(rows: list[dict], window: int = 2) -> str | None:
    """Warn when eval loss rose ``window`` evals in a row while the train loss kept falling."""
    evals = [r for r in rows if r.get("eval_loss") is not None]
    if len(evals) < window + 1:
        return None
    last = evals[-(window + 1):]
    rising = all(b["eval_loss"] > a["eval_loss"] for a, b in itertools.pairwise(last))
    if not rising:
        return None

    def mean_train(lo: int, hi: int) -> float | None:
        vals = [r["train_loss"] for r in rows if lo < r["step"] <= hi and r.get("train_loss") is not None]
        return sum(vals) / len(vals) if vals else None

    first_seg = mean_train(last[0]["step"] - (last[1]["step"] - last[0]["step"]), last[0]["step"])
    last_seg = mean_train(last[-2]["step"], last[-1]["step"])
    if first_seg is None or last_seg is None or last_seg >= first_seg:
        return None
    return (
        f"possible overfitting: eval loss rose for {window} evals in a row "
        f"({last[0]['eval_loss']:.4f} -> {last[-1]['eval_loss']:.4f} at step {last[-1]['step']}) while train "
        f"loss kept falling ({first_seg:.4f} -> {last_seg:.4f}); the best checkpoint is kept as the result"
    )


class StartupClock:
    """Time to first step, and where it went: from the command's start (``hone train``: the process's start,
    interpreter and imports included; a library call: the call) to the end of the first optimizer step of
    this process, in phases. Imports are counted in the phase that first needs them (torch in the runtime,
    transformers in the model load, PEFT in the adapter)."""

    def __init__(self, origin: float, counted_from: str):
        import time

        self.origin, self.counted_from, self.clock = origin, counted_from, time.time
        self.last = origin
        self.phases: dict[str, float] = {}
        self.total: float | None = None

    def lap(self, phase: str) -> None:
        now = self.clock()
        self.phases[phase] = round(self.phases.get(phase, 0.0) + now - self.last, 2)
        self.last = now

    def first_step_done(self) -> None:
        self.lap("first optimizer step")
        self.total = round(self.last - self.origin, 2)

    def record(self) -> dict:
        return {"time_to_first_step_s": self.total, "counted_from": self.counted_from, "phases": self.phases}

    def sentence(self) -> str:
        return startup_line(self.record())


LINES_PER_RUN = 100  # off a terminal: at most about this many cadence lines (evals and the ends add theirs)


class Progress:
    """Progress of a run: step, loss (or the objective's own metric), eval, examples/s and tokens/s (all
    tokens through the model, prompts included), the forgetting probe, and an ETA. Silent when disabled.

    On a terminal it is a rich progress bar. Anywhere else (nohup, CI logs, a pipe, the service's job log) a
    bar draws nothing until the end, so it prints plain lines, as HF's Trainer and tqdm do in logs: at the
    first step, at every eval, at the last step, and in between once both ``LINE_EVERY_S`` seconds and
    ``line_every_steps`` steps (about a hundredth of the run) have passed since the last line: a steady
    cadence whether steps are fast (no line per step) or slow (no line per eval only).

    The ETA is the wall time per step so far (evals and checkpoints included, as they will recur) times
    the steps left; rich's own estimate only sees the last few steps and jumps at every eval."""

    LINE_EVERY_S = 30.0

    def __init__(self, total: int, start: int, enabled: bool, label: str = "loss", stream=None):
        import sys
        import time

        self.enabled = enabled
        if not enabled:
            return
        self.total, self.start, self.label, self.clock = total, start, label, time.perf_counter
        self.t0 = self.last_line = self.clock()
        self.last_line_step = start
        self.line_every_steps = max(1, -(-(total - start) // LINES_PER_RUN))
        self.stream = stream or sys.stdout
        self.fields = {"loss": "-", "eval": "-", "tps": "-", "eps": "-", "forget": "-", "eta": "-"}
        self.bar = None if not self.stream.isatty() else self._rich_bar(total, start, label)

    @staticmethod
    def _rich_bar(total: int, start: int, label: str):
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn
        from rich.progress import Progress as RichProgress

        bar = RichProgress(
            TextColumn("step"), MofNCompleteColumn(), BarColumn(),
            TextColumn(label + " {task.fields[loss]}  eval {task.fields[eval]}  {task.fields[eps]} ex/s  "
                       "{task.fields[tps]} tok/s  forgetting {task.fields[forget]}  ETA {task.fields[eta]}"),
            transient=False,
        )
        bar.start()
        bar.task = bar.add_task("train", total=total, completed=start, loss="-", eval="-", tps="-", eps="-",
                                forget="-", eta="-")
        return bar

    def update(self, step: int, loss: float | None = None, eval_loss: float | None = None, tps: float | None = None,
               eps: float | None = None, forgetting: float | None = None):
        if not self.enabled:
            return
        fields = {}
        if loss is not None:
            fields["loss"] = f"{loss:.4f}"
        if eval_loss is not None:
            fields["eval"] = f"{eval_loss:.4f}"
        if tps is not None:
            fields["tps"] = f"{tps:,.0f}"
        if eps is not None:
            fields["eps"] = f"{eps:.1f}"
        if forgetting is not None:
            fields["forget"] = f"ppl {forgetting - 1:+.0%}"
        if step > self.start:
            left = (self.clock() - self.t0) / (step - self.start) * (self.total - step)
            fields["eta"] = f"{int(left // 60)}:{int(left % 60):02d}"
        self.fields.update(fields)
        if self.bar is not None:
            self.bar.update(self.bar.task, completed=step, **fields)
        elif self._line_due(step, eval_loss is not None):
            self.last_line, self.last_line_step = self.clock(), step
            f = self.fields
            print(f"step {step}/{self.total}  {self.label} {f['loss']}  eval {f['eval']}  {f['eps']} ex/s  "
                  f"{f['tps']} tok/s  forgetting {f['forget']}  ETA {f['eta']}", file=self.stream, flush=True)

    def _line_due(self, step: int, is_eval: bool) -> bool:
        if is_eval or step == self.start + 1 or step == self.total:
            return True
        return (step - self.last_line_step >= self.line_every_steps
                and self.clock() - self.last_line >= self.LINE_EVERY_S)

    def close(self) -> None:
        if self.enabled and self.bar is not None:
            self.bar.stop()


def write_summary(run_dir: Path, run: dict, hp: dict, warnings: list[str]) -> str:
    """summary.md: what was trained, on what, with what result. Returns the text (also printed)."""
    best = run.get("best") or {}
    ds = run.get("dataset", {})
    lines = [
        f"# Run {run_dir.name}",
        "",
        f"- status: **{run.get('status')}**",
        f"- base model: {run['base_model'].get('reference')} ({run['base_model'].get('source')})",
        f"- method: {run['method']}, objective: {run['objective']}",
        (f"- train data: {ds.get('train', {}).get('path')} ({ds.get('train', {}).get('examples')} examples"
         + (f", {ds['train']['trained_tokens']} trained tokens)" if ds.get("train", {}).get("trained_tokens") is not None
            else ")")),
    ]
    if ds.get("eval"):
        lines.append(f"- eval data: {ds['eval'].get('path')} ({ds['eval'].get('examples')} examples)")
    lines += [
        (f"- hyperparameters: epochs={hp['epochs']} batch_size={hp['batch_size']} "
        f"learning_rate={hp['learning_rate']:.3g} steps={run.get('steps_done')}/{hp['total_steps']}"),
        (f"- best {best.get('metric', 'eval_loss').replace('_', ' ')}: "
        f"{best.get('value', best.get('eval_loss'))} at step {best.get('step')}"),
        f"- final train loss: {run.get('final_train_loss')}",
        *([f"- {startup_line(run['startup'])}"] if (run.get("startup") or {}).get("time_to_first_step_s") else []),
        (f"- trained tokens/s: {run.get('tokens_per_s')} (all example tokens/s: {run.get('input_tokens_per_s')}), "
         f"peak memory (RSS): {run.get('peak_memory_mb')} MB"),
        f"- result: {run_dir / 'final'}" + (f", merged: {run_dir / 'merged'}" if run.get("merged") else ""),
    ]
    if warnings:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in warnings]
    text = "\n".join(lines) + "\n"
    tmp = run_dir / ".summary.md.tmp"
    tmp.write_text(text)
    os.replace(tmp, run_dir / "summary.md")
    return text


def startup_line(startup: dict) -> str:
    """run.json's ``startup`` in words: the time to first step and its phases."""
    parts = ", ".join(f"{name} {secs:.1f}" for name, secs in (startup.get("phases") or {}).items())
    return (f"time to first step: {startup['time_to_first_step_s']:.1f} s from {startup.get('counted_from')}"
            + (f" ({parts})" if parts else ""))


def reward_sentence(run_dir: Path, best_step: int | None) -> str:
    """Validation reward before training and at the kept checkpoint, with their CIs (a GRPO run's evals)."""
    rows = {r.get("step"): r for r in read_metrics(run_dir) if "eval_reward" in r}
    before, best = rows.get(0), rows.get(best_step)
    if before is None or best is None:
        return ""

    def shown(r):
        return f"{r['eval_reward']:.3f} [{r['eval_reward_ci_low']:.3f}, {r['eval_reward_ci_high']:.3f}]"

    return f" Validation reward {shown(before)} before training, {shown(best)} at step {best_step} (kept)."


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def closing_paragraph(result, config, evaluation=None) -> str:
    """The few sentences `hone train` ends with: what was trained, how good it is against the baselines,
    what it cost, where it is. ``result``: the loop's RunResult; ``evaluation``: an EvalResult or None."""
    hp = result.hyperparameters or {}
    what = {"lora": "LoRA", "qlora": "QLoRA"}.get(config.method, config.method)
    if getattr(config.lora, "use_dora", False) and config.method == "lora":
        what = "DoRA"
    objective = {"dpo": "DPO ", "simpo": "SimPO ", "cpt": "continued pre-training ", "grpo": "GRPO ", "kto": "KTO ",
                 "orpo": "ORPO "}.get(config.objective, "")
    if config.method in ("lora", "qlora"):
        lc = config.lora
        what += f" (rank {lc.r}" + (f", top {lc.top_layers} layers" if lc.top_layers else "") + ")"
    from honing.rundir import RunDir

    seconds = float(RunDir(result.run_dir).record().get("wall_seconds") or 0.0)
    parts = [f"Trained a {objective}{what} adapter of {config.model}" if config.method != "full"
             else f"Fine-tuned every weight of {config.model}" + (f" ({objective.strip()})" if objective else ""),
             f" for {result.steps} steps x {hp.get('batch_size', '?')} "
             + (f"prompts x {config.grpo.group_size} completions" if config.objective == "grpo" else "examples")]
    if seconds:
        parts.append(f" in {seconds / 60:.1f} min")
        first = (RunDir(result.run_dir).record().get("startup") or {}).get("time_to_first_step_s")
        if first:
            parts.append(f", the first step {first:.1f} s after the start")
    parts.append(f" ({result.input_tokens_per_s:,.0f} tokens/s of all tokens, {result.tokens_per_s:,.1f} trained "
                 f"tokens/s; peak memory {result.peak_memory_mb / 1024:.1f} GB).")
    if config.objective == "grpo":
        parts.append(reward_sentence(result.run_dir, result.best_step))
    if evaluation is not None and evaluation.approaches:
        by_name = {a.name: a for a in evaluation.approaches}
        ft = by_name.get("fine-tuned")
        metric = evaluation.primary
        if ft is not None:
            others = ", ".join(f"{a.name} {a.primary_value:.3f}" for a in evaluation.approaches if a is not ft)
            parts.append(f" On {evaluation.n_examples} held-out examples its {metric} is {ft.primary_value:.3f}"
                         + (f" (vs {others})" if others else "") + f": {evaluation.verdict}")
        f = evaluation.forgetting
        if f:
            state = "flagged: " + "; ".join(f["reasons"]) if f["flagged"] else "within the thresholds"
            parts.append(f" General ability: perplexity {f['perplexity_change']:+.0%}, QA "
                         f"{f['qa_accuracy_change'] * 100:+.0f} points ({state}).")
    parts.append(f" Result: {result.final_dir}"
                 + (f"; report: {evaluation.report_html}" if evaluation is not None and evaluation.report_html else "")
                 + ".")
    return "".join(parts)
