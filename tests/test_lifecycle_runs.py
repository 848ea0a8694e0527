"""compare, retrain and the gate end to end on real (tiny) training runs: a tiny random Llama trained a few
steps on data version 1, retrained on version 2 (two corrected labels, three more examples) through
`hone retrain`, compared with `hone compare`, and gated with `hone eval --gate` (exit 1 with the reason,
exit 0 with a lenient margin)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from eval_helpers import ANIMALS, chat_record, one_torch_thread, write_jsonl  # noqa: F401
from train_helpers import build_tiny_model_dir
from typer.testing import CliRunner

from honing.cli import app

HONE = Path(sys.executable).with_name("hone")


def _quiet(_msg):
    pass


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(workdir, v1 run, data v2, eval file): v1 = 5 animals per class with two wrong labels."""
    from honing.train import build_config, train

    d = tmp_path_factory.mktemp("lifecycle")
    build_tiny_model_dir(d / "tiny")
    v1, v2, ev = [], [], []
    for label, names in ANIMALS.items():
        for i, name in enumerate(names):
            (v1 if i < 5 else ev if i >= 6 else v2).append(chat_record(f"What is a {name}?", label))
    v2 = v1 + v2  # version 2: version 1 plus one more animal per class ...
    v1 = list(v1)
    v1[0] = chat_record("What is a dog?", "fish")  # ... and version 1 had two wrong labels
    v1[5] = chat_record("What is a eagle?", "mammal")
    write_jsonl(d / "v1.jsonl", v1)
    write_jsonl(d / "v2.jsonl", v2)
    write_jsonl(d / "eval.jsonl", ev)
    cfg = build_config(values={"model": str(d / "tiny"), "data": str(d / "v1.jsonl"), "eval_data": str(d / "eval.jsonl"),
                               "out": str(d / "v1"), "max_steps": 3, "batch_size": 4, "learning_rate": 5e-3,
                               "dtype": "fp32", "tensorboard": False, "seed": 0})
    train(cfg, log=_quiet)
    return d


@pytest.fixture(scope="module")
def retrained(runs):
    """`hone retrain v1 --data v2.jsonl` with a lenient gate (the tiny model learns nothing in 3 steps)."""
    result = CliRunner().invoke(app, [
        "retrain", str(runs / "v1"), "--data", str(runs / "v2.jsonl"), "--out", str(runs / "v2"),
        "--baselines", "zero-shot", "--set", "gate.margin=-1", "--set", "gate.production_tolerance=1",
        "--set", "gate.forgetting=false", "--json", "--quiet"])
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout)


def test_retrain_reruns_the_recipe_on_the_new_data_and_reports_diff_comparison_and_gate(runs, retrained):
    r = retrained
    assert r["old_run"] == str(runs / "v1") and r["new_run"] == str(runs / "v2")
    assert r["changes"] == {"data": str(runs / "v2.jsonl"), "gate.margin": -1, "gate.production_tolerance": 1,
                            "gate.forgetting": False}
    # The past run's resolved recipe, only the changed keys differ.
    assert r["config"]["max_steps"] == 3 and r["config"]["learning_rate"] == 5e-3 and r["config"]["seed"] == 0
    diff = r["data_diff"]
    assert (diff["added"], diff["removed"], diff["changed"], diff["unchanged"]) == (3, 0, 2, 13)
    assert sorted((c["old"], c["new"]) for c in diff["answer_changes"]) == [("fish", "mammal"), ("mammal", "bird")]

    c = r["comparison"]
    assert [run["label"] for run in c["runs"]] == ["v1", "v2"]
    assert c["examples"] == 6 and c["primary_metric"] == "accuracy"
    assert list(c["baselines"]["approaches"]) == ["zero-shot"]
    assert [(d["a"], d["b"]) for d in c["differences"]] == [("v2", "v1"), ("v1", "zero-shot"), ("v2", "zero-shot")]
    for d in c["differences"]:
        assert d["difference"]["low"] <= d["difference"]["estimate"] <= d["difference"]["high"]
    assert set(c["config_differences"]) == {"data", "gate.margin", "gate.production_tolerance", "gate.forgetting"}
    assert {"train_data", "train_sha256", "train_examples"} <= set(c["lineage_differences"])
    assert c["lineage_differences"]["train_examples"] == {"v1": 15, "v2": 18}
    for run in c["runs"]:
        assert run["cost"]["steps"] == 3 and run["cost"]["trained_tokens"] > 0 and run["cost"]["wall_seconds"] > 0
        assert run["forgetting"]["thresholds"] == {"perplexity_rise": 0.2, "qa_accuracy_drop": 0.1}

    g = r["gate"]
    assert g["passed"] is True and g["reasons"] == []
    assert [ch["name"] for ch in g["checks"]] == ["cheaper approaches", "production"]
    assert g["gate"]["production"] == str(runs / "v1")  # the replaced run is production
    v2 = runs / "v2"
    assert json.loads((v2 / "run.json").read_text())["gate"]["passed"] is True
    ev = json.loads((v2 / "eval" / "eval.json").read_text())
    assert set(ev["per_example"]) == {"zero-shot", "fine-tuned"} and len(ev["examples_sha256"]) == 64
    assert (v2 / "eval" / "gate.json").is_file()
    html = (v2 / "retrain" / "report.html").read_text()
    assert "Gate: PASSED" in html and "2 changed" in html and html.count("<img") >= 1
    assert json.loads((v2 / "retrain" / "retrain.json").read_text())["gate"]["passed"] is True


