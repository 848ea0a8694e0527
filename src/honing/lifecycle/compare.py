"""``compare_runs()``: several fine-tuned runs on the same eval set, side by side.

Flow: evaluate the last run (the candidate) with the cheaper baselines on its base model -> evaluate
every other run's fine-tuned model alone, with the candidate's decoding settings (same max new tokens,
same threads) -> paired bootstrap differences between every pair of runs and between every run and
every baseline -> forgetting, training cost and lineage (base model, data fingerprints, configuration
keys that differ) from each run directory -> report files.

The baselines run once, on the candidate's base model: when runs differ in base model, that is the
base a new release would otherwise be prompted on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from honing.errors import ConfigError, ModelError
from honing.evaluate import baselines as B
from honing.evaluate.bootstrap import paired_difference_ci
from honing.evaluate.runner import FINE_TUNED, EvalResult, evaluate
from honing.lifecycle.report import short_value, write_compare_report
from honing.rundir import RunDir

# Configuration keys that always differ between runs and say nothing about how they were trained.
IGNORED_CONFIG_KEYS = {"out"}


@dataclass
class RunEntry:
    """One run of a comparison: its evaluation and what its run directory records."""

    label: str
    path: str
    result: EvalResult
    record: dict
    metrics: list[dict] = field(default_factory=list)

    @property
    def approach(self):
        return self.result.approach(FINE_TUNED)

    def cost(self) -> dict:
        """What training it cost: wall time, trained tokens (cumulative, from metrics.jsonl), memory."""
        r = self.record
        trained = next((m["trained_tokens"] for m in reversed(self.metrics) if "trained_tokens" in m), None)
        return {"wall_seconds": r.get("wall_seconds"), "steps": r.get("steps_done"), "trained_tokens": trained,
                "trained_tokens_per_s": r.get("tokens_per_s"), "peak_memory_mb": r.get("peak_memory_mb"),
                "world_size": r.get("world_size"), "dtype": r.get("dtype")}

    def lineage(self) -> dict:
        r = self.record
        base = r.get("base_model") or {}
        data = r.get("dataset") or {}
        train, ev = data.get("train") or {}, data.get("eval") or {}
        return {"base_model": base.get("reference"), "base_model_sha256": base.get("source_sha256"),
                "train_data": train.get("path"), "train_sha256": train.get("sha256"),
                "train_examples": train.get("examples"), "eval_data": ev.get("path"), "eval_sha256": ev.get("sha256"),
                "method": r.get("method"), "honing": (r.get("versions") or {}).get("honing")}

    def to_dict(self) -> dict:
        a = self.approach
        return {"label": self.label, "path": self.path, "primary_value": a.primary_value,
                "primary_ci": a.primary_ci.to_dict(), "metrics": a.scores.summary,
                "seconds_per_example": a.latency_per_example, "forgetting": self.result.forgetting,
                "cost": self.cost(), "lineage": self.lineage()}


@dataclass
class Comparison:
    eval_path: str
    task: str
    primary: str
    n_examples: int
    examples_sha256: str
    runs: list[RunEntry]
    baselines: list  # ApproachResult of the cheaper approaches (candidate's base model)
    baselines_model: str
    differences: list[dict]  # {"a", "b", "difference": Interval dict (a - b), "significant"}
    config_differences: dict  # dotted key -> {label: value}
    lineage_differences: dict  # lineage field -> {label: value}
    settings: dict = field(default_factory=dict)
    out_dir: Path | None = None

    @property
    def candidate(self) -> RunEntry:
        return self.runs[-1]

    def run(self, label: str) -> RunEntry:
        return next(r for r in self.runs if r.label == label)

    def table(self) -> list[dict]:
        """One row per approach (runs, then baselines): name, kind, value, CI, prompt tokens, s/example."""
        rows = []
        for r in self.runs:
            a = r.approach
            rows.append({"name": r.label, "kind": "run", "value": a.primary_value, "ci": a.primary_ci.to_dict(),
                         "prompt_tokens": a.mean_prompt_tokens, "s_per_example": a.latency_per_example})
        for a in self.baselines:
            rows.append({"name": a.name, "kind": f"baseline on {self.baselines_model}", "value": a.primary_value,
                         "ci": a.primary_ci.to_dict(), "prompt_tokens": a.mean_prompt_tokens,
                         "s_per_example": a.latency_per_example})
        return rows

    def to_dict(self) -> dict:
        files = {}
        if self.out_dir is not None:
            files = {k: str(self.out_dir / n) for k, n in
                     (("report_html", "report.html"), ("report_md", "report.md"), ("compare_json", "compare.json"))}
        return {
            "eval_data": self.eval_path, "examples": self.n_examples, "examples_sha256": self.examples_sha256,
            "task": self.task, "primary_metric": self.primary,
            "runs": [r.to_dict() for r in self.runs],
            "baselines": {"model": self.baselines_model, "approaches": {a.name: a.to_dict() for a in self.baselines}},
            "differences": self.differences, "config_differences": self.config_differences,
            "lineage_differences": self.lineage_differences, "settings": self.settings, "files": files,
        }

    def summary_table(self) -> str:
        """Plain text: the approaches, the differences, forgetting, cost and lineage."""
        head = f"{'approach':<28} {self.primary + ' [95% CI]':<26} {'prompt tok':>10} {'s/example':>10}"
        out = [f"{self.n_examples} examples of {self.eval_path}; task {self.task}", head, "-" * len(head)]
        for row in self.table():
            ci = row["ci"]
            value = f"{row['value']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]"
            out.append(f"{row['name'][:28]:<28} {value:<26} {row['prompt_tokens']:>10.0f} {row['s_per_example']:>10.3f}")
        out += ["", "paired differences (95% bootstrap CI):"]
        for d in self.differences:
            iv = d["difference"]
            out.append(f"  {d['a']} - {d['b']}: {iv['estimate'] * 100:+.1f} points "
                       f"[{iv['low'] * 100:+.1f}, {iv['high'] * 100:+.1f}]" + ("" if d["significant"] else " (n.s.)"))
        out += ["", "forgetting (general-text perplexity, general QA accuracy; base -> fine-tuned):"]
        for r in self.runs:
            f = r.result.forgetting
            out.append(f"  {r.label}: " + ("not measured" if not f else
                       f"{f['before']['perplexity']:.2f} -> {f['after']['perplexity']:.2f} ({f['perplexity_change']:+.0%}), "
                       f"{f['before']['qa_accuracy']:.0%} -> {f['after']['qa_accuracy']:.0%}"
                       + (" FLAGGED" if f["flagged"] else "")))
        out += ["", "training cost:"]
        for r in self.runs:
            c = r.cost()
            out.append(f"  {r.label}: {_num(c['wall_seconds'], '.0f')} s wall, {_num(c['steps'])} steps, "
                       f"{_num(c['trained_tokens'], ',')} trained tokens, peak RSS {_num(c['peak_memory_mb'], '.0f')} MB")
        if self.lineage_differences or self.config_differences:
            out += ["", "what differs:"]
            for key, values in {**self.lineage_differences, **self.config_differences}.items():
                out.append(f"  {key}: " + "; ".join(f"{label}={short_value(v)}" for label, v in values.items()))
        else:
            out += ["", "lineage: same base model, data and configuration"]
        return "\n".join(out)


def _num(v, fmt: str = "") -> str:
    return "?" if v is None else format(v, fmt)


def flatten(d: dict, prefix: str = "") -> dict:
    """{"lora": {"r": 8}} -> {"lora.r": 8}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def differing(values_by_label: dict[str, dict], ignore: set[str] = frozenset()) -> dict:
    """Keys whose value is not the same in every dict: key -> {label: value}."""
    keys = sorted(set().union(*(v.keys() for v in values_by_label.values())) - set(ignore))
    out = {}
    for key in keys:
        vals = {label: d.get(key) for label, d in values_by_label.items()}
        if len({repr(v) for v in vals.values()}) > 1:
            out[key] = vals
    return out


