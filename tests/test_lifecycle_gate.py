"""The release gate as a pure function of evaluation results (eval.json's shape), on constructed results
whose paired differences are known: every rule passes a good candidate and fails a bad one with a reason
that names the rule and the numbers."""

from __future__ import annotations

import pytest

from honing.config import GateConfig, build_config
from honing.errors import ConfigError
from honing.lifecycle.gate import evaluate_gate, gate_config

N = 200


def scores(n_right: int, n: int = N, offset: int = 0) -> list[float]:
    """Per-example accuracy: examples offset..offset+n_right-1 (cyclically) right, the rest wrong."""
    return [1.0 if (i - offset) % n < n_right else 0.0 for i in range(n)]


def forgetting(ppl_before=10.0, ppl_after=10.5, qa_before=0.6, qa_after=0.55) -> dict:
    return {"before": {"perplexity": ppl_before, "qa_accuracy": qa_before},
            "after": {"perplexity": ppl_after, "qa_accuracy": qa_after},
            "perplexity_change": ppl_after / ppl_before - 1, "qa_accuracy_change": qa_after - qa_before,
            "thresholds": {"perplexity_rise": 0.20, "qa_accuracy_drop": 0.10}}


def eval_json(per: dict[str, list[float]], forget: dict | None = None, sha: str = "abc") -> dict:
    """The parts of eval.json the gate reads."""
    return {"primary_metric": "accuracy", "examples": N, "examples_sha256": sha,
            "approaches": {k: {"primary_value": sum(v) / len(v)} for k, v in per.items()},
            "per_example": {k: {"accuracy": v} for k, v in per.items()},
            "forgetting": forgetting() if forget is None else forget}


GOOD = {"zero-shot": scores(10), "few-shot": scores(120), "fine-tuned": scores(160)}  # +20 points over few-shot


def test_a_clearly_better_model_passes_every_check():
    v = evaluate_gate(eval_json(GOOD))
    assert v.passed and v.reasons == []
    assert [c.name for c in v.checks] == ["cheaper approaches", "forgetting"]
    cheaper = v.checks[0]
    assert cheaper.numbers["best_cheaper"] == "few-shot"
    d = cheaper.numbers["differences"]["few-shot"]
    # Nested right-sets: fine-tuned is right wherever few-shot is, so the difference is exactly 40/200.
    assert d["estimate"] == pytest.approx(0.20)
    assert 0.13 < d["low"] < 0.20 < d["high"] < 0.27
    assert "beats the best cheaper approach, fine-tuned accuracy 0.800 vs few-shot 0.600: +20.0 points" in cheaper.detail


def test_not_beating_the_best_cheaper_approach_fails_with_its_name():
    tie = {"zero-shot": scores(10), "few-shot": scores(150, offset=7), "fine-tuned": scores(155)}
    v = evaluate_gate(eval_json(tie))
    assert not v.passed
    assert len(v.reasons) == 1 and v.reasons[0].startswith("does not beat few-shot by the margin")
    assert "the lower bound must exceed +0.0 points" in v.reasons[0]


def test_the_margin_is_applied_to_the_lower_confidence_bound():
    # +20 points with a lower bound near +14: passes a 10-point margin, fails a 15-point one.
    assert evaluate_gate(eval_json(GOOD), {"margin": 0.10}).passed
    v = evaluate_gate(eval_json(GOOD), {"margin": 0.15})
    assert not v.passed and "+15.0 points" in v.reasons[0]


def test_gate_baselines_limit_which_cheaper_approaches_count():
    per = {"zero-shot": scores(10), "few-shot": scores(170), "fine-tuned": scores(160)}
    assert not evaluate_gate(eval_json(per)).passed
    assert evaluate_gate(eval_json(per), {"baselines": ["zero-shot"]}).passed
    v = evaluate_gate(eval_json({"fine-tuned": scores(160)}))
    assert not v.passed and "no cheaper approach" in v.reasons[0]


