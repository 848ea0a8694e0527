"""The shipped demo dataset (examples/docstring_module): format, sizes, labels, no leakage, reproducible."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from honing.data.conversation import Conversation
from honing.data.curate import find_leaks, normalize, prompt_key
from honing.data.formats import load_examples
from honing.data.render import render_conversation

REPO = Path(__file__).resolve().parents[1]
TASK = REPO / "examples" / "docstring_module"
BUILD_SCRIPT = REPO / "scripts" / "build_example_data.py"


def _load_build_module():
    spec = importlib.util.spec_from_file_location("build_example_data", BUILD_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load_build_module()


@pytest.fixture(scope="module")
def splits() -> dict[str, list[Conversation]]:
    # format="chat" makes honing's own reader reject anything that is not OpenAI chat JSONL.
    return {name: load_examples(TASK / f"{name}.jsonl", format="chat") for name in ("train", "eval")}


def _label(example: Conversation) -> str:
    return example.messages[-1].content


def _readme_labels() -> list[str]:
    """The labels the README promises, from its line ``Labels (N): `a`, `b`, ...``."""
    match = re.search(r"^Labels \((\d+)\): (.+)$", (TASK / "README.md").read_text(encoding="utf-8"), re.MULTILINE)
    assert match, "README.md has no 'Labels (N): ...' line"
    labels = re.findall(r"`([^`]+)`", match.group(2))
    assert len(labels) == int(match.group(1))
    return labels


def test_every_line_is_system_user_assistant_chat(splits):
    for name, examples in splits.items():
        raw_lines = (TASK / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
        assert len(examples) == len(raw_lines), f"{name}: some lines did not parse as chat"
        for ex in examples:
            assert [m.role for m in ex.messages] == ["system", "user", "assistant"], (name, ex.line)
            assert ex.messages[0].content == build.SYSTEM_PROMPT, (name, ex.line)
            assert len(ex.messages[1].content.split()) >= build.MIN_WORDS, (name, ex.line)


def test_sizes_and_balance(splits):
    train, held_out = Counter(map(_label, splits["train"])), Counter(map(_label, splits["eval"]))
    assert 600 <= sum(train.values()) <= 1500
    assert 150 <= sum(held_out.values()) <= 300
    # Eval is exactly stratified; train is capped per label and no label is starved.
    assert set(held_out.values()) == {build.EVAL_PER_LABEL}
    assert max(train.values()) == build.TRAIN_PER_LABEL
    assert min(train.values()) >= build.TRAIN_PER_LABEL // 2, train


def test_labels_are_exactly_what_the_readme_and_system_prompt_say(splits):
    labels = set(_readme_labels())
    assert labels == set(build.LABELS)
    assert {_label(ex) for ex in splits["train"]} == labels
    assert {_label(ex) for ex in splits["eval"]} == labels
    listed = build.SYSTEM_PROMPT.rsplit("one of: ", 1)[1].rstrip(".").split(", ")
    assert set(listed) == labels


def test_no_leakage_and_no_duplicates(splits):
    assert find_leaks(splits["train"], splits["eval"]) == []
    for name, examples in splits.items():
        keys = Counter(prompt_key(ex) for ex in examples)
        assert max(keys.values()) == 1, f"{name} has a repeated (normalized) prompt"


def test_no_prompt_names_its_own_label(splits):
    # The build drops such docstrings: the task is inferring the module, not copying a word.
    for name, examples in splits.items():
        for ex in examples:
            assert not build.names_label(ex.messages[1].content, _label(ex)), (name, ex.line)


def test_examples_are_short_enough_for_a_cpu_demo(splits, smol_tokenizer):
    lengths = [len(render_conversation(smol_tokenizer, ex)) for ex in splits["train"] + splits["eval"]]
    assert max(lengths) <= 200
    assert 60 <= sum(lengths) / len(lengths) <= 120  # README quotes the mean (~89 tokens)


def test_reference_docs_cover_every_label_and_hold_no_eval_prompt(splits):
    docs = {p.stem: normalize(p.read_text(encoding="utf-8")) for p in (TASK / "docs").glob("*.md")}
    assert set(docs) == set(build.LABELS)
    assert all(len(text.split()) >= 50 for text in docs.values())
    for ex in splits["eval"]:
        prompt = normalize(ex.messages[1].content)
        assert not any(prompt in text for text in docs.values()), ex.line


def test_clean_cuts_long_docstrings_and_rejects_short_ones():
    assert build.clean("Too short.") is None
    assert build.clean("Return the   thing\nof x.\n\nDetails follow here.") == "Return the thing of x."
    long = " ".join(f"w{i}" for i in range(100))
    assert build.clean(long) == " ".join(f"w{i}" for i in range(build.MAX_WORDS)) + " ..."
    assert build.names_label("Return the OS error", "os") and not build.names_label("Return costs", "os")


def test_build_reproduces_the_shipped_files_bit_for_bit():
    recorded = json.loads((TASK / "build_info.json").read_text(encoding="utf-8"))["python"]
    if sys.version.split()[0] != recorded:
        pytest.skip(f"docstrings differ across Python versions; the files were built with {recorded}")
    # A fresh interpreter: the runtime half of the build reads module attributes, and the modules the
    # test session has already imported (logging.handlers, email.*, ...) would change what it sees.
    done = subprocess.run([sys.executable, str(BUILD_SCRIPT), "--check"], check=False, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "up to date" in done.stdout
