"""`hone data validate`: a table of bad files, each with the exact (line, category) list it must produce;
token statistics checked against independent renderings; leakage; bounded memory; the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from honing.data.formats import CATEGORIES
from honing.data.render import render_conversation
from honing.data.stats import TRAIN_TOKENS_PER_SECOND
from honing.data.validate import MAX_PROBLEMS_PER_CATEGORY, validate_file

REPO = Path(__file__).resolve().parents[1]
HONE = REPO / ".venv" / "bin" / "hone"
SYSTEM = {"role": "system", "content": "You answer questions about fruit."}


def chat_line(i: int, **extra) -> str:
    """A valid, unique chat example."""
    return json.dumps({"messages": [SYSTEM, {"role": "user", "content": f"Question number {i}?"},
                                    {"role": "assistant", "content": f"Answer number {i} is here."}], **extra})


def msgs(*messages, **extra) -> str:
    return json.dumps({"messages": list(messages), **extra})


U = {"role": "user", "content": "What colour is a lemon?"}
A = {"role": "assistant", "content": "A ripe lemon is yellow."}
PAD = [chat_line(1000 + i) for i in range(10)]  # ten valid examples: no too_few_examples unless intended


def good(fmt: str, i: int) -> str:
    return json.dumps({
        "completion": {"prompt": f"Prompt {i}", "completion": f"Completion number {i}."},
        "alpaca": {"instruction": f"Instruction {i}", "input": "", "output": f"Output number {i}."},
        "sharegpt": {"conversations": [{"from": "system", "value": "Be kind."},
                                       {"from": "human", "value": f"Hi {i}"},
                                       {"from": "gpt", "value": f"Hello number {i}."}]},
        "preference": {"prompt": f"Prompt {i}", "chosen": f"Good reply {i}.", "rejected": f"Bad reply {i}."},
        "text": {"text": f"Document number {i} about fruit."},
    }[fmt])


def padded(fmt: str, *lines: str) -> list[str]:
    return list(lines) + [good(fmt, 100 + i) for i in range(10)]


# (id, file lines (str) or raw bytes, expected [(line, category), ...] in report order)
CASES = [
    ("invalid_json", ['{"messages": [', *PAD], [(1, "invalid_json")]),
    ("invalid_json_trailing_comma", [PAD[0], '{"messages": [],}', *PAD[1:]], [(2, "invalid_json")]),
    ("nan_is_not_json", ['{"messages": NaN}', *PAD], [(1, "invalid_json")]),
    ("nested_too_deeply", ["[" * 100_000 + "]" * 100_000, *PAD], [(1, "invalid_json")]),
    ("not_an_object", ["[1, 2]", '"just a string"', "null", "42", *PAD],
     [(1, "not_an_object"), (2, "not_an_object"), (3, "not_an_object"), (4, "not_an_object")]),
    ("missing_messages", ["{}", *PAD], [(1, "missing_messages")]),
    ("messages_not_a_list", ['{"messages": "hello"}', *PAD], [(1, "invalid_messages")]),
    ("empty_messages", [*PAD[:3], '{"messages": []}', *PAD[3:]], [(4, "empty_messages")]),
    ("message_not_an_object", [msgs("hi", A), *PAD], [(1, "invalid_message")]),
    ("missing_role", [msgs({"content": "hi"}, A), *PAD], [(1, "missing_role")]),
    ("missing_content", [msgs({"role": "user"}, A), *PAD], [(1, "missing_content")]),
    ("null_content", [msgs({"role": "user", "content": None}, A), *PAD], [(1, "missing_content")]),
    ("unknown_role", [msgs({"role": "robot", "content": "42"}, A), *PAD], [(1, "unknown_role")]),
    ("role_not_a_string", [msgs({"role": 3, "content": "hi"}, A), *PAD], [(1, "unknown_role")]),
    ("unknown_top_level_key", [msgs(U, A, tool_choice="auto"), *PAD], [(1, "unknown_key")]),
    ("unknown_message_key", [msgs({**U, "foo": 1}, A), *PAD], [(1, "unknown_key")]),
    ("empty_content", [msgs({"role": "user", "content": "  \n "}, A), *PAD], [(1, "empty_content")]),
    ("content_not_text", [msgs({"role": "user", "content": 5}, A), *PAD], [(1, "invalid_content")]),
    ("unpaired_surrogate", [msgs({"role": "user", "content": "\ud800"}, A), *PAD], [(1, "invalid_unicode")]),
    ("no_assistant_turn", [*PAD[:5], msgs(SYSTEM, U), *PAD[5:]], [(6, "no_assistant_turn")]),
    ("not_ending_with_assistant", [msgs(SYSTEM, U, A, U), *PAD], [(1, "not_ending_with_assistant")]),
    ("invalid_weights", [msgs(SYSTEM, U, {**A, "weight": 2}), msgs(SYSTEM, {**U, "weight": 1}, A),
                         msgs(SYSTEM, U, {**A, "weight": "1"}), msgs(SYSTEM, U, {**A, "weight": True}), *PAD],
     [(1, "invalid_weight"), (2, "invalid_weight"), (3, "invalid_weight"), (4, "invalid_weight")]),
    ("nothing_trained", [msgs(SYSTEM, U, {**A, "weight": 0}), *PAD], [(1, "no_trained_turn")]),
    ("every_problem_of_one_line", [msgs({"content": "x"}, {"role": "robot", "content": ""}, {"role": "user"}),
                                   *PAD],
     [(1, "missing_role"), (1, "unknown_role"), (1, "empty_content"), (1, "missing_content")]),
    ("exact_duplicate", [PAD[0], *PAD, PAD[3]], [(2, "duplicate"), (12, "duplicate")]),
    ("near_duplicate", [*PAD, chat_line(1004).replace("Question", "QUESTION  ")], [(11, "near_duplicate")]),
    ("not_utf8", [PAD[0].encode(), b'{"messages": "\xff\xfe"}', *(p.encode() for p in PAD[1:])],
     [(2, "not_utf8")]),
    ("bom_is_stripped", [b"\xef\xbb\xbf" + PAD[0].encode(), *(p.encode() for p in PAD[1:])], []),
    ("bom_inside_concatenated_file", [PAD[0], "\ufeff" + PAD[1], *PAD[2:]], []),
    ("sharegpt_value_not_text", padded("sharegpt", '{"conversations": [{"from": "human", "value": 5}, '
                                                   '{"from": "gpt", "value": "Hello there."}]}'),
     [(1, "invalid_content")]),
    ("crlf_line_endings", b"\r\n".join(p.encode() for p in PAD) + b"\r\n", []),
    ("blank_lines", [PAD[0], "", "   ", *PAD[1:]], [(2, "blank_line"), (3, "blank_line")]),
    ("utf16_file", "\n".join(PAD).encode("utf-16"), [(1, "not_utf8"), (None, "too_few_examples")]),
    ("too_few_examples", PAD[:3], [(None, "too_few_examples")]),
    ("empty_file", b"", [(None, "too_few_examples")]),
    ("mixed_formats", [*PAD, good("completion", 1)], [(11, "mixed_formats")]),
    ("system_not_first", [msgs(U, SYSTEM, A), *PAD], [(1, "system_not_first")]),
    ("short_answer", [msgs(SYSTEM, U, {"role": "assistant", "content": "ok"}), *PAD], [(1, "short_answer")]),
    ("some_without_system", [*PAD, msgs(U, A)], [(11, "no_system_message")]),
    ("none_with_system", [msgs({"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"Reply {i}."})
                          for i in range(10)], [(None, "no_system_message")]),
    ("repeated_answer", [msgs(SYSTEM, {"role": "user", "content": f"q{i}"},
                              {"role": "assistant", "content": "I cannot help with that."}) for i in range(4)] + PAD,
     [(1, "repeated_answer")]),
    ("completion_missing_field", padded("completion", '{"prompt": "Hi"}'), [(1, "missing_field")]),
    ("completion_wrong_type", padded("completion", '{"prompt": "Hi", "completion": 3}'), [(1, "invalid_field")]),
    ("alpaca_empty_output", padded("alpaca", '{"instruction": "Sum 2+2", "output": ""}'), [(1, "empty_content")]),
    ("sharegpt_unknown_from", padded("sharegpt", '{"conversations": [{"from": "bot", "value": "x"}, '
                                                 '{"from": "gpt", "value": "Hello there."}]}'),
     [(1, "unknown_role")]),
    ("preference_missing_rejected", padded("preference", '{"prompt": "Hi", "chosen": "Hello."}'),
     [(1, "missing_field")]),
    ("preference_identical", padded("preference", '{"prompt": "Hi", "chosen": "Same.", "rejected": "Same."}'),
     [(1, "identical_pair")]),
    ("text_empty", padded("text", '{"text": ""}'), [(1, "empty_content")]),
]


def _write(tmp_path: Path, content, name: str = "data.jsonl") -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content and isinstance(content[0], bytes):
        path.write_bytes(b"\n".join(content) + b"\n")
    else:
        path.write_text("\n".join(content) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("content,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_file_reports_exact_lines_and_categories(tmp_path, content, expected):
    report = validate_file(_write(tmp_path, content))
    assert report.lines() == expected
    assert report.ok == (not any(CATEGORIES[c][0] == "error" for _, c in expected))
    json.dumps(report.to_json())  # always serializable


def test_table_is_large_and_covers_the_issue_categories():
    assert len(CASES) >= 25
    covered = {c for case in CASES for _, c in case[2]}
    required = {"invalid_json", "not_an_object", "missing_messages", "empty_messages", "missing_role",
                "missing_content", "unknown_role", "unknown_key", "empty_content", "no_assistant_turn",
                "not_ending_with_assistant", "too_few_examples", "duplicate", "not_utf8", "invalid_weight",
                "no_system_message", "short_answer", "repeated_answer"}
    assert required <= covered


def test_problem_cap_keeps_counts_exact(tmp_path):
    path = _write(tmp_path, ["[]"] * (MAX_PROBLEMS_PER_CATEGORY + 5))
    report = validate_file(path)
    assert report.counts["not_an_object"] == MAX_PROBLEMS_PER_CATEGORY + 5
    assert len([p for p in report.problems if p.category == "not_an_object"]) == MAX_PROBLEMS_PER_CATEGORY
    assert report.to_json()["problems_truncated"] == {"not_an_object": 5}


def test_eval_leakage_reports_eval_lines(tmp_path):
    train = _write(tmp_path, PAD, "train.jsonl")
    # eval line 2 repeats train line 4's question with different case/punctuation and another answer
    leaked = msgs(SYSTEM, {"role": "user", "content": "question NUMBER 1003"}, {"role": "assistant", "content": "Other."})
    ev = _write(tmp_path, [chat_line(5000), leaked, '{"messages": []}'], "eval.jsonl")
    report = validate_file(train, eval_path=ev)
    assert [(p.file, p.line, p.category) for p in report.problems] == [
        (str(ev), 2, "eval_leak"), (str(ev), 3, "empty_messages")]
    assert "line 4" in report.problems[0].message
    assert report.stats["eval_examples"] == 2


def test_token_statistics_match_independent_renderings(tmp_path, smol_tokenizer):
    lines = [msgs(SYSTEM, {"role": "user", "content": "word " * (5 * i + 1)},
                  {"role": "assistant", "content": f"Reply {i}: " + "yes " * i}) for i in range(12)]
    path = _write(tmp_path, lines)
    from honing.data.formats import load_examples

    rendered = [render_conversation(smol_tokenizer, ex) for ex in load_examples(path)]
    lengths = sorted(len(r) for r in rendered)
    max_length = lengths[8]  # exactly three examples are longer
    report = validate_file(path, tokenizer=smol_tokenizer, max_length=max_length, epochs=2)
    long_lines = [i + 1 for i, r in enumerate(rendered) if len(r) > max_length]
    assert len(long_lines) == 3
    assert report.lines() == [(n, "too_long") for n in long_lines]
    s = report.stats
    assert (s["tokens_per_example"]["min"], s["tokens_per_example"]["max"]) == (lengths[0], lengths[-1])
    assert s["truncated_examples"] == 3
    processed = sum(min(len(r), max_length) for r in rendered)
    assert s["processed_tokens_all_epochs"] == 2 * processed
    trained = sum(sum(r.loss_mask[:max_length]) for r in rendered)
    assert s["trained_tokens_all_epochs"] == 2 * trained
    assert s["estimated_training_seconds"] == pytest.approx(2 * processed / TRAIN_TOKENS_PER_SECOND, abs=0.1)
    # each trained span is the reply plus <|im_end|>: more than the reply's own tokens, far fewer than the row
    assert all(0 < sum(r.loss_mask) < len(r) for r in rendered)


def test_preference_pairs_count_both_replies(tmp_path, smol_tokenizer):
    path = _write(tmp_path, [good("preference", i) for i in range(10)])
    report = validate_file(path, tokenizer=smol_tokenizer)
    assert report.ok and report.stats["examples_by_kind"] == {"preference": 10}
    per = report.stats["trained_tokens_per_example"]
    assert per["min"] >= 2 * 4  # two replies of >= 3 tokens each, each with its end-of-turn token


def test_validation_memory_is_bounded(tmp_path):
    """An ~8 MB file validates with a traced peak far below its size (the file is never held whole)."""
    path = tmp_path / "big.jsonl"
    filler = "lorem ipsum dolor sit amet " * 150  # ~4 KB per line
    with open(path, "w") as f:
        f.writelines(chat_line(i).replace("Question", filler + "Question") + "\n" for i in range(2_000))
    size = path.stat().st_size
    assert size > 8_000_000
    tracemalloc.start()
    try:
        report = validate_file(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.ok and report.stats["examples"] == 2_000
    # A few lines in flight plus ~0.3 KB of fingerprints per example (measured: ~1 MB here).
    assert peak < size / 4, f"peak {peak / 1e6:.1f} MB for a {size / 1e6:.1f} MB file"


SEVEN_BROKEN = [
    chat_line(1),
    '{"messages": [{"role": "user", "content": "hi"}',                               # 2 invalid_json
    chat_line(2),
    '{"messages": []}',                                                              # 4 empty_messages
    msgs({"role": "wizard", "content": "hi"}, A),                                    # 5 unknown_role
    chat_line(3),
    msgs(SYSTEM, U),                                                                 # 7 no_assistant_turn
    msgs(SYSTEM, U, A, U),                                                           # 8 not_ending_with_assistant
    chat_line(4),
    "[1, 2, 3]",                                                                     # 10 not_an_object
    msgs(SYSTEM, {"role": "user", "content": ""}, A),                                # 11 empty_content
    chat_line(1),                                                                    # 12 duplicate
    *[chat_line(10 + i) for i in range(10)],
]


def _hone(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HONING_CACHE_DIR": os.environ["HONING_CACHE_DIR"]}
    exe = [str(HONE)] if HONE.exists() else [sys.executable, "-c", "from honing.cli import main; main()"]
    return subprocess.run([*exe, *args], check=False, capture_output=True, text=True, env=env, timeout=300)


def test_cli_reports_seven_broken_lines_and_exits_nonzero(tmp_path):
    path = _write(tmp_path, SEVEN_BROKEN)
    out = _hone("data", "validate", str(path), "--json")
    assert out.returncode == 1, out.stderr
    report = json.loads(out.stdout)
    assert [(p["line"], p["category"]) for p in report["problems"]] == [
        (2, "invalid_json"), (4, "empty_messages"), (5, "unknown_role"), (7, "no_assistant_turn"),
        (8, "not_ending_with_assistant"), (10, "not_an_object"), (11, "empty_content"), (12, "duplicate")]
    assert report["stats"]["examples"] == 15  # 14 distinct valid lines + the duplicate
    assert report["stats"]["tokens_per_example"]["max"] > 0  # counted with the default model's template
    human = _hone("data", "validate", str(path), "--model", "none")
    assert human.returncode == 1
    for line in ("2", "4", "5", "7", "8", "10", "11", "12"):
        assert any(row.strip().startswith(f"│ {line} ") or row.lstrip("│ ").startswith(f"{line} ")
                   for row in human.stdout.splitlines()), line


def test_cli_exit_codes_for_clean_and_unreadable_files(tmp_path):
    clean = _write(tmp_path, PAD)
    assert _hone("data", "validate", str(clean), "--model", "none").returncode == 0
    missing = _hone("data", "validate", str(tmp_path / "nope.jsonl"), "--model", "none")
    assert missing.returncode == 2 and "nope.jsonl" in missing.stderr and "Traceback" not in missing.stderr
    (tmp_path / "data.xlsx").write_text("x")
    bad_ext = _hone("data", "validate", str(tmp_path / "data.xlsx"), "--model", "none")
    assert bad_ext.returncode == 2 and "unknown file type" in bad_ext.stderr
    bad_format = _hone("data", "validate", str(clean), "--model", "none", "--format", "openai")
    assert bad_format.returncode == 2 and "unknown format 'openai'" in bad_format.stderr


def test_curate_drops_invalid_duplicate_near_duplicate_and_too_long(tmp_path, smol_tokenizer):
    from honing.data.curate import curate_file
    from honing.data.formats import load_examples

    long_one = msgs(SYSTEM, {"role": "user", "content": "fruit " * 300}, A)
    src = _write(tmp_path, [PAD[0], PAD[1], PAD[0], PAD[1].replace("Question number", "QUESTION  number"), '{"messages": []}', long_one, PAD[2]])
    out = tmp_path / "clean.jsonl"
    summary = curate_file(src, out, tokenizer=smol_tokenizer, max_length=200)
    assert summary.as_dict() == {"kept": 3, "invalid": 1, "duplicates": 1, "near_duplicates": 1, "too_long": 1,
                                 "removed_lines": [3, 4, 5, 6]}
    assert load_examples(out) == load_examples(_write(tmp_path, [PAD[0], PAD[1], PAD[2]], "expected.jsonl"))
    kept_near = curate_file(src, out, near=False)
    assert (kept_near.kept, kept_near.near_duplicates, kept_near.too_long) == (5, 0, 0)  # no tokenizer: no length cut


def test_parameter_count_from_safetensors_headers(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    from honing.data.stats import count_parameters

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    assert count_parameters(tiny_llama_dir) == model.num_parameters()
    assert count_parameters(tiny_llama_dir.parent) is None  # no weights there


def test_cli_curate_writes_clean_file_and_reports_json(tmp_path):
    from typer.testing import CliRunner

    from honing.cli import app

    src = _write(tmp_path, [PAD[0], PAD[0], "not json", PAD[1]])
    out = tmp_path / "clean.jsonl"
    result = CliRunner().invoke(app, ["data", "curate", str(src), str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["removed_lines"] == [2, 3]
    assert out.read_text().count("\n") == 2


def _qa(tmp_path, answers: list[str]) -> Path:
    lines = [msgs(SYSTEM, {"role": "user", "content": f"item number {i}"}, {"role": "assistant", "content": a})
             for i, a in enumerate(answers)]
    return _write(tmp_path, lines, "answers.jsonl")


def test_a_label_set_is_recognised_and_its_short_answers_are_not_warned(tmp_path):
    # 3 labels x 4 examples: short, repeated answers by design (classification), so no warnings.
    report = validate_file(_qa(tmp_path, [("yes", "no", "n/a")[i % 3] for i in range(12)]))
    assert report.lines() == []
    assert report.stats["answer_labels"] == 3
    # A label given once among them is still a label, not a smell.
    report = validate_file(_qa(tmp_path, [("yes", "no", "n/a")[i % 3] for i in range(12)] + ["ok"]))
    assert report.lines() == [] and report.stats["answer_labels"] == 4


def test_many_labels_over_few_rows_are_not_warned(tmp_path):
    """The issue's case: ~35 labels over 40 rows, a few labels given 3-4 times (the old rule warned on each)."""
    others = ["c", "java", "kotlin", "swift", "ruby", "perl", "php", "scala", "haskell", "ocaml", "elixir", "erlang",
              "clojure", "lua", "r", "julia", "dart", "zig", "nim", "crystal", "fortran", "cobol", "ada", "lisp",
              "scheme", "prolog", "bash", "powershell", "groovy", "f#"]
    answers = ["golang"] * 4 + ["rust"] * 3 + ["python"] * 3 + others
    report = validate_file(_qa(tmp_path, answers))
    assert report.lines() == [] and report.stats["answer_labels"] == 33