def run_labels(paths: Sequence[str | Path]) -> list[str]:
    """Short names: the folder name, or the whole path when two runs share a folder name."""
    names = [Path(p).name for p in paths]
    return [n if names.count(n) == 1 else str(p) for n, p in zip(names, paths)]


def pairwise(runs: Sequence[RunEntry], baselines: Sequence, primary: str) -> list[dict]:
    """Later run minus earlier run for every pair, then every run minus every baseline."""
    def diff(a_name, a_scores, b_name, b_scores):
        ci = paired_difference_ci(a_scores, b_scores)
        return {"a": a_name, "b": b_name, "difference": ci.to_dict(), "significant": ci.excludes_zero}

    out = []
    for j in range(len(runs)):
        for i in range(j):
            out.append(diff(runs[j].label, runs[j].approach.scores.per_example[primary],
                            runs[i].label, runs[i].approach.scores.per_example[primary]))
    for r in runs:
        for b in baselines:
            out.append(diff(r.label, r.approach.scores.per_example[primary], b.name, b.scores.per_example[primary]))
    return out


def _check_runs(run_dirs: Sequence[str | Path]) -> None:
    if len(run_dirs) < 1:
        raise ConfigError("compare needs at least one run directory")
    if len({str(Path(p).resolve()) for p in run_dirs}) != len(run_dirs):
        raise ConfigError("compare: the same run directory is named twice")
    for p in run_dirs:
        rd = RunDir(p)
        if not rd.is_finished():
            raise ModelError(f"{p}: not a finished Honing run (status {rd.record().get('status')!r}, "
                             "or no final/ model)")