def _hone(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    exe = [str(HONE)] if HONE.exists() else [sys.executable, "-c", "from honing.cli import main; main()"]
    return subprocess.run([*exe, *args], check=False, capture_output=True, text=True, env=env, timeout=600)


def test_eval_gate_exit_status_and_reason(runs, retrained):
    """The tiny model does not beat zero-shot: `hone eval --gate` exits 1 saying so; a margin of -1
    (anything goes) exits 0. The control shows the failure comes from the margin rule."""
    args = ["eval", "--model", str(runs / "v2"), "--data", str(runs / "eval.jsonl"), "--baselines", "zero-shot",
            "--no-forgetting", "--threads", "1", "--out", str(runs / "gate-eval"), "--gate"]
    p = _hone(*args, "--margin", "0")
    assert p.returncode == 1, p.stderr
    assert "gate: FAILED" in p.stdout and "does not beat zero-shot by the margin" in p.stdout
    assert json.loads((runs / "v2" / "run.json").read_text())["gate"]["passed"] is False

    ok = CliRunner().invoke(app, [*args, "--margin", "-1", "--json"])
    assert ok.exit_code == 0, ok.output
    gate = json.loads(ok.stdout)["gate"]
    assert gate["passed"] is True and gate["gate"]["margin"] == -1
    assert json.loads((runs / "gate-eval" / "gate.json").read_text())["passed"] is True


def test_compare_two_runs_json_and_report(runs, retrained):
    out = runs / "cmp"
    res = CliRunner().invoke(app, ["compare", str(runs / "v1"), str(runs / "v2"), "--data", str(runs / "eval.jsonl"),
                                   "--baselines", "zero-shot", "--no-forgetting", "--out", str(out), "--json"])
    assert res.exit_code == 0, (res.output, res.exception)
    c = json.loads(res.stdout)
    assert set(c) >= {"eval_data", "examples", "examples_sha256", "task", "primary_metric", "runs", "baselines",
                      "differences", "config_differences", "lineage_differences", "settings", "files"}
    # The same models on the same examples as in retrain: the same scores.
    before = {run["label"]: run["primary_value"] for run in retrained["comparison"]["runs"]}
    assert {run["label"]: run["primary_value"] for run in c["runs"]} == before
    assert all(run["forgetting"] is None for run in c["runs"])
    assert json.loads((out / "compare.json").read_text())["differences"] == c["differences"]
    md = (out / "report.md").read_text()
    assert "## Training cost" in md and "| v2 - v1 |" in md


def test_retrain_and_compare_refuse_bad_input_before_any_work(runs):
    from honing.errors import ConfigError, ModelError
    from honing.lifecycle.compare import compare_runs
    from honing.lifecycle.retrain import retrain

    with pytest.raises(ConfigError, match="nothing changes"):
        retrain(runs / "v1")
    with pytest.raises(ConfigError, match=r"gate\.margn: unknown key \(did you mean gate\.margin\?\)"):
        retrain(runs / "v1", overrides=["gate.margn=1"])
    with pytest.raises(ModelError, match="not a Honing run directory"):
        retrain(runs / "missing", data=str(runs / "v2.jsonl"))
    with pytest.raises(ConfigError, match="named twice"):
        compare_runs([runs / "v1", runs / "v1"], runs / "eval.jsonl")
    assert not (runs / "v1-retrain").exists()  # nothing half-written
