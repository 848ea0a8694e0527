"""Every format from every container becomes the same internal examples, with the right line numbers."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from honing.data.conversation import Conversation, Message, PreferencePair, RawText
from honing.data.formats import (
    detect_format,
    example_to_record,
    iter_records,
    load_examples,
    read_examples,
    write_jsonl,
)
from honing.errors import DataError

S, U, A = "system", "user", "assistant"

# format -> (records, the internal examples they must become)
FORMATS = {
    "chat": (
        [{"messages": [{"role": S, "content": "Be brief."}, {"role": U, "content": "Hi"},
                       {"role": A, "content": "Hello.", "weight": 0}, {"role": U, "content": "Again"},
                       {"role": A, "content": "Hello again."}]},
         {"messages": [{"role": "developer", "content": "Sys"}, {"role": U, "content": [{"type": "text", "text": "a"},
                                                                                       {"type": "text", "text": "b"}]},
                       {"role": A, "content": "ab"}], "id": "x-2"}],
        [Conversation((Message(S, "Be brief."), Message(U, "Hi"), Message(A, "Hello.", 0), Message(U, "Again"),
                       Message(A, "Hello again."))),
         Conversation((Message(S, "Sys"), Message(U, "ab"), Message(A, "ab")))],
    ),
    "completion": (
        [{"prompt": "2+2=", "completion": "4"}, {"prompt": "Capital of France?", "completion": "Paris."}],
        [Conversation((Message(U, "2+2="), Message(A, "4"))),
         Conversation((Message(U, "Capital of France?"), Message(A, "Paris.")))],
    ),
    "alpaca": (
        [{"instruction": "Translate to French", "input": "cat", "output": "chat"},
         {"instruction": "Say hi", "input": "", "output": "Hi!"},
         {"instruction": "Add", "input": "2 and 3", "output": "5", "system": "You are a calculator."}],
        [Conversation((Message(U, "Translate to French\n\ncat"), Message(A, "chat"))),
         Conversation((Message(U, "Say hi"), Message(A, "Hi!"))),
         Conversation((Message(S, "You are a calculator."), Message(U, "Add\n\n2 and 3"), Message(A, "5")))],
    ),
    "sharegpt": (
        [{"conversations": [{"from": "system", "value": "Sys"}, {"from": "human", "value": "Q1"},
                            {"from": "gpt", "value": "A1"}, {"from": "user", "value": "Q2"},
                            {"from": "assistant", "value": "A2"}]},
         {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}], "system": "Top sys"}],
        [Conversation((Message(S, "Sys"), Message(U, "Q1"), Message(A, "A1"), Message(U, "Q2"), Message(A, "A2"))),
         Conversation((Message(S, "Top sys"), Message(U, "Q"), Message(A, "A")))],
    ),
    "preference": (
        [{"prompt": "Pick a fruit", "chosen": "An apple.", "rejected": "A rock."},
         {"prompt": [{"role": S, "content": "Be nice"}, {"role": U, "content": "Hello"}],
          "chosen": [{"role": A, "content": "Hi there!"}], "rejected": [{"role": A, "content": "Go away."}]}],
        [PreferencePair((Message(U, "Pick a fruit"),), "An apple.", "A rock."),
         PreferencePair((Message(S, "Be nice"), Message(U, "Hello")), "Hi there!", "Go away.")],
    ),
    "text": (
        [{"text": "Apples are fruit.\nThey grow on trees."}, {"text": "Lemons are sour."}],
        [RawText("Apples are fruit.\nThey grow on trees."), RawText("Lemons are sour.")],
    ),
}
# Records of one type structure per format, for Parquet (chat: string content; preference: message lists).
PARQUET_SUBSET = {"chat": [0], "preference": [1]}


def write_container(records: list[dict], path: Path) -> list[int]:
    """Write records into ``path``'s container; return the line/row numbers each record must get."""
    kind = path.suffix
    if kind == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        return list(range(1, len(records) + 1))
    if kind == ".json":
        # pretty-printed: each element starts 2 + (sum of previous elements' line counts) lines in
        lines, starts = ["["], []
        for i, r in enumerate(records):
            starts.append(len(lines) + 1)
            body = json.dumps(r, indent=2).split("\n")
            if i < len(records) - 1:
                body[-1] += ","
            lines += body
        path.write_text("\n".join([*lines, "]"]) + "\n")
        return starts
    if kind == ".csv":
        keys = sorted({k for r in records for k in r})
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(keys)
            starts, line = [], 2
            for r in records:
                cells = [json.dumps(r[k]) if isinstance(r.get(k), (list, dict)) else r.get(k, "") for k in keys]
                starts.append(line)
                line += sum(str(c).count("\n") for c in cells) + 1  # quoted newlines span physical lines
                w.writerow(cells)
        return starts
    if kind == ".parquet":
        # from_pylist takes its schema from the first row: give every row every key (null = absent)
        keys = list(dict.fromkeys(k for r in records for k in r))
        pq.write_table(pa.Table.from_pylist([{k: r.get(k) for k in keys} for r in records]), path)
        return list(range(1, len(records) + 1))
    raise AssertionError(kind)


