"""The example datasets beyond the demo (examples/unicode_category, signature_json, code_summary):
every answer is right by the source's own rule, the splits are disjoint, `hone data validate` is clean,
the evaluation knows what to measure (hone_eval.json), and the build reproduces the files bit for bit."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import subprocess
import sys
import unicodedata
from collections import Counter
from pathlib import Path

import jsonschema
import pytest

from honing.data.curate import find_leaks, prompt_key
from honing.data.formats import load_examples
from honing.data.render import render_conversation
from honing.data.validate import validate_file
from honing.errors import DataError
from honing.evaluate.config import eval_config
from honing.evaluate.dataset import read_eval_items, read_task_declaration
from honing.evaluate.metrics import detect_task, score
from honing.evaluate.runner import _resolve_task

REPO = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO / "scripts" / "build_task_datasets.py"
NAMES = ("unicode_category", "signature_json", "code_summary")
METRICS = {"unicode_category": "classification", "signature_json": "json", "code_summary": "text"}


def _load_build_module():
    spec = importlib.util.spec_from_file_location("build_task_datasets", BUILD_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load_build_module()


def _declared_task(eval_path, metric, schema, say):
    """(metric, schema) evaluation settles on before reading references (the declaration fills in auto)."""
    return _resolve_task(eval_config(model="m", data=eval_path, metric=metric, schema=schema), [], say)


def _info(name: str) -> dict:
    return json.loads((REPO / "examples" / name / "build_info.json").read_text(encoding="utf-8"))


def _same_python(name: str) -> bool:
    return sys.version.split()[0] == _info(name)["python"]


@pytest.fixture(scope="module")
def splits() -> dict[str, dict]:
    # format="chat" makes honing's own reader reject anything that is not OpenAI chat JSONL.
    return {name: {split: load_examples(REPO / "examples" / name / f"{split}.jsonl", format="chat")
                   for split in ("train", "eval")} for name in NAMES}


def _pairs(examples) -> list[tuple[str, str]]:
    return [(ex.messages[1].content, ex.messages[2].content) for ex in examples]


# ------------------------------------------------------------------------------------ every dataset
@pytest.mark.parametrize("name", NAMES)
def test_chat_shape_sizes_and_disjoint_splits(splits, name):
    train, held_out = splits[name]["train"], splits[name]["eval"]
    info = _info(name)
    assert (len(train), len(held_out)) == (info["train"], info["eval"])
    assert 600 <= len(train) <= 1200 and 150 <= len(held_out) <= 240
    for ex in train + held_out:
        assert [m.role for m in ex.messages] == ["system", "user", "assistant"], ex.line
    assert len({ex.messages[0].content for ex in train + held_out}) == 1  # one system prompt per task
    assert find_leaks(train, held_out) == []
    for examples in (train, held_out):
        assert max(Counter(prompt_key(ex) for ex in examples).values()) == 1


@pytest.mark.parametrize("name", NAMES)
def test_hone_data_validate_is_clean(name, smol_tokenizer):
    folder = REPO / "examples" / name
    report = validate_file(folder / "train.jsonl", format="auto", tokenizer=smol_tokenizer, max_length=2048,
                           epochs=1, eval_path=folder / "eval.jsonl")
    assert report.ok and report.errors == [] and report.warnings == [], report.to_json()


@pytest.mark.parametrize("name", NAMES)
def test_examples_are_short_enough_for_a_cpu(splits, smol_tokenizer, name):
    # Render a sample (every 7th example): the build bounds the texts, this checks the bound in tokens.
    examples = (splits[name]["train"] + splits[name]["eval"])[::7]
    lengths = [len(render_conversation(smol_tokenizer, ex)) for ex in examples]
    assert max(lengths) <= 200, name
    assert sum(lengths) / len(lengths) <= 140, name


@pytest.mark.parametrize("name", NAMES)
def test_the_declared_metric_is_what_eval_uses_and_auto_detection_alone_would_differ(name):
    eval_path = REPO / "examples" / name / "eval.jsonl"
    declared, where = read_task_declaration(eval_path)
    assert declared["metric"] == METRICS[name] and where == eval_path.parent / "hone_eval.json"
    metric, schema = _declared_task(eval_path, "auto", None, lambda _msg: None)
    assert metric == METRICS[name]
    assert (schema is not None) == (name == "signature_json")
    # An explicit choice wins over the declaration.
    assert _declared_task(eval_path, "text", None, lambda _msg: None)[0] == "text"
    if name == "unicode_category":
        # Control: 24 distinct labels are more than auto-detection takes for a label set, which is why
        # the dataset declares its metric.
        assert detect_task([it.reference for it in read_eval_items(eval_path)]) == "text"


def test_a_broken_declaration_is_an_error_naming_the_file(tmp_path):
    (tmp_path / "eval.jsonl").write_text("")
    (tmp_path / "hone_eval.json").write_text("{not json")
    with pytest.raises(DataError, match="hone_eval.json"):
        read_task_declaration(tmp_path / "eval.jsonl")
    (tmp_path / "hone_eval.json").write_text('{"metric": "bleu"}')
    with pytest.raises(DataError, match="metric 'bleu'"):
        _declared_task(tmp_path / "eval.jsonl", "auto", None, lambda _msg: None)
    (tmp_path / "hone_eval.json").unlink()
    assert read_task_declaration(tmp_path / "eval.jsonl") == ({}, None)


@pytest.mark.parametrize("name", NAMES)
def test_readme_states_source_licence_and_sizes_and_a_recipe_ships(name):
    readme = (REPO / "examples" / name / "README.md").read_text(encoding="utf-8")
    info = _info(name)
    assert "licence" in readme.lower() and info["python"] in readme
    assert f"{info['train']} examples" in readme and f"{info['eval']} held-out" in readme
    assert "zero-shot" in readme and "few-shot" in readme  # the baselines to beat
    assert (REPO / "examples" / "recipes" / f"{name}_lora.yaml").is_file()


# ---------------------------------------------------------------------- answers follow their source
def test_unicode_answers_are_the_characters_categories(splits):
    examples = splits["unicode_category"]["train"] + splits["unicode_category"]["eval"]
    labels = {ex.messages[2].content for ex in examples}
    assert labels == set(build.CATEGORIES.values()) and len(labels) == 24
    listed = examples[0].messages[0].content.rsplit("one of: ", 1)[1].rstrip(".").split(", ")
    assert set(listed) == labels
    readme = (REPO / "examples" / "unicode_category" / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^Labels \((\d+)\): (.+)$", readme, re.MULTILINE)
    assert match and set(re.findall(r"`([^`]+)`", match.group(2))) == labels == set(
        _info("unicode_category")["labels"])
    if unicodedata.unidata_version != _info("unicode_category")["unicode"]:
        pytest.skip("another Unicode version: names and categories may differ")
    for prompt, label in _pairs(examples):
        code, name = prompt.split(" ", 1)
        char = chr(int(code.removeprefix("U+"), 16))
        assert unicodedata.name(char) == name
        assert build.CATEGORIES[unicodedata.category(char)] == label, prompt


def test_signature_answers_follow_the_schema_and_the_signature(splits):
    schema = json.loads((REPO / "examples" / "signature_json" / "schema.json").read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    examples = splits["signature_json"]["train"] + splits["signature_json"]["eval"]
    for prompt, answer in _pairs(examples):
        facts = json.loads(answer)
        assert validator.is_valid(facts), (prompt, list(validator.iter_errors(facts)))
        # The answer is exactly what the prompt's own syntax says (re-parsed independently of the build).
        node = ast.parse(f"def {prompt}: pass").body[0]
        assert build.signature_facts(node) == facts, prompt
    # Control: a schema-valid answer that swaps a required parameter for an optional one is caught by
    # the task's primary metric (json_match), and the schema rejects a misspelled key.
    good = json.dumps({"name": "f", "required": ["a"], "optional": {"b": "1"}, "keyword_only": [], "variadic": []})
    wrong = json.dumps({"name": "f", "required": ["a", "b"], "optional": {}, "keyword_only": [], "variadic": []})
    scores = score([wrong, good], [good, good], "json", schema=schema)
    assert scores.per_example["schema_valid"] == [1.0, 1.0] and scores.per_example["json_match"] == [0.0, 1.0]
    assert not validator.is_valid({**json.loads(good), "kwonly": []})
    rich = sum(build.is_rich(a) for _, a in _pairs(examples)) / len(examples)
    assert abs(rich - build.RICH_SHARE) < 0.01


def test_code_summary_answers_are_house_style_and_prompts_are_code_without_docstrings(splits):
    examples = splits["code_summary"]["train"] + splits["code_summary"]["eval"]
    for code, summary in _pairs(examples):
        assert build.house_summary(summary) == summary, summary
        node = ast.parse(code).body[0]
        assert isinstance(node, ast.FunctionDef) and ast.get_docstring(node) is None, code
        assert len(code) <= build.CODE_MAX_CHARS
    # Near-twins share a summary; the build keeps each summary on one side so few-shot cannot copy it.
    train_answers = {build.normalized(a) for _, a in _pairs(splits["code_summary"]["train"])}
    assert not any(build.normalized(a) in train_answers for _, a in _pairs(splits["code_summary"]["eval"]))
    # Control: what the house style rejects.
    for bad in ("Returns the value.", "The value of x.", "Return the value", "Return x. Then y.", "Do it."):
        assert build.house_summary(bad) is None, bad


# ------------------------------------------------------------------------------------ reproducible
def test_build_reproduces_the_shipped_files_bit_for_bit():
    if not all(_same_python(name) for name in NAMES):
        pytest.skip(f"the standard library differs across Python versions; built with {_info(NAMES[0])['python']}")
    # A fresh interpreter, as the demo's test does: nothing this session imported can change what the
    # build reads.
    done = subprocess.run([sys.executable, str(BUILD_SCRIPT), "--check"], check=False, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("up to date") == len(NAMES), done.stdout
