"""``retrain()``: rerun a past run's resolved recipe on a new base model and/or a new data version, then
prove the result on the same eval set.

Flow: the past run's ``config`` from run.json, with the new ``model`` / ``data`` / ``--set`` overrides,
validated as any recipe is (``auto`` values resolve again for the new data) -> data diff of the old and
new data versions -> :func:`honing.train.train` into a new run directory -> :func:`compare_runs` (old
run vs new run, baselines on the new run's base model) -> the gate (``gate:`` of the config; the old run
is the production run unless the gate names another) -> reports in ``NEW_RUN/retrain`` and the new
run's evaluation in ``NEW_RUN/eval``, the verdict in its run.json.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from honing.config import TrainConfig, parse_override, validate_config
from honing.errors import ConfigError, ModelError
from honing.evaluate import baselines as B
from honing.lifecycle.compare import Comparison, compare_runs
from honing.lifecycle.datadiff import DataDiff, diff_data
from honing.lifecycle.gate import GateVerdict, check_release, evaluate_gate, record_verdict
from honing.rundir import RunDir


@dataclass
class RetrainResult:
    old_run: str
    new_run: str
    changes: dict  # key -> new value (model, data, and --set keys)
    config: dict  # the new run's configuration as validated
    data_diff: DataDiff | None
    comparison: Comparison
    gate: GateVerdict
    notes: list[str]
    out_dir: Path | None = None

    def summary(self) -> str:
        parts = [f"retrained {self.old_run} -> {self.new_run} ("
                 + ", ".join(f"{k}={v}" for k, v in self.changes.items()) + ")"]
        parts += [f"note: {n}" for n in self.notes]
        if self.data_diff is not None:
            parts += ["", self.data_diff.summary()]
        parts += ["", self.comparison.summary_table(), "", self.gate.summary()]
        if self.out_dir is not None:
            parts.append(f"report: {self.out_dir / 'report.html'}")
        return "\n".join(parts)

    def to_dict(self) -> dict:
        return {"old_run": self.old_run, "new_run": self.new_run, "changes": self.changes, "config": self.config,
                "notes": self.notes, "data_diff": self.data_diff.to_dict() if self.data_diff else None,
                "comparison": self.comparison.to_dict(), "gate": self.gate.to_dict(),
                "files": {} if self.out_dir is None else
                {k: str(self.out_dir / n) for k, n in (("report_html", "report.html"), ("report_md", "report.md"),
                                                       ("retrain_json", "retrain.json"))}}


def _set_dotted(d: dict, key: str, value) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise ConfigError(f"{key}: '{p}' is not a section")
    d[parts[-1]] = value


def new_config(record: dict, run_dir: str, model: str | None, data: str | None, eval_data: str | None,
               out: str | None, overrides: Sequence[str]) -> tuple[TrainConfig, dict]:
    """(validated config for the rerun, the changed keys). The past run's config is the recipe."""
    past = record.get("config")
    if not isinstance(past, dict):
        raise ModelError(f"{run_dir}/run.json has no resolved configuration (config) to rerun")
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in past.items()}
    changes: dict = {}
    for key, value in (("model", model), ("data", data), ("eval_data", eval_data)):
        if value is not None:
            raw[key] = changes[key] = str(value)
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(raw, key, value)
        changes[key] = value
    if not changes:
        raise ConfigError("retrain: nothing changes; give a new model and/or data (or another configuration key)")
    raw["out"] = str(out) if out else f"{str(run_dir).rstrip('/')}-retrain"
    config = validate_config(raw, f"{run_dir}/run.json config with the changes")
    if not config.eval_data:
        raise ConfigError(f"{run_dir} trained without an eval_data file (a split of its data), so the two runs "
                          "have no common eval set: give eval_data")
    return config, changes


def _data_diff(record: dict, config: TrainConfig, notes: list[str]) -> DataDiff | None:
    """Diff of the past run's training file and the new one, when both can be read as they were."""
    old = ((record.get("dataset") or {}).get("train") or {})
    old_path = old.get("path") or (record.get("config") or {}).get("data")
    if not old_path or not Path(old_path).is_file():
        notes.append(f"no data diff: the past run's training file {old_path} is not there any more")
        return None
    diff = diff_data(old_path, config.data, config.data_format)
    if old.get("sha256") and diff.old_sha256 != old["sha256"]:
        notes.append(f"{old_path} changed since the past run trained on it (sha256 differs): the data diff "
                     "compares today's file")
    return diff


def retrain(
    run_dir: str | Path,
    *,
    model: str | None = None,
    data: str | None = None,
    eval_data: str | None = None,
    out: str | Path | None = None,
    overrides: Sequence[str] = (),
    baselines: Sequence[str] = B.BASELINES,
    docs_dir: str | Path | None = None,
    max_examples: int | None = None,
    forgetting: bool = True,
    report_dir: str | Path | None = None,
    train_progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> RetrainResult:
    """Rerun ``run_dir``'s recipe with the changes, compare old and new on the same eval set, gate."""
    from honing.evaluate.report import write_reports
    from honing.train import train

    say = log or (lambda _m: None)
    old = RunDir(run_dir)
    if not old.is_finished():
        raise ModelError(f"{run_dir}: not a finished Honing run (nothing to compare the retrained model with)")
    record = old.record()
    config, changes = new_config(record, str(run_dir), model, data, eval_data, out, overrides)
    notes: list[str] = []
    diff = _data_diff(record, config, notes) if "data" in changes else None
    if diff is not None:
        say(diff.summary())

    say(f"training {config.out} (the recipe of {run_dir} with {', '.join(changes)} changed)")
    result = train(config, progress=train_progress, log=say)
    new_dir = result.run_dir

    comparison = compare_runs([run_dir, new_dir], config.eval_data, baselines=baselines, docs_dir=docs_dir,
                              max_examples=max_examples, forgetting=forgetting, progress=say, write_report=False)
    gate = config.gate
    candidate = comparison.candidate.result
    # The run being replaced is production unless the gate names another one.
    if gate.production is None or Path(gate.production).resolve() == Path(run_dir).resolve():
        gate = gate.model_copy(update={"production": str(run_dir)})
        verdict = evaluate_gate(candidate, gate, comparison.runs[0].result, production_label=comparison.runs[0].label)
    else:
        verdict = check_release(candidate, gate, progress=say)

    candidate.out_dir = RunDir(new_dir).eval_dir
    write_reports(candidate, candidate.out_dir)
    record_verdict(new_dir, verdict, candidate.out_dir)
    out = RetrainResult(old_run=str(run_dir), new_run=str(new_dir), changes=changes, config=config.resolved_dict(),
                        data_diff=diff, comparison=comparison, gate=verdict, notes=notes)
    from honing.lifecycle.report import write_retrain_report

    out.out_dir = Path(report_dir) if report_dir else Path(new_dir) / "retrain"
    write_retrain_report(out, out.out_dir)
    return out
