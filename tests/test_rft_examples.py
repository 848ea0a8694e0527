"""The reinforcement fine-tuning examples (examples/rft_*): files reproducible from their build scripts, RFT rows
valid against their grader, graders scoring known answers as intended (in the sandbox), recipes valid.
Nothing is trained here; the measured effect is in each example's README."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from honing.config import build_config
from honing.data.rft import read_rft
from honing.graders import GraderError, Sample, load_grader
from honing.graders.sandbox import check_available

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = {"rft_signature_json": REPO / "examples" / "rft_signature_json",
            "rft_word_count": REPO / "examples" / "rft_word_count"}


def _sandbox_missing() -> bool:
    try:
        check_available(False)
    except GraderError:
        return True
    return False


needs_sandbox = pytest.mark.skipif(_sandbox_missing(), reason="bubblewrap is not installed (scripts/system_deps.sh)")


def _build_module(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_build", EXAMPLES[name] / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _spec(name: str) -> dict:
    return json.loads((EXAMPLES[name] / "grader.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_shipped_files_are_what_build_writes(name):
    assert _build_module(name).main(["--check"]) == 0


@needs_sandbox
@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_rft_rows_are_valid_for_their_grader(name):
    fields = load_grader(_spec(name)).item_fields()
    sizes = {f: len(read_rft(EXAMPLES[name] / f, fields)) for f in ("rft.jsonl", "rft_dev.jsonl", "rft_eval.jsonl")}
    assert sizes == {"rft_signature_json": {"rft.jsonl": 240, "rft_dev.jsonl": 40, "rft_eval.jsonl": 200},
                     "rft_word_count": {"rft.jsonl": 240, "rft_dev.jsonl": 30, "rft_eval.jsonl": 100}}[name]


def test_signature_json_splits_are_disjoint():
    def prompts(f):
        return {json.loads(line)["messages"][-2 if f.startswith("sft") else -1]["content"]
                for line in (EXAMPLES["rft_signature_json"] / f).read_text(encoding="utf-8").splitlines()}

    sft, dev, rft, held_out = (prompts(f) for f in ("sft_train.jsonl", "sft_dev.jsonl", "rft.jsonl", "rft_eval.jsonl"))
    assert dev == prompts("rft_dev.jsonl")
    assert not (sft & rft or sft & dev or rft & dev or held_out & (sft | rft | dev))


def test_word_count_held_out_words_are_unseen():
    def words(f):
        return {json.loads(line)["word"]
                for line in (EXAMPLES["rft_word_count"] / f).read_text(encoding="utf-8").splitlines()}

    assert not words("rft_eval.jsonl") & (words("rft.jsonl") | words("rft_dev.jsonl"))


@needs_sandbox
def test_signature_json_grader_scores_known_answers():
    reference = {"name": "read", "required": ["self"], "optional": {"size": "-1"}, "keyword_only": [],
                 "variadic": []}
    outputs = [json.dumps(reference),                                  # right: 0.2 + 0.8
               json.dumps({**reference, "required": []}),              # 4 of 5 keys: 0.2 + 0.8 x 4/5
               json.dumps({**reference, "name": "not an identifier"}),  # schema-invalid, 4 of 5 keys
               "The function read takes self and size.",               # not JSON
               "[1, 2]"]                                               # JSON, not an object
    with load_grader(_spec("rft_signature_json")) as grader:
        results = grader.grade([Sample(output_text=o, item={"reference": reference}) for o in outputs])
    assert [r.reward for r in results] == pytest.approx([1.0, 0.84, 0.64, 0.0, 0.0])
    assert all(not r.errors for r in results)
    # the recipe's strict grader: 0.1 valid + 0.3 fields + 0.6 exact (all five keys right)
    strict = json.loads((EXAMPLES["rft_signature_json"] / "grader_strict.json").read_text(encoding="utf-8"))
    with load_grader(strict) as grader:
        results = grader.grade([Sample(output_text=o, item={"reference": reference}) for o in outputs])
    assert [r.reward for r in results] == pytest.approx([1.0, 0.34, 0.24, 0.0, 0.0])
    assert all(not r.errors for r in results)


@needs_sandbox
def test_word_count_grader_scores_known_answers():
    item = {"word": "river", "words": 8}
    outputs = ["The old river flows past the quiet town.",     # all three: 1
               "Rivers run.",                                  # word and form, 6 words off: 0.4
               "river river river river river river river river",  # 8 words, but not a sentence: 0
               "The river is long. It is wide and cold.",      # two sentences: 0
               "A sentence of eight words about a lake."]      # form and length, no word: 0.6
    with load_grader(_spec("rft_word_count")) as grader:
        results = grader.grade([Sample(output_text=o, item=item) for o in outputs])
    assert [r.reward for r in results] == pytest.approx([1.0, 0.4, 0.0, 0.0, 0.6])
    assert all(not r.errors for r in results)


@pytest.mark.parametrize("recipe", sorted((REPO / "examples" / "recipes").glob("rft_*.yaml")), ids=lambda p: p.stem)
def test_recipes_are_valid_configs(recipe):
    config = build_config(recipe)
    assert Path(config.data).is_file() and Path(config.eval_data).is_file()
    if config.objective == "grpo":
        assert Path(config.grpo.grader).is_file()
