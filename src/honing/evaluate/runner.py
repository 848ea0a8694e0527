"""``evaluate()``: the fine-tuned model against the cheaper options, on the same examples.

Flow: read eval items -> detect the task -> load the model once (for an adapter run the base model is
the same weights with the adapter disabled) -> for each baseline build its prompts and decode greedily
with the base model -> decode the zero-shot prompts with the fine-tuned model -> score every approach
-> paired bootstrap of the differences -> reference-answer loss -> forgetting -> report files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from honing.errors import ConfigError, DataError
from honing.evaluate import baselines as B
from honing.evaluate.bootstrap import Interval, mean_ci, paired_difference_ci
from honing.evaluate.config import EvalConfig, eval_config, schema_object
from honing.evaluate.dataset import (
    EvalItem,
    read_conversations,
    read_eval_items,
    read_task_declaration,
    to_eval_items,
    uses_tools,
)
from honing.evaluate.forgetting import forgetting_verdict, general_ability
from honing.evaluate.generation import auto_max_new_tokens, generate, reference_loss
from honing.evaluate.metrics import TASKS, TaskScores, detect_task, score

FINE_TUNED = "fine-tuned"
# Reference-answer loss is a full forward pass per example (no shared prefix): on a 2-core CPU 240
# examples of the demo cost ~2 minutes per model, so it is measured on the first examples only.
LOSS_MAX_EXAMPLES = 100


@dataclass
class ApproachResult:
    """One approach (a baseline on the base model, or the fine-tuned model) on every eval example."""

    name: str
    model: str  # "base" or "fine-tuned"
    scores: TaskScores
    predictions: list[str]
    prompt_tokens: list[int]
    seconds: float
    primary_ci: Interval
    # A bootstrap 95% CI of every per-example metric (the primary's included), e.g. each tool-call score.
    metric_cis: dict[str, Interval] = field(default_factory=dict)

    @property
    def primary_value(self) -> float:
        return self.scores.summary[self.scores.primary]

    @property
    def mean_prompt_tokens(self) -> float:
        return sum(self.prompt_tokens) / max(1, len(self.prompt_tokens))

    @property
    def latency_per_example(self) -> float:
        """Seconds per example of batched decoding (throughput, not single-query latency)."""
        return self.seconds / max(1, len(self.predictions))

    def to_dict(self) -> dict:
        return {
            "name": self.name, "model": self.model, **self.scores.to_dict(),
            "primary_value": self.primary_value, "primary_ci": self.primary_ci.to_dict(),
            "metric_cis": {k: v.to_dict() for k, v in self.metric_cis.items()},
            "mean_prompt_tokens": self.mean_prompt_tokens, "latency_per_example_s": self.latency_per_example,
            "seconds": self.seconds,
        }


@dataclass
class EvalResult:
    model_ref: str
    eval_path: str
    task: str
    primary: str
    n_examples: int
    approaches: list[ApproachResult]
    comparisons: list[dict]  # best approach vs each other: {"a", "b", "difference": Interval dict}
    winner: str
    verdict: str
    reference_loss: dict  # model -> {"loss", "perplexity", "tokens"}
    forgetting: dict | None
    items: list[EvalItem] = field(repr=False, default_factory=list)
    loss_curve: list[dict] = field(repr=False, default_factory=list)
    settings: dict = field(default_factory=dict)
    out_dir: Path | None = None

    @property
    def report_html(self) -> Path | None:
        return self.out_dir / "report.html" if self.out_dir else None

    @property
    def report_md(self) -> Path | None:
        return self.out_dir / "report.md" if self.out_dir else None

    @property
    def eval_json(self) -> Path | None:
        return self.out_dir / "eval.json" if self.out_dir else None

    def approach(self, name: str) -> ApproachResult:
        return next(a for a in self.approaches if a.name == name)

    def samples(self, n: int = 5) -> list[dict]:
        """Up to ``n`` examples where the base model (zero-shot) and the fine-tuned model answer
        differently: ``{"prompt", "reference", "base", "fine-tuned"}`` (empty without both)."""
        names = {a.name for a in self.approaches}
        if not {"zero-shot", FINE_TUNED} <= names:
            return []
        base, ft = self.approach("zero-shot"), self.approach(FINE_TUNED)
        out = []
        for i, item in enumerate(self.items):
            if base.predictions[i] != ft.predictions[i]:
                out.append({"prompt": item.query, "reference": item.reference,
                            "base": base.predictions[i], FINE_TUNED: ft.predictions[i]})
                if len(out) >= n:
                    break
        return out

    def to_dict(self, per_example: bool = False) -> dict:
        """Every number. ``per_example``: also each approach's per-example scores and a fingerprint of the
        examples (eval.json carries them, so the gate and ``hone compare`` can pair results later)."""
        out = self._summary_dict()
        if per_example:
            out["per_example"] = {a.name: a.scores.per_example for a in self.approaches}
            out["examples_sha256"] = examples_fingerprint(self.items)
        return out

    def _summary_dict(self) -> dict:
        return {
            "model": self.model_ref, "eval_data": self.eval_path, "examples": self.n_examples,
            "task": self.task, "primary_metric": self.primary,
            "approaches": {a.name: a.to_dict() for a in self.approaches},
            "comparisons": self.comparisons, "fine_tuned_vs_zero_shot": self.fine_tuned_vs_zero_shot(),
            "winner": self.winner, "verdict": self.verdict,
            "reference_loss": self.reference_loss, "forgetting": self.forgetting, "settings": self.settings,
            "files": {k: str(v) for k, v in
                      (("report_html", self.report_html), ("report_md", self.report_md), ("eval_json", self.eval_json))
                      if v is not None},
        }

    def fine_tuned_vs_zero_shot(self) -> dict | None:
        """Paired-bootstrap difference fine-tuned minus zero-shot (the question fine-tuning must answer
        first), whatever the overall winner; None unless both were evaluated."""
        names = {a.name for a in self.approaches}
        if not {"zero-shot", FINE_TUNED} <= names:
            return None
        ft, zs = self.approach(FINE_TUNED), self.approach("zero-shot")
        ci = paired_difference_ci(ft.scores.per_example[self.primary], zs.scores.per_example[self.primary])
        return {"a": FINE_TUNED, "b": "zero-shot", "difference": ci.to_dict(), "significant": ci.excludes_zero}

    def summary_table(self) -> str:
        """The comparison as plain text: one row per approach, then the verdict."""
        head = f"{'approach':<12} {self.primary + ' [95% CI]':<26} {'prompt tok':>10} {'s/example':>10}"
        rows = [head, "-" * len(head)]
        for a in self.approaches:
            ci = a.primary_ci
            rows.append(f"{a.name:<12} {f'{a.primary_value:.3f} [{ci.low:.3f}, {ci.high:.3f}]':<26} "
                        f"{a.mean_prompt_tokens:>10.0f} {a.latency_per_example:>10.3f}")
        rows.append("")
        rows.append(self.verdict)
        vs = self.fine_tuned_vs_zero_shot()
        if vs is not None:
            d = vs["difference"]
            rows.append(f"fine-tuned vs zero-shot: {_points(d['estimate'], self.primary)} (95% CI "
                        f"{_points(d['low'], self.primary)} to {_points(d['high'], self.primary)}"
                        + (")" if vs["significant"] else ", not significant)"))
        if self.forgetting:
            f = self.forgetting
            rows.append(f"forgetting: general-text perplexity {f['before']['perplexity']:.2f} -> "
                        f"{f['after']['perplexity']:.2f}, general QA {f['before']['qa_accuracy']:.0%} -> "
                        f"{f['after']['qa_accuracy']:.0%}" + (" [FLAGGED: " + "; ".join(f["reasons"]) + "]"
                                                              if f["flagged"] else " (no drop beyond thresholds)"))
        return "\n".join(rows)


def examples_fingerprint(items: Sequence[EvalItem]) -> str:
    """SHA-256 of the evaluated (prompt, reference) pairs in order: two results are paired only when equal."""
    h = hashlib.sha256()
    for it in items:
        h.update(json.dumps([[m.role, m.content] for m in it.prompt] + [it.reference], ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def _points(x: float, primary: str) -> str:
    return f"{x * 100:+.1f} points" if primary != "loss" else f"{x:+.3f}"


def compare(approaches: Sequence[ApproachResult], primary: str, seed: int = 0) -> tuple[str, list[dict], str]:
    """The winner (highest primary metric), its paired-bootstrap differences to every other approach,
    and a one-line verdict that does not oversell: a difference whose 95% CI includes 0 is a tie."""
    best = max(approaches, key=lambda a: a.primary_value)
    comparisons = []
    for other in approaches:
        if other is best:
            continue
        ci = paired_difference_ci(best.scores.per_example[primary], other.scores.per_example[primary], seed=seed)
        comparisons.append({"a": best.name, "b": other.name, "difference": ci.to_dict(),
                            "significant": ci.excludes_zero})
    if not comparisons:
        return best.name, [], f"only one approach evaluated: {best.name} {primary} {best.primary_value:.3f}"
    runner_up = max((a for a in approaches if a is not best), key=lambda a: a.primary_value)
    c = next(c for c in comparisons if c["b"] == runner_up.name)
    d = c["difference"]
    span = f"95% CI {_points(d['low'], primary)} to {_points(d['high'], primary)}"
    if c["significant"]:
        verdict = (f"{best.name} wins: {primary} {best.primary_value:.3f} vs {runner_up.name} "
                   f"{runner_up.primary_value:.3f} ({_points(d['estimate'], primary)}, {span}).")
    else:
        verdict = (f"no clear winner: {best.name} {primary} {best.primary_value:.3f} vs {runner_up.name} "
                   f"{runner_up.primary_value:.3f} ({_points(d['estimate'], primary)}, {span} includes 0).")
    return best.name, comparisons, verdict


def _resolve_task(config: EvalConfig, conversations, say: Callable[[str], None]) -> tuple[str, dict | str | None]:
    """(metric, schema): the configured ones; for what is left at auto / null, what the data's
    ``hone_eval.json`` declares, else ``tool_call`` for tool-calling data, else still auto (detected from
    the references once they are read)."""
    metric, schema = config.metric, config.schema_
    declared, where = read_task_declaration(config.data)
    if declared:
        if metric == "auto":
            if declared["metric"] not in TASKS:
                raise DataError(f"{where}: metric {declared['metric']!r}: choose {', '.join(TASKS)}")
            metric = declared["metric"]
        if schema is None and declared["schema"] is not None and metric == "json":
            schema = str(declared["schema"])
        say(f"task: {metric}{f', schema {schema}' if schema is not None else ''} (declared in {where})")
    elif metric == "auto" and uses_tools(conversations):
        metric = "tool_call"
        say("task: tool_call (the data declares tools or makes tool calls)")
    return metric, schema


def _read_loss_curve(run_dir: Path) -> list[dict]:
    from honing.rundir import RunDir

    return RunDir(run_dir).metrics()


def _run_info(model_ref: str) -> dict | None:
    from honing.models.loading import is_run_dir

    if not is_run_dir(model_ref):
        return None
    from honing.rundir import RunDir

    return RunDir(model_ref).record()


def _load_models(model_ref: str, run: dict | None, dtype, device=None):
    """(base_context, fine_tuned_model_or_None, tokenizer). ``base_context()`` is a context manager
    yielding the base model: for an adapter run, the same weights with the adapter switched off."""
    from honing.models.loading import load_for_inference, load_model

    if run is None:
        m, tok, _ = load_model(model_ref, dtype=dtype, device=device)
        m.eval()
        return (lambda: contextlib.nullcontext(m)), None, tok
    ft, tok, info = load_for_inference(model_ref, dtype=dtype, device=device)
    if info["kind"] == "adapter":
        @contextlib.contextmanager
        def base_ctx():
            with ft.disable_adapter():
                yield ft
        return base_ctx, ft, tok
    base, _, _ = load_model(run["base_model"]["reference"], dtype=dtype, device=device)
    base.eval()
    return (lambda: contextlib.nullcontext(base)), ft, tok


def evaluate(
    model_ref: str | Path | None = None,
    eval_path: str | Path | None = None,
    *,
    config: EvalConfig | None = None,
    progress: Callable[[str], None] | None = None,
    **settings,
) -> EvalResult:
    """Evaluate a fine-tuned run directory (or a base model: baselines only) on ``eval_path``.

    Settings are one :class:`~honing.evaluate.config.EvalConfig`: pass it as ``config``, or pass its keys
    as keyword arguments (``baselines=["zero-shot"], k_shots=2, ...``; the older names ``train_path``,
    ``docs_dir``, ``out_dir`` and ``write_report`` still work). Writes eval.json, report.md and report.html
    into ``out`` unless ``report`` is false. Returns an :class:`EvalResult`.
    """
    if config is None:
        config = eval_config(model=model_ref, data=eval_path, **settings)
    elif model_ref is not None or eval_path is not None or settings:
        raise ConfigError("evaluate(): pass either config= or the model, data and keyword settings, not both")
    return _run(config, progress or (lambda _msg: None))


@dataclass
class _Task:
    """The evaluated examples and how they are scored."""

    items: list[EvalItem]
    task: str
    schema: dict | None
    labels: list[str] | None
    pool: list[EvalItem]
    train_path: str | None
    run: dict | None


def _prepare(config: EvalConfig, say: Callable[[str], None]) -> _Task:
    """Read the examples and the training pool, settle the task, check each baseline has what it needs."""
    conversations = read_conversations(config.data)
    metric, schema = _resolve_task(config, conversations, say)
    tool_task = metric == "tool_call"
    items = to_eval_items(conversations, config.data, at_last_call=tool_task)[:config.max_examples]
    references = [it.reference for it in items]
    task = detect_task(references) if metric == "auto" else metric
    run = _run_info(config.model)
    train_path = config.train_data
    if train_path is None and run is not None:
        candidate = ((run.get("dataset") or {}).get("train") or {}).get("path")
        train_path = candidate if candidate and Path(candidate).is_file() else None
    pool = read_eval_items(train_path, at_last_call=tool_task) if train_path else []
    inputs = B.BaselineInputs(pool, config.docs, config.k_shots, config.rag_k)
    for name in config.baselines:
        problem = B.REGISTRY[name].missing(inputs)
        if problem:
            raise DataError(problem)
    schema_obj = schema_object(config.model_copy(update={"schema_": schema}))
    labels = sorted(set(references)) if task == "classification" else None
    return _Task(items, task, schema_obj, labels, pool, train_path, run)


def _threads(config: EvalConfig) -> int:
    from honing.threads import fastest_thread_count

    return fastest_thread_count() if config.threads == "auto" else int(config.threads)


def _run(config: EvalConfig, say: Callable[[str], None]) -> EvalResult:
    from honing.precision import auto_dtype
    from honing.threads import torch_threads
    from honing.train.runtime import resolve_device

    t = _prepare(config, say)
    n_threads = _threads(config)
    with torch_threads(n_threads):
        dev = resolve_device(config.device)
        torch_dtype = auto_dtype(config.dtype, dev.type)
        say(f"loading {config.model} ({str(torch_dtype).replace('torch.', '')} on {dev}"
            + (f", {n_threads} CPU thread(s))" if dev.type == "cpu" else ")"))
        base_ctx, fine_tuned, tok = _load_models(config.model, t.run, torch_dtype, dev)
        new_tokens = config.max_new_tokens or auto_max_new_tokens(
            tok, [it.reference for it in t.items] + [p.reference for p in t.pool[:500]])
        approaches, ref_loss, ability = _run_approaches(config, t, base_ctx, fine_tuned, tok, new_tokens, say)
    primary = approaches[0].scores.primary
    winner, comparisons, verdict = compare(approaches, primary)
    forgetting_report = None
    if len(ability) == 2:
        forgetting_report = forgetting_verdict(ability["base"], ability["fine-tuned"])
    result = EvalResult(
        model_ref=config.model, eval_path=config.data, task=t.task, primary=primary, n_examples=len(t.items),
        approaches=approaches, comparisons=comparisons, winner=winner, verdict=verdict,
        reference_loss=ref_loss, forgetting=forgetting_report, items=t.items,
        loss_curve=_read_loss_curve(Path(config.model)) if t.run is not None else [],
        settings={"max_new_tokens": new_tokens, "k_shots": config.k_shots, "rag_k": config.rag_k,
                  "dtype": str(torch_dtype), "threads": n_threads,
                  "train_data": str(t.train_path) if t.train_path else None, "docs": config.docs,
                  "bootstrap_resamples": 1000, "confidence": 0.95, "config": config.settings_dict()},
    )
    if config.report:
        from honing.evaluate.report import write_reports

        out_dir = config.out or (Path(config.model) / "eval" if t.run is not None else Path("hone-eval"))
        result.out_dir = Path(out_dir)
        write_reports(result, result.out_dir)
        say(f"report: {result.report_html}")
    return result


def _run_approaches(config: EvalConfig, t: _Task, base_ctx, fine_tuned, tok, new_tokens: int,
                    say: Callable[[str], None]) -> tuple[list[ApproachResult], dict, dict]:
    """Every baseline on the base model, then the fine-tuned model on the zero-shot prompts: their
    results, the reference-answer losses and (with ``forgetting``) the general-ability probes."""
    references = [it.reference for it in t.items]
    extra = {"reference_calls": [it.reference_calls for it in t.items]} if t.task == "tool_call" else {}

    def run_approach(name: str, model_label: str, model, prompts: B.Prompts) -> ApproachResult:
        say(f"{name}: generating {len(prompts.messages)} answers (max {new_tokens} new tokens)")
        g = generate(model, tok, prompts.messages, new_tokens, tools=prompts.tools)
        s = score(g.texts, references, t.task, schema=t.schema, labels=t.labels, tools=prompts.tools, **extra)
        say(f"{name}: {s.primary} {s.summary[s.primary]:.3f} in {g.seconds:.1f}s")
        cis = {metric: mean_ci(values) for metric, values in s.per_example.items()}
        return ApproachResult(name, model_label, s, g.texts, g.prompt_tokens, g.seconds, cis[s.primary], cis)

    def loss_and_ability(label: str, model) -> None:
        rl = reference_loss(model, tok, t.items[:LOSS_MAX_EXAMPLES])
        ref_loss[label] = {"loss": rl.loss, "perplexity": rl.perplexity, "tokens": rl.tokens,
                           "examples": min(len(t.items), LOSS_MAX_EXAMPLES)}
        if fine_tuned is not None and config.forgetting:
            say(f"forgetting: general text and questions, {label} model")
            ability[label] = general_ability(model, tok)

    approaches: list[ApproachResult] = []
    ref_loss: dict = {}
    ability: dict = {}
    inputs = B.BaselineInputs(t.pool, config.docs, config.k_shots, config.rag_k)
    with base_ctx() as base:
        for name in config.baselines:
            start = time.perf_counter()
            prompts = B.REGISTRY[name].build(t.items, inputs)
            retrieval_s = time.perf_counter() - start
            result = run_approach(name, "base", base, prompts)
            result.seconds += retrieval_s  # selecting shots / chunks is part of the approach's cost
            approaches.append(result)
        loss_and_ability("base", base)
    if fine_tuned is not None:
        zero_shot = B.REGISTRY["zero-shot"].build(t.items, inputs)
        approaches.append(run_approach(FINE_TUNED, "fine-tuned", fine_tuned, zero_shot))
        loss_and_ability("fine-tuned", fine_tuned)
    if not approaches:
        raise ConfigError("nothing to evaluate: no baselines and no fine-tuned model (pass a run directory)")
    return approaches, ref_loss, ability