@pytest.mark.parametrize("container", [".jsonl", ".json", ".csv", ".parquet"])
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_format_from_every_container(tmp_path, fmt, container):
    records, expected = FORMATS[fmt]
    if container == ".csv" and fmt == "chat":
        records = [{k: v for k, v in r.items() if k != "id"} for r in records]
    if container == ".parquet" and fmt in PARQUET_SUBSET:
        # a Parquet column has one type: plain strings and message lists cannot share it
        records, expected = ([seq[i] for i in PARQUET_SUBSET[fmt]] for seq in (records, expected))
    path = tmp_path / f"data{container}"
    lines = write_container(records, path)
    got = load_examples(path)
    assert got == expected
    assert [ex.line for ex in got] == lines
    assert load_examples(path, format=fmt) == expected  # forcing the format gives the same


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_detect_format_by_keys(fmt):
    assert {detect_format(r) for r in FORMATS[fmt][0]} == {fmt}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_canonical_jsonl_round_trip(tmp_path, fmt):
    expected = FORMATS[fmt][1]
    out = tmp_path / "sub" / "canonical.jsonl"
    assert write_jsonl(expected, out) == len(expected)
    assert load_examples(out) == expected
    assert [json.loads(x) for x in out.read_text().splitlines()] == [example_to_record(e) for e in expected]
    assert list(out.parent.iterdir()) == [out]  # no temp file left behind


def test_write_jsonl_leaves_no_half_file_on_error(tmp_path):
    out = tmp_path / "out.jsonl"

    def broken():
        yield RawText("fine")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_jsonl(broken(), out)
    assert list(tmp_path.iterdir()) == []


def test_read_examples_raises_with_path_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "ok"}\n{"text": ""}\n{"text": "fine"}\n')
    with pytest.raises(DataError, match=r"d\.jsonl:2: empty_content"):
        list(read_examples(path))
    assert [e.line for e in read_examples(path, on_error="skip")] == [1, 3]


@pytest.mark.parametrize("name,setup,match", [
    ("missing.jsonl", None, "no such file"),
    ("adir.jsonl", "dir", "is a directory"),
    ("data.xlsx", "file", "unknown file type"),
    ("broken.parquet", "file", "not a readable Parquet file"),
])
def test_unreadable_files_raise_data_error_naming_the_path(tmp_path, name, setup, match):
    path = tmp_path / name
    if setup == "dir":
        path.mkdir()
    elif setup == "file":
        path.write_text("not really")
    with pytest.raises(DataError, match=match) as e:
        list(iter_records(path))
    assert name in str(e.value)


def test_unknown_format_name_is_an_error(tmp_path):
    with pytest.raises(DataError, match="unknown format 'openai'"):
        list(read_examples(tmp_path / "x.jsonl", format="openai"))


def test_json_array_reports_element_lines_and_stops_at_syntax_error(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n  {"text": "a"},\n  5,\n  {"text": "b"}\n  {"text": "c"}\n]\n')
    got = [(line, v if not hasattr(v, "category") else v.category) for line, v in iter_records(path)]
    assert got == [(2, {"text": "a"}), (3, 5), (4, {"text": "b"}), (5, "invalid_json")]


def test_json_extension_holding_jsonl_or_one_object(tmp_path):
    jl = tmp_path / "lines.json"
    jl.write_text('{"text": "a"}\n\n{"text": "b"}\n')
    assert [(line, getattr(v, "category", v)) for line, v in iter_records(jl)] == [
        (1, {"text": "a"}), (2, "blank_line"), (3, {"text": "b"})]
    one = tmp_path / "one.json"
    one.write_text('\n{\n  "text": "a"\n}\n')
    assert [e.line for e in load_examples(one)] == [2]


def test_csv_bad_byte_and_extra_fields_are_reported_on_their_lines(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b'prompt,completion\n"a\nmultiline",b\nc\xff,d\ne,f,g\nh,i\n')
    got = [(line, getattr(v, "category", v)) for line, v in iter_records(path)]
    assert got == [(2, {"prompt": "a\nmultiline", "completion": "b"}), (4, "not_utf8"), (5, "invalid_csv"),
                   (6, {"prompt": "h", "completion": "i"})]


def test_csv_messages_column_must_be_json(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('messages\n"[{""role"": ""user"", ""content"": ""hi""}]"\nnot json\n')
    got = [(line, getattr(v, "category", v)) for line, v in iter_records(path)]
    assert got == [(2, {"messages": [{"role": "user", "content": "hi"}]}), (3, "invalid_json")]


def test_parquet_nulls_mean_absent(tmp_path):
    """Columnar files null out keys a record lacks (here: weight on user turns); they must not be errors."""
    path = tmp_path / "d.parquet"
    records, expected = FORMATS["chat"]
    pq.write_table(pa.Table.from_pylist([records[0], records[0] | {"id": None}]), path)
    assert load_examples(path) == [expected[0], expected[0]]
