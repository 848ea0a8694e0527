"""The release gate: may this fine-tuned model ship?

A pure function of evaluation results (eval.json as ``hone eval`` writes it, or an
:class:`~honing.evaluate.EvalResult`), so the CLI (``hone eval --gate``, ``hone retrain``), a CI job and
the service's promotion step all decide the same way. Three checks, each one stated with its numbers:

1. **beats the cheaper approaches**: for every cheaper approach evaluated (zero-shot, few-shot, RAG on
   the base model; ``gate.baselines`` narrows them), the lower bound of the paired-bootstrap CI of
   (fine-tuned - approach) in the primary metric must exceed ``gate.margin``. A fine-tune that is not
   shown better than a good prompt is not worth its upkeep.
2. **not worse than production** (when a production result is given): non-inferiority, the lower CI
   bound of (candidate - production) must be above ``-gate.production_tolerance``. Both must have been
   evaluated on the same examples (checked by the examples' fingerprint).
3. **forgetting**: general-text perplexity rise and general-QA drop within the thresholds (by default the
   evaluation's own, ``honing.evaluate.forgetting``). Not measured counts as failed: a gate that cannot
   see a risk must not wave it through (set ``gate.forgetting: false`` to skip it knowingly).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from honing.config import GateConfig
from honing.evaluate.bootstrap import paired_difference_ci

FINE_TUNED = "fine-tuned"
SEED = 0  # the bootstrap's seed: a verdict is reproducible
RESAMPLES = 1000


@dataclass
class GateCheck:
    name: str  # "cheaper approaches" | "production" | "forgetting"
    passed: bool
    detail: str  # one sentence with the numbers
    numbers: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "passed": self.passed, "detail": self.detail, **self.numbers}


@dataclass
class GateVerdict:
    passed: bool
    checks: list[GateCheck]
    gate: dict  # the settings it was judged by

    @property
    def reasons(self) -> list[str]:
        """Why it failed: the detail of every failed check (empty when it passed)."""
        return [c.detail for c in self.checks if not c.passed]

    def summary(self) -> str:
        head = "gate: PASSED" if self.passed else "gate: FAILED"
        return "\n".join([head] + [f"  [{'ok' if c.passed else 'FAIL'}] {c.name}: {c.detail}" for c in self.checks])

    def to_dict(self) -> dict:
        return {"passed": self.passed, "reasons": self.reasons, "checks": [c.to_dict() for c in self.checks],
                "gate": self.gate}

    @classmethod
    def from_dict(cls, d: dict) -> GateVerdict:
        """A verdict as :meth:`to_dict` wrote it (run.json ``gate``, eval/gate.json)."""
        checks = [GateCheck(c["name"], bool(c["passed"]), c.get("detail", ""),
                            {k: v for k, v in c.items() if k not in ("name", "passed", "detail")})
                  for c in d.get("checks", [])]
        return cls(bool(d.get("passed")) and all(c.passed for c in checks), checks, d.get("gate") or {})


def _as_eval_dict(result) -> dict:
    """eval.json's shape from either a dict (already that) or an EvalResult."""
    return result if isinstance(result, dict) else result.to_dict(per_example=True)


def _gate_config(gate) -> GateConfig:
    if gate is None:
        return GateConfig()
    return gate if isinstance(gate, GateConfig) else GateConfig.model_validate(gate)


def _pts(x: float) -> str:
    # Metrics in [0, 1] read best as points; the sign is always shown.
    return f"{x * 100:+.1f} points"


def _scores(ev: dict, name: str, primary: str) -> list[float] | None:
    return ((ev.get("per_example") or {}).get(name) or {}).get(primary)


def _difference(a: list[float], b: list[float], confidence: float) -> dict:
    return paired_difference_ci(a, b, resamples=RESAMPLES, confidence=confidence, seed=SEED).to_dict()