def test_one_label_dominating_is_warned_once(tmp_path):
    report = validate_file(_qa(tmp_path, ["yes"] * 14 + ["no"] * 6))
    assert report.lines() == [(None, "dominant_answer")]
    assert "'yes' is 70% of the examples (14 of 20, first at line 1)" in report.problems[0].message
    assert validate_file(_qa(tmp_path, ["yes"] * 10 + ["no"] * 10)).lines() == []  # half is not dominating


def test_short_answers_repeated_in_prose_data_are_not_warned(tmp_path):
    # Question answering: mostly sentences, a short fact given three times to different questions.
    answers = [f"The answer to question {i} is a full sentence." for i in range(17)] + ["Paris"] * 3
    assert validate_file(_qa(tmp_path, answers)).lines() == []
    # The same sentence to three different prompts is a canned reply.
    answers[:3] = ["I am sorry, I cannot help with that request."] * 3
    assert validate_file(_qa(tmp_path, answers)).lines() == [(1, "repeated_answer")]


# Every data file shipped under examples/; maintenance's requests.jsonl is traffic to replay, not examples;
# RFT prompts (rft*.jsonl: no assistant turn, grader fields) are checked against their grader in test_rft_examples.
EXAMPLE_FILES = sorted(p.relative_to(REPO).as_posix() for pattern in ("*/*.jsonl", "*/data/*.jsonl")
                       for p in (REPO / "examples").glob(pattern)
                       if p.name != "requests.jsonl" and not p.name.startswith("rft"))


@pytest.mark.parametrize("name", EXAMPLE_FILES)
def test_every_shipped_example_file_validates_without_warnings(name, smol_tokenizer):
    """`hone data validate` on each shipped train and eval file: no warning; a training file no error either
    (an eval file may be smaller than fine-tuning needs: cpt_stdlib_docs holds 8 held-out documents)."""
    report = validate_file(REPO / name, tokenizer=smol_tokenizer)
    assert report.warnings == [], report.to_json()["problems"]
    if Path(name).stem == "train":
        assert report.ok, report.to_json()["problems"]
        held_out = REPO / Path(name).with_name("eval.jsonl")
        if held_out.exists():
            with_eval = validate_file(REPO / name, tokenizer=smol_tokenizer, eval_path=held_out)
            assert with_eval.problems == [], with_eval.to_json()["problems"]
    else:
        assert {p.category for p in report.errors} <= {"too_few_examples"}


def test_shipped_example_files_are_all_checked():
    assert len(EXAMPLE_FILES) >= 10 and "examples/unicode_category/train.jsonl" in EXAMPLE_FILES
