"""Preference data: Honing's / TRL's prompt-chosen-rejected (plain, conversational, implicit prompt) and
OpenAI's DPO format (current and older key names) read into the same pairs; `hone data validate` finds the
preference problems, each on its line."""

from __future__ import annotations

import json

import pytest

from honing.data.conversation import Message, PreferencePair
from honing.data.formats import load_examples
from honing.data.validate import validate_file
from honing.errors import DataError

USER = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}]
EXPECTED = PreferencePair((Message("system", "Be brief."), Message("user", "Capital of France?")), "Paris.",
                          "I don't know.")
RECORDS = {
    "trl_conversational": {"prompt": USER, "chosen": [{"role": "assistant", "content": "Paris."}],
                           "rejected": [{"role": "assistant", "content": "I don't know."}]},
    "trl_implicit_prompt": {"chosen": USER + [{"role": "assistant", "content": "Paris."}],
                            "rejected": USER + [{"role": "assistant", "content": "I don't know."}]},
    "openai_dpo": {"input": {"messages": USER, "tools": [], "parallel_tool_calls": True},
                   "preferred_output": [{"role": "assistant", "content": "Paris."}],
                   "non_preferred_output": [{"role": "assistant", "content": "I don't know."}]},
    "openai_dpo_older_names": {"input": {"messages": USER},
                               "preferred_completion": [{"role": "assistant", "content": "Paris."}],
                               "non_preferred_completion": [{"role": "assistant", "content": "I don't know."}]},
}


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_every_preference_format_reads_into_the_same_pair(tmp_path, name):
    (pair,) = load_examples(_write(tmp_path / "p.jsonl", [RECORDS[name]]))
    assert pair == EXPECTED and pair.line == 1


def test_trl_plain_strings(tmp_path):
    (pair,) = load_examples(_write(tmp_path / "p.jsonl", [{"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go."}]))
    assert pair == PreferencePair((Message("user", "Hi?"),), "Hello.", "Go.")


@pytest.mark.parametrize("record,category,text", [
    ({"chosen": USER + [{"role": "assistant", "content": "a"}],
      "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "b"}]},
     "missing_field", "share every turn but the last"),
    ({"prompt": "Hi", "chosen": "Hello"}, "missing_field", "'rejected'"),
    ({"input": {"messages": USER}, "preferred_output": [{"role": "assistant", "content": "a"}]}, "missing_field",
     "'non_preferred_output'"),
    ({"input": "text", "preferred_output": "a", "non_preferred_output": "b"}, "invalid_field", "'input' must be"),
])
def test_malformed_pairs_are_named(tmp_path, record, category, text):
    report = validate_file(_write(tmp_path / "p.jsonl", [record]), min_examples=1)
    assert (1, category) in report.lines()
    assert any(text in p.message for p in report.problems)


def _pairs(n, start=0):
    return [{"prompt": f"Question number {i}?", "chosen": f"A careful answer to {i}.",
             "rejected": f"Whatever, {i}."} for i in range(start, start + n)]


def test_validate_finds_each_preference_problem_on_its_line(tmp_path, smol_tokenizer):
    rows = _pairs(3)
    rows.append({"prompt": "Same?", "chosen": "Same answer.", "rejected": "Same answer."})  # line 4
    rows.append({"prompt": "Empty?", "chosen": "  ", "rejected": "No."})  # line 5
    rows.append({"prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
                 "chosen": "More.", "rejected": "Less."})  # line 6: prompt ends with the assistant
    rows.append({"prompt": "Long?", "chosen": "ok " * 10, "rejected": "word " * 200})  # line 7: rejected too long
    rows.append(dict(rows[0]))  # line 8: a duplicate of line 1
    path = _write(tmp_path / "prefs.jsonl", rows)
    report = validate_file(path, tokenizer=smol_tokenizer, max_length=64)
    found = report.lines()
    assert (4, "identical_pair") in found
    assert (5, "empty_content") in found
    assert (6, "prompt_not_ending_with_user") in found
    assert (7, "too_long") in found
    assert (8, "duplicate") in found
    assert (None, "too_few_examples") in found
    long_msg = next(p.message for p in report.problems if p.category == "too_long")
    assert "rejected side" in long_msg and "chosen side" not in long_msg
    few = next(p.message for p in report.problems if p.category == "too_few_examples")
    assert "preference pair(s)" in few
    # Control: the clean pairs raise nothing of the kind.
    clean = validate_file(_write(tmp_path / "clean.jsonl", _pairs(12)), tokenizer=smol_tokenizer, max_length=64)
    assert clean.ok and not clean.warnings, clean.lines()


def test_training_reader_stops_at_the_first_bad_pair_with_its_line(tmp_path):
    rows = _pairs(2) + [{"prompt": [{"role": "system", "content": "x"}], "chosen": "a", "rejected": "b"}]
    with pytest.raises(DataError, match=r"p.jsonl:3: prompt_not_ending_with_user"):
        load_examples(_write(tmp_path / "p.jsonl", rows))


def test_mixed_preference_formats_in_one_file(tmp_path):
    rows = [RECORDS["trl_conversational"], RECORDS["openai_dpo"]]
    report = validate_file(_write(tmp_path / "p.jsonl", rows), min_examples=1)
    assert (2, "mixed_formats") in report.lines()