def test_worse_than_production_fails_and_a_tie_within_tolerance_passes():
    cand = eval_json(GOOD)
    worse = eval_json({"fine-tuned": scores(175)})  # production 0.875 > candidate 0.800
    v = evaluate_gate(cand, {"production": "runs/prod"}, production=worse)
    assert not v.passed
    assert v.reasons == [v.checks[1].detail]
    assert v.reasons[0].startswith("cannot rule out being worse than production by more than the tolerance: "
                                   "candidate accuracy 0.800 vs production "
                                   "(runs/prod) 0.875: -7.5 points")
    same = eval_json({"fine-tuned": scores(160)})
    v = evaluate_gate(cand, {"production": "runs/prod", "production_tolerance": 0.02}, production=same)
    assert v.passed, v.summary()  # identical per-example scores: difference exactly 0, CI [0, 0]
    assert v.checks[1].numbers["difference"]["low"] == 0.0


def test_production_must_be_evaluated_on_the_same_examples():
    cand = eval_json(GOOD)
    other = eval_json({"fine-tuned": scores(100)}, sha="different")
    v = evaluate_gate(cand, {"production": "runs/prod"}, production=other)
    assert not v.passed and "other examples" in v.reasons[0]
    v = evaluate_gate(cand, {"production": "runs/prod"})
    assert not v.passed and "named but not evaluated" in v.reasons[0]


def test_forgetting_beyond_the_thresholds_fails():
    v = evaluate_gate(eval_json(GOOD, forget=forgetting(ppl_after=13.0, qa_after=0.40)))
    assert not v.passed
    assert v.reasons == [("general-text perplexity up +30% (threshold 20%); general QA accuracy down 20.0 points "
                         "(threshold 10)")]
    # The gate's own thresholds override the evaluation's.
    assert evaluate_gate(eval_json(GOOD, forget=forgetting(ppl_after=13.0, qa_after=0.40)),
                         {"max_perplexity_rise": 0.5, "max_qa_drop": 0.25}).passed


def test_unmeasured_forgetting_fails_unless_the_gate_skips_it():
    no_forgetting = eval_json(GOOD, forget={})
    v = evaluate_gate(no_forgetting)
    assert not v.passed and v.reasons[0].startswith("forgetting was not measured")
    v = evaluate_gate(no_forgetting, GateConfig(forgetting=False))
    assert v.passed and [c.name for c in v.checks] == ["cheaper approaches"]


def test_an_eval_without_per_example_scores_fails_instead_of_guessing():
    ev = eval_json(GOOD)
    del ev["per_example"]
    v = evaluate_gate(ev)
    assert not v.passed and "per-example scores" in v.reasons[0]


def test_verdict_json_shape():
    d = evaluate_gate(eval_json(GOOD), {"margin": 0.15}).to_dict()
    assert set(d) == {"passed", "reasons", "checks", "gate"}
    assert d["passed"] is False and d["gate"]["margin"] == 0.15
    assert {c["name"] for c in d["checks"]} == {"cheaper approaches", "forgetting"}
    assert all({"name", "passed", "detail"} <= set(c) for c in d["checks"])


def test_gate_section_in_a_recipe_is_validated_like_every_key(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: train.jsonl\ngate:\n  margin: 0.03\n  baselines: [few-shot, rag]\n")
    cfg = build_config(recipe)
    assert cfg.gate.margin == 0.03 and cfg.gate.baselines == ["few-shot", "rag"]
    recipe.write_text("data: train.jsonl\ngate:\n  margn: 0.03\n")
    with pytest.raises(ConfigError, match=r"gate\.margn: unknown key \(did you mean gate\.margin\?\)"):
        build_config(recipe)
    with pytest.raises(ConfigError, match=r"gate\.baselines"):
        gate_config({"baselines": ["telepathy"]})


def test_the_walkthrough_recipe_is_valid_and_carries_a_gate():
    from pathlib import Path

    recipe = Path(__file__).resolve().parents[1] / "examples" / "maintenance" / "recipe.yaml"
    cfg = build_config(recipe)
    assert cfg.gate == GateConfig(margin=0.0, production_tolerance=0.02, forgetting=True)
    assert cfg.data.endswith("v1.jsonl") and cfg.eval_data.endswith("eval.jsonl")
