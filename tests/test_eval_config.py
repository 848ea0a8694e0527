"""EvalConfig: one schema for `hone eval` flags, a YAML file, --set overrides and the API; bad keys and values
are errors that name the key; baselines come from the registry; the task from hone_eval.json or the data."""

from __future__ import annotations

import json

import pytest
import typer
from eval_helpers import animal_split, one_torch_thread  # noqa: F401

from honing.cli.evaluate import eval_cmd
from honing.config import describe_fields
from honing.errors import ConfigError, DataError
from honing.evaluate import baselines as B
from honing.evaluate.config import EvalConfig, eval_config, validate_eval_config
from honing.evaluate.metrics import TASKS
from honing.evaluate.runner import _prepare


def test_defaults_and_every_key_documented():
    c = EvalConfig(model="m", data="d.jsonl")
    assert c.baselines == ["zero-shot", "few-shot", "rag"] and c.metric == "auto" and c.k_shots == 3
    assert c.max_new_tokens is None and c.threads == "auto" and c.report and c.forgetting
    rows = describe_fields(EvalConfig)
    assert {k for k, _, _ in rows} == {f.alias or name for name, f in EvalConfig.model_fields.items()}
    assert "schema" in {k for k, _, _ in rows}
    assert all(len(doc) > 15 for _, _, doc in rows)
    # The metric choices are the metrics module's tasks (the Literal is spelled out for Python 3.10).
    assert EvalConfig.model_fields["metric"].annotation.__args__ == ("auto", *TASKS)
    assert set(EvalConfig.model_fields["baselines"].default) == set(B.REGISTRY)


@pytest.mark.parametrize("raw, message", [
    ({"baselines": ["zero-shot", "telepathy"]}, ("baselines: unknown baseline(s) telepathy: choose from zero-shot, "
                                                "few-shot, rag")),
    ({"baselines": ["rag", "rag"]}, "baselines: a baseline is listed twice"),
    ({"metric": "bleu"}, "metric: Input should be"),
    ({"k_shot": 2}, "k_shot: unknown key (did you mean k_shots?)"),
    ({"k_shots": 0}, "k_shots: Input should be greater than or equal to 1"),
    ({"threads": "many"}, "threads: must be a positive integer or 'auto'"),
    ({"dtype": "fp8"}, "dtype: Input should be"),
    ({"data": " "}, "data: must not be empty"),
])
def test_bad_settings_name_the_key(raw, message):
    with pytest.raises(ConfigError, match="invalid configuration") as e:
        validate_eval_config({"model": "m", "data": "d.jsonl", **raw})
    assert message in str(e.value)


def test_missing_model_is_named():
    with pytest.raises(ConfigError, match="model: required key is missing"):
        eval_config(data="d.jsonl")


def test_yaml_then_values_then_overrides(tmp_path):
    f = tmp_path / "eval.yaml"
    f.write_text("model: runs/a\ndata: eval.jsonl\nbaselines: [zero-shot]\nk_shots: 5\nschema: s.json\n")
    c = eval_config(f, ["max_new_tokens=12", "forgetting=false"], k_shots=2, metric=None)
    assert (c.model, c.baselines, c.k_shots, c.max_new_tokens, c.forgetting) == ("runs/a", ["zero-shot"], 2, 12, False)
    assert c.schema_ == "s.json" and c.settings_dict()["schema"] == "s.json"  # the key users write is schema
    # The old evaluate() keyword names and Path values, and the CLI's comma-separated baselines.
    old = eval_config(model=tmp_path, data=tmp_path / "e.jsonl", docs_dir=tmp_path, out_dir="o", write_report=False,
                      train_path="t.jsonl", baselines=" zero-shot, rag ,")
    assert (old.docs, old.out, old.report, old.train_data, old.baselines) == (
        str(tmp_path), "o", False, "t.jsonl", ["zero-shot", "rag"])
    assert eval_config(model="m", data="d", baselines="").baselines == []
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: m\ndata: d\nk_shotz: 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml\): k_shotz: unknown key"):
        eval_config(bad)


def test_the_cli_reads_a_config_file_and_lets_flags_win(tmp_path, monkeypatch):
    seen = {}

    def fake_evaluate(*, config, progress):
        seen["config"] = config
        raise typer.Exit(0)

    monkeypatch.setattr("honing.evaluate.evaluate", fake_evaluate)
    f = tmp_path / "eval.yaml"
    f.write_text("model: runs/a\ndata: eval.jsonl\nbaselines: [zero-shot, rag]\nk_shots: 5\n")
    none = {k: None for k in ("model", "data", "baselines", "docs", "train_data", "metric", "schema", "out",
                              "max_examples", "max_new_tokens", "forgetting", "dtype", "device", "threads")}
    with pytest.raises(typer.Exit):
        eval_cmd(**none, config=str(f), overrides=["rag_k=4"], k_shots=2, as_json=False, gate=False, margin=None,
                 production=None)
    c = seen["config"]
    assert (c.model, c.baselines, c.k_shots, c.rag_k) == ("runs/a", ["zero-shot", "rag"], 2, 4)


def test_task_comes_from_the_declaration_then_the_data(tmp_path):
    _train, ev = animal_split(tmp_path)
    say = []
    t = _prepare(eval_config(model="m", data=ev, baselines=[]), say.append)
    assert t.task == "classification" and not say  # detected from the references
    (tmp_path / "hone_eval.json").write_text(json.dumps({"metric": "text"}))
    t = _prepare(eval_config(model="m", data=ev, baselines=[]), say.append)
    assert t.task == "text" and "declared in" in say[-1]
    # An explicit metric wins over the declaration.
    assert _prepare(eval_config(model="m", data=ev, baselines=[], metric="json"), say.append).task == "json"
    (tmp_path / "hone_eval.json").write_text(json.dumps({"metric": "bleu"}))
    with pytest.raises(DataError, match="hone_eval.json: metric 'bleu'"):
        _prepare(eval_config(model="m", data=ev, baselines=[]), say.append)


def test_each_baseline_says_what_it_needs(tmp_path):
    _train, ev = animal_split(tmp_path)
    with pytest.raises(DataError, match="few-shot baseline needs training examples"):
        _prepare(eval_config(model="m", data=ev, baselines=["few-shot"]), print)
    with pytest.raises(DataError, match="RAG baseline needs --docs"):
        _prepare(eval_config(model="m", data=ev, baselines=["rag"]), print)
