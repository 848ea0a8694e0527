"""`evaluate()` and `hone eval` end to end on a tiny random model: every approach, the report files,
the fine-tuned adapter path, and clear errors for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from eval_helpers import animal_split, make_run_dir, one_torch_thread, write_docs  # noqa: F401

from honing.errors import ConfigError, DataError
from honing.evaluate import evaluate

HONE = Path(sys.executable).with_name("hone")


@pytest.fixture
def animal_run(tmp_path, tiny_llama_dir):
    train, ev = animal_split(tmp_path)
    run = make_run_dir(tmp_path, tiny_llama_dir, train)
    return run, train, ev, write_docs(tmp_path)


def test_evaluate_writes_a_complete_self_contained_report(animal_run, tmp_path):
    run, _train, ev, docs = animal_run
    seen = []
    result = evaluate(run, ev, docs_dir=docs, k_shots=2, max_new_tokens=4, progress=seen.append)
    assert [a.name for a in result.approaches] == ["zero-shot", "few-shot", "rag", "fine-tuned"]
    assert result.task == "classification" and result.primary == "accuracy" and result.n_examples == 9
    assert result.out_dir == run / "eval"  # default: inside the run directory
    zs, fs, rag, ft = result.approaches
    # Few-shot adds 2 training conversations and RAG adds retrieved text to every prompt.
    assert fs.mean_prompt_tokens > zs.mean_prompt_tokens + 20
    assert rag.mean_prompt_tokens > zs.mean_prompt_tokens + 10
    assert ft.mean_prompt_tokens == zs.mean_prompt_tokens  # the fine-tuned model sees the plain prompt
    assert ft.predictions != zs.predictions  # the random adapter changes the model
    assert set(result.reference_loss) == {"base", "fine-tuned"}
    assert result.reference_loss["base"]["loss"] != result.reference_loss["fine-tuned"]["loss"]
    assert result.forgetting is not None and set(result.forgetting) >= {"before", "after", "flagged", "reasons"}
    assert any("report" in m for m in seen)
    side_by_side = result.samples(3)
    assert 1 <= len(side_by_side) <= 3
    assert all(s["base"] != s["fine-tuned"] and s["reference"] in ("bird", "fish", "mammal") for s in side_by_side)

    files = {p.name for p in result.out_dir.iterdir()}
    assert {"eval.json", "report.md", "report.html"} <= files
    assert not any(name.endswith(".tmp") for name in files)
    page = result.report_html.read_text()
    assert "data:image/png;base64," in page
    assert page.count("<img") == 3  # metric bars, confusion matrix, loss curve
    for external in ("http://", "https://", "<script", "<link"):
        assert external not in page
    data = json.loads(result.eval_json.read_text())
    assert set(data) >= {"approaches", "comparisons", "winner", "verdict", "reference_loss", "forgetting",
                         "samples", "predictions", "task", "primary_metric", "settings"}
    assert data["approaches"]["fine-tuned"]["confusion_matrix"]
    assert len(data["approaches"]["fine-tuned"]["confusion_matrix"]) == 3  # bird, fish, mammal
    assert data["samples"] and "zero-shot" in data["samples"][0] and "fine-tuned" in data["samples"][0]
    md = result.report_md.read_text()
    assert result.verdict in md and "Forgetting" in md
    table = result.summary_table()
    assert data["fine_tuned_vs_zero_shot"]["b"] == "zero-shot"
    for name in ("zero-shot", "few-shot", "rag", "fine-tuned", "forgetting:", "fine-tuned vs zero-shot:"):
        assert name in table


def test_zero_initialized_adapter_answers_exactly_like_the_base_model(tmp_path, tiny_llama_dir):
    train, ev = animal_split(tmp_path)
    run = make_run_dir(tmp_path, tiny_llama_dir, train, random_adapter=False)
    result = evaluate(run, ev, baselines=["zero-shot"], forgetting=False, write_report=False, max_new_tokens=4)
    zs, ft = result.approaches
    assert ft.predictions == zs.predictions
    assert result.reference_loss["fine-tuned"]["loss"] == pytest.approx(result.reference_loss["base"]["loss"], rel=1e-6)
    # Identical per-example scores: the paired difference is exactly 0, so the verdict calls no winner.
    assert result.comparisons[0]["difference"]["low"] == result.comparisons[0]["difference"]["high"] == 0.0
    assert result.verdict.startswith("no clear winner")
    assert result.samples() == []  # no example where the two differ
    vs = result.fine_tuned_vs_zero_shot()
    assert vs["difference"]["estimate"] == 0.0 and not vs["significant"]
    assert "not significant" in result.summary_table()
    assert result.out_dir is None


def test_base_model_reference_evaluates_only_the_baselines(tmp_path, tiny_llama_dir):
    train, ev = animal_split(tmp_path)
    out = tmp_path / "out"
    result = evaluate(tiny_llama_dir, ev, train_path=train, baselines=["zero-shot", "rag"], out_dir=out,
                      max_examples=4, max_new_tokens=3)
    assert [a.name for a in result.approaches] == ["zero-shot", "rag"]
    assert result.forgetting is None and result.n_examples == 4
    assert (out / "report.html").is_file()


def test_bad_inputs_raise_clear_errors(tmp_path, tiny_llama_dir):
    _train, ev = animal_split(tmp_path)
    with pytest.raises(ConfigError, match="unknown baseline"):
        evaluate(tiny_llama_dir, ev, baselines=["zero-shot", "telepathy"])
    with pytest.raises(DataError, match="few-shot needs training examples|few-shot baseline needs"):
        evaluate(tiny_llama_dir, ev, baselines=["few-shot"])
    with pytest.raises(DataError, match="not found"):
        evaluate(tiny_llama_dir, tmp_path / "missing.jsonl")
    with pytest.raises(ConfigError, match="metric"):
        evaluate(tiny_llama_dir, ev, metric="bleu")
    with pytest.raises(DataError, match="not a directory"):
        evaluate(tiny_llama_dir, ev, baselines=["rag"], docs_dir=tmp_path / "nodocs", write_report=False,
                 max_new_tokens=2)


def _hone(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}  # tiny model: see one_torch_thread
    exe = [str(HONE)] if HONE.exists() else [sys.executable, "-c", "from honing.cli import main; main()"]
    return subprocess.run([*exe, *args], check=False, capture_output=True, text=True, env=env, timeout=300)


def test_cli_eval_json_end_to_end(animal_run, tmp_path):
    run, _train, ev, _docs = animal_run
    out = tmp_path / "cli-report"
    p = _hone("eval", "--model", str(run), "--data", str(ev), "--baselines", "zero-shot", "--json",
              "--no-forgetting", "--max-new-tokens", "3", "--out", str(out))
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert set(data["approaches"]) == {"zero-shot", "fine-tuned"}
    assert data["examples"] == 9 and data["forgetting"] is None
    assert json.loads((out / "eval.json").read_text())["verdict"] == data["verdict"]
    bad = _hone("eval", "--model", str(run), "--data", str(tmp_path / "nope.jsonl"))
    assert bad.returncode == 2
    assert "nope.jsonl" in bad.stderr and "Traceback" not in bad.stderr