def check_cheaper(ev: dict, gate: GateConfig) -> GateCheck:
    """Fine-tuned vs every cheaper approach: lower CI bound of the difference > margin."""
    primary = ev.get("primary_metric", "accuracy")
    approaches = ev.get("approaches") or {}
    ft = _scores(ev, FINE_TUNED, primary)
    if FINE_TUNED not in approaches or ft is None:
        return GateCheck("cheaper approaches", False, "no fine-tuned model in this evaluation (or eval.json has no "
                         "per-example scores: evaluate again with this version of Honing)")
    wanted = [n for n in approaches if n != FINE_TUNED and (gate.baselines is None or n in gate.baselines)]
    if not wanted:
        which = ", ".join(gate.baselines) if gate.baselines else "any"
        return GateCheck("cheaper approaches", False, f"no cheaper approach ({which}) was evaluated: nothing shows "
                         "the fine-tune beats a prompt (evaluate with baselines zero-shot, few-shot, rag)")
    diffs = {}
    for name in wanted:
        other = _scores(ev, name, primary)
        if other is None or len(other) != len(ft):
            return GateCheck("cheaper approaches", False, f"no per-example scores for {name} in this evaluation")
        diffs[name] = _difference(ft, other, gate.confidence)
    best = max(wanted, key=lambda n: approaches[n]["primary_value"])
    failing = [n for n in wanted if not diffs[n]["low"] > gate.margin]
    ft_value = approaches[FINE_TUNED]["primary_value"]
    numbers = {"primary_metric": primary, "margin": gate.margin, "best_cheaper": best,
               "fine_tuned": ft_value, "differences": diffs}
    conf = f"{gate.confidence:.0%}"

    def describe(n: str) -> str:
        d = diffs[n]
        return (f"fine-tuned {primary} {ft_value:.3f} vs {n} {approaches[n]['primary_value']:.3f}: "
                f"{_pts(d['estimate'])} ({conf} CI {_pts(d['low'])} to {_pts(d['high'])})")

    if failing:
        worst = min(failing, key=lambda n: diffs[n]["low"])
        return GateCheck("cheaper approaches", False, f"does not beat {worst} by the margin: {describe(worst)}; "
                         f"the lower bound must exceed {_pts(gate.margin)}", numbers)
    return GateCheck("cheaper approaches", True, f"beats the best cheaper approach, {describe(best)}; lower bound "
                     f"above the margin {_pts(gate.margin)}", numbers)


def check_production(ev: dict, production: dict | None, gate: GateConfig, label: str) -> GateCheck:
    """Candidate vs the production model on the same examples: non-inferiority within the tolerance."""
    primary = ev.get("primary_metric", "accuracy")
    if production is None:
        return GateCheck("production", False, f"production run {label} was named but not evaluated")
    if production.get("primary_metric", primary) != primary:
        return GateCheck("production", False, f"production was scored by {production.get('primary_metric')}, "
                         f"the candidate by {primary}")
    if ev.get("examples_sha256") and production.get("examples_sha256") != ev.get("examples_sha256"):
        return GateCheck("production", False, f"production run {label} was evaluated on other examples than the "
                         "candidate (examples fingerprints differ): evaluate both on the same eval set")
    cand, prod = _scores(ev, FINE_TUNED, primary), _scores(production, FINE_TUNED, primary)
    if cand is None or prod is None or len(cand) != len(prod):
        return GateCheck("production", False, f"no paired per-example scores for the candidate and {label}")
    d = _difference(cand, prod, gate.confidence)
    c_val, p_val = sum(cand) / len(cand), sum(prod) / len(prod)
    text = (f"candidate {primary} {c_val:.3f} vs production ({label}) {p_val:.3f}: {_pts(d['estimate'])} "
            f"({gate.confidence:.0%} CI {_pts(d['low'])} to {_pts(d['high'])})")
    passed = d["low"] > -gate.production_tolerance
    bound = f"{_pts(-gate.production_tolerance)}"
    detail = (f"{text}; not worse beyond the tolerance (lower bound above {bound})" if passed else
              f"cannot rule out being worse than production by more than the tolerance: {text}; the lower bound "
              f"must be above {bound}")
    return GateCheck("production", passed, detail, {"production": label, "candidate_value": c_val,
                                                     "production_value": p_val, "difference": d,
                                                     "tolerance": gate.production_tolerance})


def check_forgetting(ev: dict, gate: GateConfig) -> GateCheck:
    f = ev.get("forgetting")
    if not f:
        return GateCheck("forgetting", False, "forgetting was not measured (evaluate with forgetting on, or "
                         "set gate.forgetting: false to skip this check)")
    thresholds = f.get("thresholds") or {}
    max_rise = gate.max_perplexity_rise if gate.max_perplexity_rise is not None else thresholds["perplexity_rise"]
    max_drop = gate.max_qa_drop if gate.max_qa_drop is not None else thresholds["qa_accuracy_drop"]
    rise, drop = f["perplexity_change"], -f["qa_accuracy_change"]
    problems = []
    if rise > max_rise:
        problems.append(f"general-text perplexity up {rise:+.0%} (threshold {max_rise:.0%})")
    if drop > max_drop:
        problems.append(f"general QA accuracy down {drop * 100:.1f} points (threshold {max_drop * 100:.0f})")
    numbers = {"perplexity_change": rise, "qa_accuracy_change": -drop,
               "thresholds": {"perplexity_rise": max_rise, "qa_accuracy_drop": max_drop}}
    if problems:
        return GateCheck("forgetting", False, "; ".join(problems), numbers)
    return GateCheck("forgetting", True, f"general-text perplexity {rise:+.0%} (limit +{max_rise:.0%}), general QA "
                     f"{-drop * 100:+.1f} points (limit -{max_drop * 100:.0f})", numbers)