def compare_runs(
    run_dirs: Sequence[str | Path],
    eval_path: str | Path,
    *,
    baselines: Sequence[str] = B.BASELINES,
    train_path: str | Path | None = None,
    docs_dir: str | Path | None = None,
    max_examples: int | None = None,
    max_new_tokens: int | None = None,
    forgetting: bool = True,
    dtype: str = "auto",
    threads: int | str = "auto",
    out_dir: str | Path | None = None,
    write_report: bool = True,
    progress: Callable[[str], None] | None = None,
) -> Comparison:
    """Evaluate every run on ``eval_path`` and compare them (see the module docstring). The last run is
    the candidate: the baselines (few-shot/RAG pool: ``train_path``, default its training data) run on its
    base model. Writes compare.json, report.md and report.html into ``out_dir`` (default ./hone-compare)."""
    say = progress or (lambda _m: None)
    _check_runs(run_dirs)
    labels = run_labels(run_dirs)
    say(f"candidate {labels[-1]}: fine-tuned and baselines ({', '.join(baselines) or 'none'})")
    cand = evaluate(run_dirs[-1], eval_path, train_path=train_path, baselines=baselines, docs_dir=docs_dir,
                    max_examples=max_examples, max_new_tokens=max_new_tokens, forgetting=forgetting, dtype=dtype,
                    threads=threads, progress=say, write_report=False)
    # The same decoding for every run, so differences come from the models alone.
    same = {"max_new_tokens": cand.settings["max_new_tokens"], "threads": cand.settings["threads"]}
    results = []
    for path, label in zip(run_dirs[:-1], labels[:-1]):
        say(f"run {label}: fine-tuned")
        results.append(evaluate(path, eval_path, baselines=(), max_examples=max_examples, forgetting=forgetting,
                                dtype=dtype, progress=say, write_report=False, **same))
    results.append(cand)
    runs = [RunEntry(label, str(p), res, RunDir(p).record(), RunDir(p).metrics())
            for label, p, res in zip(labels, run_dirs, results)]
    from honing.evaluate.runner import examples_fingerprint

    base_approaches = [a for a in cand.approaches if a.name != FINE_TUNED]
    comparison = Comparison(
        eval_path=str(eval_path), task=cand.task, primary=cand.primary, n_examples=cand.n_examples,
        examples_sha256=examples_fingerprint(cand.items), runs=runs, baselines=base_approaches,
        baselines_model=RunDir(run_dirs[-1]).base_model_reference(),
        differences=pairwise(runs, base_approaches, cand.primary),
        config_differences=differing({r.label: flatten(r.record.get("config") or {}) for r in runs},
                                     IGNORED_CONFIG_KEYS),
        lineage_differences=differing({r.label: r.lineage() for r in runs}),
        settings={**cand.settings, "bootstrap_resamples": 1000, "confidence": 0.95},
    )
    if write_report:
        comparison.out_dir = Path(out_dir or "hone-compare")
        write_compare_report(comparison, comparison.out_dir)
        say(f"report: {comparison.out_dir / 'report.html'}")
    return comparison
