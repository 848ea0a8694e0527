"""Drift with the real sentence-embedding model: held-out docstrings (no shift) are judged fine; a request
log where half the inputs are customer-support and cooking questions is judged drifted, with those two
topics as the new clusters."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from honing.errors import DataError
from honing.lifecycle.drift import drift, input_of, read_inputs

DEMO = Path(__file__).resolve().parents[1] / "examples" / "docstring_module"
SUPPORT = ["How do I return my {}?", "My {} arrived broken, can I get a refund?", "Where is my {} order #{}?",
           "Can I change the delivery address for my {} order?", "The {} I bought stopped working after a week."]
PRODUCTS = ["laptop", "phone", "headphones", "coffee maker", "vacuum cleaner", "blender"]
COOKING = ["What is a good recipe for {} soup?", "How long should I bake {} bread?",
           "Can I freeze {} pie?", "What spices go well with roasted {}?"]
FOODS = ["tomato", "pumpkin", "onion", "banana", "carrot", "apple"]


def _lines(path: Path, n: int) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()[:n]]


def _request(row: dict) -> dict:
    """A logged chat request: the training example without its answer, as a client would send it."""
    return {"model": "docstring-v1", "messages": [m for m in row["messages"] if m["role"] != "assistant"]}


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("drift")
    reference = _write(d / "train.jsonl", _lines(DEMO / "train.jsonl", 200))
    held_out = [_request(r) for r in _lines(DEMO / "eval.jsonl", 60)]
    rng = random.Random(0)
    support = [rng.choice(SUPPORT).format(rng.choice(PRODUCTS), rng.randint(1000, 9999)) for _ in range(15)]
    cooking = [rng.choice(COOKING).format(rng.choice(FOODS)) for _ in range(15)]
    shifted = held_out[:30] + [
        {"model": "docstring-v1", "messages": [{"role": "user", "content": q}]} for q in support] + [
        # OpenAI Batch API lines with content parts: the other log shape the reader accepts
        {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "docstring-v1", "messages": [{"role": "user", "content": [{"type": "text", "text": q}]}]}}
        for i, q in enumerate(cooking)]
    return {"reference": reference, "same": _write(d / "same.jsonl", held_out),
            "shifted": _write(d / "shifted.jsonl", shifted), "support": set(support), "cooking": set(cooking), "dir": d}


def test_held_out_inputs_from_the_training_distribution_are_fine(files):
    r = drift(files["reference"], files["same"], write_report=False)
    assert (r.n_reference, r.n_current) == (200, 60)
    assert r.recommendation == "fine", r.summary()
    assert r.far_share < 0.15 and r.p_value > 0.01
    assert abs(r.current_median - r.reference_median) < 0.05


def test_a_shift_to_new_topics_is_detected_and_clustered(files):
    out = files["dir"] / "report"
    r = drift(files["reference"], files["shifted"], out_dir=out)
    assert r.recommendation == "retrain", r.summary()
    assert r.far_share >= 0.4 and r.p_value < 1e-6
    new = files["support"] | files["cooking"]
    # The two largest clusters are the two new topics, each pure; their keywords name the topic.
    top = r.clusters[:2]
    topics = []
    for cl in top:
        assert all(ex in new for ex in cl["examples"]), cl
        topics.append("support" if all(ex in files["support"] for ex in cl["examples"]) else "cooking")
        assert all(ex in files[topics[-1]] for ex in cl["examples"]), cl
    assert sorted(topics) == ["cooking", "support"]
    assert sum(cl["size"] for cl in r.clusters) == r.far_count
        # Every shifted input is far; at most a few in-distribution ones are.
    assert r.far_count - sum(cl["size"] for cl in r.clusters if set(cl["examples"]) <= new) <= 5
    report = json.loads((out / "drift.json").read_text())
    assert report["recommendation"] == "retrain" and report["far_count"] == r.far_count
    assert {"clusters", "threshold", "expected_share", "p_value", "method", "files"} <= set(report)
    assert (out / "report.html").read_text().count("<img") == 1 and (out / "report.md").is_file()


def test_inputs_are_read_from_every_log_and_data_shape(tmp_path):
    assert input_of({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "a"},
                                  {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]}) == "c"
    assert input_of({"body": {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}}) == "hi"
    assert input_of({"request": {"messages": [{"role": "user", "content": "q"}]}, "response": {}}) == "q"
    assert input_of({"conversations": [{"from": "human", "value": "v"}, {"from": "gpt", "value": "w"}]}) == "v"
    assert input_of({"prompt": "p", "completion": "c"}) == "p"
    assert input_of({"instruction": "do", "input": "this", "output": "x"}) == "do\nthis"
    assert input_of({"input": "responses api"}) == "responses api"
    assert input_of({"prompt": [{"role": "user", "content": "pref"}], "chosen": "a", "rejected": "b"}) == "pref"
    assert input_of({"messages": [{"role": "assistant", "content": "only"}]}) is None
    txt = tmp_path / "requests.txt"
    txt.write_text("first question\n\nsecond question\n")
    assert read_inputs(txt) == ["first question", "second question"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "ok"}]}\n{"messages": [\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2"):
        read_inputs(bad)
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"messages": [{"role": "assistant", "content": "x"}]}\n')
    with pytest.raises(DataError, match="no inputs found"):
        read_inputs(empty)