def evaluate_gate(eval_result, gate=None, production=None, production_label: str | None = None) -> GateVerdict:
    """Judge one evaluation (eval.json dict or EvalResult) against ``gate`` (GateConfig, dict or None =
    defaults). ``production``: the production model's evaluation on the same examples (eval.json dict
    or EvalResult), needed when ``gate.production`` is set. Pure: reads nothing, writes nothing."""
    g = _gate_config(gate)
    ev = _as_eval_dict(eval_result)
    checks = [check_cheaper(ev, g)]
    if g.production is not None or production is not None:
        prod = _as_eval_dict(production) if production is not None else None
        checks.append(check_production(ev, prod, g, production_label or g.production or "production"))
    if g.forgetting:
        checks.append(check_forgetting(ev, g))
    return GateVerdict(all(c.passed for c in checks), checks, g.model_dump(mode="json"))


# ------------------------------------------------------------------------------------------ for a run
def gate_config_of_run(run_dir, **overrides) -> GateConfig:
    """The run's ``gate:`` section (from its recipe, recorded in run.json), with non-None ``overrides``."""
    from honing.rundir import RunDir

    section = ((RunDir(run_dir).record().get("config") or {}).get("gate")) or {}
    section = {**section, **{k: v for k, v in overrides.items() if v is not None}}
    return gate_config(section, f"gate of {run_dir}")


def gate_config(section: dict, source: str = "gate") -> GateConfig:
    """Validate a ``gate:`` section; errors name the key as ``gate.<key>`` (ConfigError)."""
    from honing.config import validate_config

    # Validated as part of a whole configuration, so messages use the recipe's dotted keys.
    return validate_config({"data": "-", "gate": section}, source).gate


def check_release(result, gate: GateConfig, progress=None) -> GateVerdict:
    """The gate for an :class:`~honing.evaluate.EvalResult` of a run: evaluates ``gate.production`` on the
    same examples with the same decoding settings (fine-tuned model only), then :func:`evaluate_gate`."""
    production = None
    if gate.production is not None:
        from honing.evaluate.runner import evaluate

        if progress:
            progress(f"gate: evaluating the production run {gate.production} on the same examples")
        production = evaluate(gate.production, result.eval_path, baselines=(), forgetting=False, write_report=False,
                              max_examples=result.n_examples, max_new_tokens=result.settings["max_new_tokens"],
                              threads=result.settings["threads"], progress=progress)
    return evaluate_gate(result, gate, production)


def record_verdict(run_dir, verdict: GateVerdict, eval_dir=None) -> None:
    """Keep the verdict with the run: ``gate`` in run.json (what the service checks before promoting) and
    gate.json beside the evaluation report."""
    import json
    import time
    from pathlib import Path

    from honing.fileio import write_text_atomic
    from honing.rundir import RunDir

    data = {**verdict.to_dict(), "checked": time.time()}
    RunDir(run_dir).update_record(gate=data)
    if eval_dir is not None:
        Path(eval_dir).mkdir(parents=True, exist_ok=True)
        write_text_atomic(Path(eval_dir) / "gate.json", json.dumps(data, indent=2) + "\n")


def gate_evaluation(result, *, margin: float | None = None, production: str | None = None,
                    progress=None) -> GateVerdict:
    """``hone eval --gate``: the gate of the evaluated run (its recipe's ``gate:`` section with these
    overrides), checked on ``result`` and kept with the run (run.json ``gate``, eval/gate.json)."""
    from honing.rundir import RunDir

    overrides = {"margin": margin, "production": production}
    is_run = RunDir.is_run(result.model_ref)
    gate = (gate_config_of_run(result.model_ref, **overrides) if is_run else
            gate_config({k: v for k, v in overrides.items() if v is not None}))
    verdict = check_release(result, gate, progress=progress)
    if is_run:
        record_verdict(result.model_ref, verdict, result.out_dir)
    return verdict
