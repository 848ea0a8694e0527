"""Reading training data: every supported format, from every supported container, into one internal type.

Formats (detected per record by its keys, or forced with ``format=``):

=============  ==============================================================  ===================
name           record                                                          becomes
=============  ==============================================================  ===================
chat           ``{"messages": [{"role", "content", "weight"?}, ...]}``         Conversation
               (+ OpenAI function calling: ``tools``, ``tool_calls``, ``tool``
               messages; legacy ``functions``/``function_call``)
completion     ``{"prompt": str, "completion": str}``                          Conversation
alpaca         ``{"instruction", "input"?, "output", "system"?}``              Conversation
sharegpt       ``{"conversations": [{"from", "value"}, ...], "system"?}``      Conversation
preference     ``{"prompt", "chosen", "rejected"}`` (strings or message lists;  PreferencePair
               TRL's implicit prompt: ``chosen``/``rejected`` whole conversations
               sharing every turn but the last)
openai_dpo     ``{"input": {"messages"}, "preferred_output",                    PreferencePair
               "non_preferred_output"}`` (OpenAI's DPO format; the older
               ``preferred_completion``/``non_preferred_completion`` too)
text           ``{"text": str}``                                               RawText
vertex         ``{"systemInstruction"?, "contents": [{"role": "user"|"model",     Conversation
               "parts": [{"text"}]}]}`` (Vertex AI / Gemini supervised tuning;
               ``functionCall``/``functionResponse`` parts are tool calls)
vertex_        ``{"system_instruction"?, "contents", "completions": [{"score":   PreferencePair
preference     0|1, "completion": {"role": "model", "parts"}}]}`` (Vertex AI)
unpaired       ``{"prompt", "completion", "label": true|false}`` (TRL's         LabeledExample
               unpaired format, strings or message lists) or ``{"messages",
               "label"}`` (the last assistant turn is the labelled reply): KTO
=============  ==============================================================  ===================

Containers (chosen by file extension): JSONL (``.jsonl``/``.ndjson``; streamed line by line in constant
memory), JSON (``.json``: a top-level list, one object, or JSONL saved as .json), CSV (``.csv``/``.tsv``:
the header is line 1, so the first row is line 2; columns holding message lists carry them as JSON text)
and Parquet (``.parquet``; streamed by record batch; positions are 1-based row numbers).

Two layers, shared by the trainer and the validator so they read files exactly the same way:

* :func:`iter_records` yields ``(line, value)``: the parsed JSON value, or a :class:`Problem` for a line
  that cannot be decoded at all (bad UTF-8, invalid JSON, blank line, broken CSV row).
* :class:`RecordParser` turns one record into an ``Example`` plus the list of ALL structural problems
  it has (every bad message, not just the first).

:func:`read_examples` combines them for code that just wants examples (and an error on bad data).
"""

from __future__ import annotations

import csv
import json
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from honing.data.conversation import (
    Conversation,
    Example,
    LabeledExample,
    Message,
    PreferencePair,
    RawText,
    ToolCall,
)
from honing.data.tools import check_tool_flow, read_functions, read_tool_calls, read_tools
from honing.data.vertex import SYSTEM_KEYS, read_completions, read_contents, read_system, read_vertex_tools
from honing.errors import DataError

FORMATS: tuple[str, ...] = ("chat", "completion", "alpaca", "sharegpt", "preference", "openai_dpo", "text",
                             "unpaired", "vertex", "vertex_preference")
CONTAINERS: dict[str, str] = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv",
    ".parquet": "parquet", ".pq": "parquet",
}

# Keys ignored in every format: identifiers and free-form metadata are common in exported datasets.
COMMON_KEYS = frozenset({"id", "metadata"})
# Required and optional top-level keys per format (anything else is an ``unknown_key`` error).
REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    "chat": ("messages",),
    "completion": ("prompt", "completion"),
    "alpaca": ("instruction", "output"),
    "sharegpt": ("conversations",),
    "preference": ("chosen", "rejected"),  # and "prompt", unless both sides are whole conversations
    "openai_dpo": ("input", "preferred_output", "non_preferred_output"),
    "text": ("text",),
    "unpaired": ("label",),  # and "prompt" + "completion", or "messages"
    "vertex": ("contents",),
    "vertex_preference": ("contents", "completions"),
}
# OpenAI's first DPO files named the replies *_completion; read them as the *_output keys.
OPENAI_DPO_ALIASES = {"preferred_completion": "preferred_output", "non_preferred_completion": "non_preferred_output"}
OPTIONAL_KEYS: dict[str, tuple[str, ...]] = {
    "chat": ("tools", "parallel_tool_calls", "functions"), "completion": (), "alpaca": ("input", "system"),
    "sharegpt": ("system",),
    "preference": ("prompt",), "openai_dpo": (), "text": (),
    "unpaired": ("prompt", "completion", "messages"),
    "vertex": (*SYSTEM_KEYS, "tools"),
    "vertex_preference": SYSTEM_KEYS,
}
CHAT_MESSAGE_KEYS = frozenset({"role", "content", "weight", "name", "tool_calls", "tool_call_id", "function_call"})
SHAREGPT_MESSAGE_KEYS = frozenset({"from", "value", "weight"})
# "developer" is OpenAI's newer name for the system role; "function" is the legacy role of a function's result.
CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool",
              "function": "tool"}
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                  "assistant": "assistant", "chatgpt": "assistant"}

# Every problem category, its severity, and a one-line description (docs/data.md lists the same).
CATEGORIES: dict[str, tuple[str, str]] = {
    # the line cannot be read
    "not_utf8": ("error", "the line is not valid UTF-8"),
    "invalid_json": ("error", "the line is not valid JSON"),
    "invalid_csv": ("error", "the CSV row is malformed"),
    "not_an_object": ("error", "the record is not a JSON object"),
    "blank_line": ("warning", "a blank line (skipped)"),
    # structure
    "missing_messages": ("error", "no messages/conversations list"),
    "invalid_messages": ("error", "messages/conversations is not a list"),
    "empty_messages": ("error", "the messages list is empty"),
    "invalid_message": ("error", "a message is not an object"),
    "missing_role": ("error", "a message has no role"),
    "unknown_role": ("error", "a message's role is not system/user/assistant/tool"),
    "missing_content": ("error", "a message has no content"),
    "invalid_content": ("error", "content is not text"),
    "invalid_unicode": ("error", "text contains unpaired surrogates (not encodable as UTF-8)"),
    "empty_content": ("error", "content is empty or only whitespace"),
    "unknown_key": ("error", "a key this format does not define"),
    "missing_field": ("error", "a field the format requires is missing"),
    "invalid_field": ("error", "a field has the wrong type"),
    "invalid_weight": ("error", "weight is not 0 or 1, or is on a non-assistant message"),
    "invalid_label": ("error", "an unpaired example's label is not true or false (a JSON boolean)"),
    "no_assistant_turn": ("error", "the conversation has no assistant message"),
    "not_ending_with_assistant": ("error", "the conversation does not end with an assistant message"),
    "no_trained_turn": ("error", "every assistant message has weight 0: nothing to train on"),
    "mixed_formats": ("error", "the record's format differs from the rest of the file"),
    "empty_parts": ("error", "a Vertex AI turn (or system instruction) with no parts"),
    # tool calls (honing.data.tools)
    "invalid_tools": ("error", "'tools' is not a list of function definitions with a name and a valid JSON Schema"),
    "invalid_tool_call": ("error", "a tool call without an id, a function name or arguments"),
    "invalid_tool_arguments": ("error", "a tool call's arguments are not a JSON object"),
    "tool_arguments_mismatch": ("error", "a tool call's arguments do not match the tool's JSON Schema"),
    "unknown_tool": ("error", "a call to a function that 'tools' does not declare"),
    "duplicate_tool_call_id": ("error", "two tool calls with the same id"),
    "unknown_tool_call_id": ("error", "a tool message answering a call id no earlier assistant message made"),
    "tool_call_answered_twice": ("error", "two tool messages answering the same call"),
    "unanswered_tool_call": ("error", "a tool call no tool message answers, though the conversation goes on"),
    # whole-file and content checks (honing.data.validate)
    "too_long": ("error", "longer than the max length in tokens (would be truncated)"),
    "template_error": ("error", "the model's chat template cannot render the conversation"),
    "too_few_examples": ("error", "fewer examples than fine-tuning needs"),
    "duplicate": ("error", "an exact duplicate of an earlier example"),
    "eval_leak": ("error", "an eval example whose prompt also appears in the training file"),
    "system_not_first": ("warning", "a system message that is not the first message"),
    "identical_pair": ("warning", "chosen and rejected are the same text"),
    "prompt_not_ending_with_user": ("error", "a preference prompt whose last message is not from the user"),
    "near_duplicate": ("warning", "the same as an earlier example after normalizing case/space/punctuation"),
    "no_system_message": ("warning", "conversations without a system message"),
    "short_answer": ("warning", "a very short trained answer"),
    "repeated_answer": ("warning", "the same long answer (a canned reply) is trained on many different prompts"),
    "dominant_answer": ("warning", "one short answer (label) is more than half of the examples"),
}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the data. ``line`` is 1-based (a row number for Parquet); None = whole file."""

    line: int | None
    category: str
    message: str
    file: str | None = None  # None = the file being validated; set for problems in a second file (--eval)

    @property
    def severity(self) -> str:
        return CATEGORIES[self.category][0]

    def as_dict(self) -> dict:
        d = {"line": self.line, "category": self.category, "severity": self.severity, "message": self.message}
        if self.file is not None:
            d["file"] = self.file
        return d


# ---------------------------------------------------------------------------------------------------------
# Containers -> (line, value | Problem)
# ---------------------------------------------------------------------------------------------------------

UTF8_BOM = b"\xef\xbb\xbf"
# Byte-order marks of encodings we do not read; checked longest first (UTF-32 LE starts like UTF-16 LE).
FOREIGN_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"),
                (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16"))


def container_of(path: str | os.PathLike) -> str:
    """The container kind for ``path`` by extension; DataError (naming the path) when unreadable."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file")
    if p.is_dir():
        raise DataError(f"{p}: is a directory, not a data file")
    kind = CONTAINERS.get(p.suffix.lower())
    if kind is None:
        raise DataError(f"{p}: unknown file type {p.suffix or '(no extension)'!r}; "
                        f"expected one of {', '.join(sorted(CONTAINERS))}")
    return kind


def iter_records(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """Yield ``(line, value)`` for every record of ``path``; ``value`` is a :class:`Problem` when the
    record could not be decoded. Never raises for bad content, only for an unreadable file (DataError)."""
    kind = container_of(path)
    try:
        if kind == "jsonl":
            yield from _iter_jsonl(path)
        elif kind == "json":
            yield from _iter_json(path)
        elif kind in ("csv", "tsv"):
            yield from _iter_csv(path, delimiter="\t" if kind == "tsv" else ",")
        else:
            yield from _iter_parquet(path)
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from e


def _foreign_bom(head: bytes) -> str | None:
    for bom, name in FOREIGN_BOMS:
        if head.startswith(bom):
            return name
    return None


def _decode_line(raw: bytes, line: int) -> str | Problem:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return Problem(line, "not_utf8", f"byte 0x{raw[e.start]:02x} at column {e.start + 1} is not valid "
                                         "UTF-8 (save the file as UTF-8)")


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _loads(text: str, line: int) -> Any:
    """json.loads, but any failure becomes an ``invalid_json`` Problem (never an exception)."""
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        return Problem(line, "invalid_json", f"{e.msg} at column {e.colno}")
    except ValueError as e:  # NaN/Infinity, or integers too long to convert
        return Problem(line, "invalid_json", str(e))
    except RecursionError:
        return Problem(line, "invalid_json", "nested too deeply")


def _iter_jsonl(path) -> Iterator[tuple[int, Any]]:
    with open(path, "rb") as f:
        for line, raw in enumerate(f, start=1):
            if line == 1:
                enc = _foreign_bom(raw)
                if enc:
                    yield 1, Problem(1, "not_utf8", f"the file is {enc}-encoded (byte-order mark); save it as UTF-8")
                    return
                raw = raw.removeprefix(UTF8_BOM)
            text = _decode_line(raw, line)
            if isinstance(text, Problem):
                yield line, text
                continue
            # A BOM inside the file (files concatenated with `cat`) is as harmless as one at the start.
            text = text.rstrip("\r\n").lstrip("\ufeff")
            if not text.strip():
                yield line, Problem(line, "blank_line", "blank line skipped")
                continue
            yield line, _loads(text, line)


def _iter_json(path) -> Iterator[tuple[int, Any]]:
    """A .json file is loaded whole (it is one document); line numbers are where each element starts."""
    data = Path(path).read_bytes()
    enc = _foreign_bom(data[:4])
    if enc:
        yield 1, Problem(1, "not_utf8", f"the file is {enc}-encoded (byte-order mark); save it as UTF-8")
        return
    data = data.removeprefix(UTF8_BOM)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        # Report every undecodable line, then carry on with replacement characters so the rest validates.
        for line, raw in enumerate(data.split(b"\n"), start=1):
            p = _decode_line(raw, line)
            if isinstance(p, Problem):
                yield line, p
        text = data.decode("utf-8", errors="replace")
    start = len(text) - len(text.lstrip())
    if start == len(text):
        return  # empty file: validate reports too_few_examples
    if text[start] != "[":
        whole = _loads(text, 1)
        if isinstance(whole, dict):
            yield text.count("\n", 0, start) + 1, whole
            return
        # Not one object: most likely JSONL saved with a .json extension.
        yield from _iter_json_lines(text)
        return
    yield from _iter_json_array(text, start)


def _iter_json_lines(text: str) -> Iterator[tuple[int, Any]]:
    rows = text.split("\n")
    for line, row in enumerate(rows, start=1):
        row = row.rstrip("\r")
        if not row.strip():
            if line < len(rows):  # the empty string after a trailing newline is not a blank line
                yield line, Problem(line, "blank_line", "blank line skipped")
            continue
        yield line, _loads(row, line)


def _iter_json_array(text: str, pos: int) -> Iterator[tuple[int, Any]]:
    decoder = json.JSONDecoder(parse_constant=_reject_constant)
    line, counted = 1, 0

    def line_at(i: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, i)
        counted = i
        return line

    def skip_ws(i: int) -> int:
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        return i

    pos = skip_ws(pos + 1)  # past "["
    if pos < len(text) and text[pos] == "]":
        return
    while True:
        if pos >= len(text):
            yield line_at(pos), Problem(line_at(pos), "invalid_json", "the top-level list is not closed with ']'")
            return
        here = line_at(pos)
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            yield e.lineno, Problem(e.lineno, "invalid_json", f"{e.msg} at column {e.colno}; the rest of the "
                                                               "file cannot be read")
            return
        except (ValueError, RecursionError) as e:
            msg = "nested too deeply" if isinstance(e, RecursionError) else str(e)
            yield here, Problem(here, "invalid_json", f"{msg}; the rest of the file cannot be read")
            return
        yield here, value
        pos = skip_ws(pos)
        if pos < len(text) and text[pos] == ",":
            pos = skip_ws(pos + 1)
        elif pos < len(text) and text[pos] == "]":
            rest = text[pos + 1:].strip()
            if rest:
                at = line_at(pos)
                yield at, Problem(at, "invalid_json", "extra data after the top-level list")
            return
        else:
            at = line_at(min(pos, len(text)))
            yield at, Problem(at, "invalid_json", "expected ',' or ']' between list elements; the rest of the "
                                                  "file cannot be read")
            return


# Columns that carry message lists (or other structure) as JSON text inside a CSV cell.
JSON_COLUMNS = frozenset({"messages", "conversations"})
MAYBE_JSON_COLUMNS = frozenset({"prompt", "chosen", "rejected", "tools", "contents", "completions",
                                "systemInstruction", "system_instruction"})
# A CSV cell has no types: an unpaired example's label is spelled true/false (any case), as JSON spells it.
CSV_BOOLEAN_COLUMNS = frozenset({"label"})


def _iter_csv(path, delimiter: str) -> Iterator[tuple[int, Any]]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    bad_lines: dict[int, Problem] = {}
    counter = {"line": 0}

    def text_lines() -> Iterator[str]:
        # Decode line by line ourselves so a bad byte is reported on its own line.
        with open(path, "rb") as f:
            for n, raw in enumerate(f, start=1):
                counter["line"] = n
                if n == 1:
                    enc = _foreign_bom(raw)
                    if enc:
                        bad_lines[1] = Problem(1, "not_utf8", f"the file is {enc}-encoded; save it as UTF-8")
                        return
                    raw = raw.removeprefix(UTF8_BOM)
                text = _decode_line(raw, n)
                if isinstance(text, Problem):
                    bad_lines[n] = text
                    text = raw.decode("utf-8", errors="replace")
                yield text

    reader = csv.reader(text_lines(), delimiter=delimiter)
    header: list[str] | None = None
    end = 0  # last physical line consumed
    while True:
        start = end + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            yield counter["line"], Problem(counter["line"], "invalid_csv", f"{e}; the rest of the file cannot be read")
            return
        end = counter["line"]
        bad = [bad_lines.pop(n) for n in range(start, end + 1) if n in bad_lines]
        if header is None:
            if bad:
                yield from ((p.line, p) for p in bad)
                return
            header = [h.strip() for h in row]
            continue
        if bad:
            yield from ((p.line, p) for p in bad)
            continue
        if not row or all(not c.strip() for c in row):
            yield start, Problem(start, "blank_line", "blank row skipped")
            continue
        if len(row) > len(header):
            yield start, Problem(start, "invalid_csv", f"the row has {len(row)} fields but the header has "
                                                       f"{len(header)}")
            continue
        record: dict[str, Any] = {}
        problem = None
        for key, cell in zip(header, row):
            if key in JSON_COLUMNS or (key in MAYBE_JSON_COLUMNS and cell.lstrip()[:1] in ("[", "{")):
                value = _loads(cell, start)
                if isinstance(value, Problem):
                    if key in JSON_COLUMNS:
                        problem = Problem(start, "invalid_json", f"column {key!r}: {value.message}")
                        break
                    value = cell  # plain text that happens to start with a bracket
                record[key] = value
            elif key in CSV_BOOLEAN_COLUMNS and cell.strip().lower() in ("true", "false"):
                record[key] = cell.strip().lower() == "true"
            else:
                record[key] = cell
        yield start, (problem if problem else record)
    for p in bad_lines.values():
        yield p.line, p


def _drop_nulls(value: Any) -> Any:
    """Columnar files cannot leave a key out, only null it: treat nulls as absent (top level and messages)."""
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def _iter_parquet(path) -> Iterator[tuple[int, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(str(path))
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file ({e})") from e
    row = 0
    for batch in pf.iter_batches(batch_size=1024):
        for record in batch.to_pylist():
            row += 1
            yield row, _drop_nulls(record)


# ---------------------------------------------------------------------------------------------------------
# Records -> Examples
# ---------------------------------------------------------------------------------------------------------


def detect_format(record: dict) -> str | None:
    """The format a record's keys say it is in, or None when they match none fully."""
    keys = record.keys()
    if "label" in keys and ("completion" in keys or "messages" in keys):
        return "unpaired"
    if "messages" in keys:
        return "chat"
    if "contents" in keys:
        return "vertex_preference" if "completions" in keys else "vertex"
    if "conversations" in keys:
        return "sharegpt"
    if "chosen" in keys and "rejected" in keys:
        return "preference"
    if "input" in keys and ("preferred_output" in keys or "preferred_completion" in keys):
        return "openai_dpo"
    if "prompt" in keys and "completion" in keys:
        return "completion"
    if "instruction" in keys and "output" in keys:
        return "alpaca"
    if "text" in keys:
        return "text"
    return None


def closest_format(record: dict) -> str:
    """For a record matching no format fully: the one sharing the most keys (chat when none do)."""
    best, best_score = "chat", 0
    for fmt in FORMATS:
        score = len(set(record) & (set(REQUIRED_KEYS[fmt]) | set(OPTIONAL_KEYS[fmt])))
        if score > best_score:
            best, best_score = fmt, score
    return best


class _Checker:
    """Collects every problem of one record while converting it."""

    def __init__(self, line: int):
        self.line = line
        self.problems: list[Problem] = []

    def add(self, category: str, message: str) -> None:
        self.problems.append(Problem(self.line, category, message))

    def text(self, value: Any, where: str, allow_empty: bool = False, category: str = "invalid_field") -> str | None:
        """A string field: returns it, or None after recording why it is not usable text."""
        if isinstance(value, list) and all(isinstance(p, dict) for p in value):
            # OpenAI content parts: [{"type": "text", "text": "..."}]; only text parts can be trained.
            if all(p.get("type") == "text" and isinstance(p.get("text"), str) for p in value):
                value = "".join(p["text"] for p in value)
            else:
                self.add("invalid_content", f"{where}: only text content parts are supported")
                return None
        if not isinstance(value, str):
            self.add(category, f"{where} must be a string, not {_type_name(value)}")
            return None
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            self.add("invalid_unicode", f"{where} contains an unpaired surrogate (e.g. \\ud800), which is not "
                                        "valid Unicode")
            return None
        if not allow_empty and not value.strip():
            self.add("empty_content", f"{where} is empty")
            return None
        return value

    def keys(self, record: dict, allowed: Iterable[str], where: str = "") -> None:
        allowed = set(allowed) | COMMON_KEYS if not where else set(allowed)
        extra = [k for k in record if k not in allowed]
        for k in extra:
            self.add("unknown_key", f"{where}unknown key {k!r} (allowed: {', '.join(sorted(allowed))})")


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


class RecordParser:
    """Turns records into Examples, tracking the file's format across records.

    ``format="auto"``: the first record whose keys match a format fixes the file's format; a later record
    in another format is a ``mixed_formats`` error. Records matching no format are checked against the
    file's format (or the closest one) so their problems are specific ("missing 'completion'").
    """

    def __init__(self, format: str = "auto"):
        if format != "auto" and format not in FORMATS:
            raise DataError(f"unknown format {format!r}; expected auto or one of {', '.join(FORMATS)}")
        self.forced = format != "auto"
        self.format: str | None = None if format == "auto" else format

    def parse(self, line: int, value: Any) -> tuple[Example | None, list[Problem]]:
        """``(example, problems)``; example is None when any problem is an error."""
        if isinstance(value, Problem):
            return None, [value]
        c = _Checker(line)
        if not isinstance(value, dict):
            c.add("not_an_object", f"expected a JSON object, got {_type_name(value)}")
            return None, c.problems
        detected = detect_format(value)
        if detected is not None and self.format is not None and detected != self.format:
            c.add("mixed_formats", f"this record is in {detected} format, not {self.format} (--format)"
                  if self.forced else f"this record is in {detected} format, but earlier records are "
                  f"{self.format}")
            return None, c.problems
        fmt = detected or self.format or closest_format(value)
        if self.format is None and detected is not None:
            self.format = detected
        example = _PARSERS[fmt](c, value)
        if any(p.severity == "error" for p in c.problems):
            return None, c.problems
        return example, c.problems


def _require(c: _Checker, record: dict, fmt: str) -> bool:
    c.keys(record, REQUIRED_KEYS[fmt] + OPTIONAL_KEYS[fmt])
    ok = True
    for key in REQUIRED_KEYS[fmt]:
        if key not in record:
            ok = False
            if key in ("messages", "conversations", "contents"):
                c.add("missing_messages", f"no {key!r} list")
            else:
                c.add("missing_field", f"missing {key!r} (the {fmt} format needs "
                                       f"{', '.join(repr(k) for k in REQUIRED_KEYS[fmt])})")
    return ok


def _message_list(c: _Checker, value: Any, key: str) -> list | None:
    if not isinstance(value, list):
        c.add("invalid_messages", f"{key!r} must be a list of messages, not {_type_name(value)}")
        return None
    if not value:
        c.add("empty_messages", f"{key!r} is empty")
        return None
    return value


def _chat_messages(c: _Checker, items: list, role_key: str, content_key: str, roles: dict,
                   allowed: frozenset, where: str = "message") -> list[Message] | None:
    out: list[Message] = []
    ok = True
    legacy = _LegacyCalls()
    for i, m in enumerate(items, start=1):
        at = f"{where} {i}"
        if not isinstance(m, dict):
            c.add("invalid_message", f"{at} must be an object, not {_type_name(m)}")
            ok = False
            continue
        c.keys(m, allowed, where=f"{at}: ")
        role = None
        if role_key not in m:
            c.add("missing_role", f"{at} has no {role_key!r}")
        elif not isinstance(m[role_key], str) or m[role_key] not in roles:
            shown = m[role_key] if isinstance(m[role_key], str) else _type_name(m[role_key])
            c.add("unknown_role", f"{at} has {role_key} {shown!r}; expected one of {', '.join(roles)}")
        else:
            role = roles[m[role_key]]
        calls = _message_tool_calls(c, m, role, at, legacy) if "tool_calls" in allowed else ()
        # a broken tool_calls list is reported once, not again as missing content
        content = _message_content(c, m, content_key, role, at, has_calls=calls is None or bool(calls))
        weight = 1
        if "weight" in m:
            w = m["weight"]
            if role is not None and role != "assistant":
                c.add("invalid_weight", f"{at}: weight is only allowed on assistant messages")
            elif isinstance(w, bool) or not isinstance(w, (int, float)) or w not in (0, 1):
                c.add("invalid_weight", f"{at}: weight must be 0 or 1, not {json.dumps(w)[:40]}")
            else:
                weight = int(w)
        call_id = _tool_call_id(c, m, role, at, legacy)
        if role is None or content is None or calls is None or call_id is False:
            ok = False
            continue
        out.append(Message(role, content, weight, tool_calls=calls, tool_call_id=call_id or None))  # type: ignore[arg-type]
    return out if ok else None


class _LegacyCalls:
    """OpenAI's legacy ``function_call`` has no id and a ``function`` message names the function it answers:
    calls get ids ``call_1``, ``call_2``... and each result answers the oldest open call of its function."""

    def __init__(self):
        self.n = 0
        self.open: dict[str, list[str]] = {}

    def call(self, name: str) -> str:
        self.n += 1
        call_id = f"call_{self.n}"
        self.open.setdefault(name, []).append(call_id)
        return call_id

    def answer(self, name: str) -> str:
        pending = self.open.get(name)
        return pending.pop(0) if pending else f"(no open call of {name})"


def _message_tool_calls(c: _Checker, m: dict, role: str | None, at: str,
                        legacy: _LegacyCalls) -> tuple[ToolCall, ...] | None:
    """The message's calls: ``tool_calls``, or the legacy ``function_call``; None after an error."""
    if "tool_calls" not in m and "function_call" not in m:
        return ()
    if role is not None and role != "assistant":
        c.add("invalid_tool_call", f"{at}: only assistant messages make tool calls, not {role} messages")
        return None
    if "tool_calls" in m:
        return read_tool_calls(m["tool_calls"], c.add, at)
    fc = m["function_call"]
    if not isinstance(fc, dict) or not isinstance(fc.get("name"), str) or not fc["name"]:
        c.add("invalid_tool_call", f"{at}: 'function_call' must be {{\"name\", \"arguments\"}}")
        return None
    return read_tool_calls([{"id": legacy.call(fc["name"]), "type": "function", "function": fc}], c.add, at)


def _message_content(c: _Checker, m: dict, key: str, role: str | None, at: str, has_calls: bool) -> str | None:
    """The message's text. An assistant turn that only calls tools may have none; a tool result may be ''."""
    if m.get(key) is None and has_calls:
        return ""
    if key not in m:
        c.add("missing_content", f"{at} has no {key!r}")
        return None
    if m[key] is None:
        c.add("missing_content", f"{at} has null {key!r}")
        return None
    return c.text(m[key], f"{at} {key}", category="invalid_content", allow_empty=has_calls or role == "tool")


def _tool_call_id(c: _Checker, m: dict, role: str | None, at: str, legacy: _LegacyCalls) -> str | bool | None:
    """The id a tool message answers (None for other roles); False after an error."""
    if role != "tool":
        if "tool_call_id" in m and role is not None:
            c.add("invalid_field", f"{at}: 'tool_call_id' belongs on tool messages, not {role} messages")
            return False
        return None
    if m.get("role") == "function":  # legacy: the result names its function instead
        name = m.get("name")
        if not isinstance(name, str) or not name:
            c.add("missing_field", f"{at}: a 'function' message needs the 'name' of the function it answers")
            return False
        return legacy.answer(name)
    call_id = m.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        c.add("missing_field", f"{at}: a tool message needs the 'tool_call_id' of the call it answers"
              if call_id is None else f"{at}: 'tool_call_id' must be a string, not {_type_name(call_id)}")
        return False
    return call_id


def _record_tools(c: _Checker, record: dict) -> tuple[dict, ...] | None:
    """The record's ``tools`` (or legacy ``functions``); () when it declares none, None after an error."""
    if "tools" in record:
        tools = read_tools(record["tools"], c.add)
    elif "functions" in record:
        tools = read_functions(record["functions"], c.add)
    else:
        return ()
    ptc = record.get("parallel_tool_calls")
    if ptc is not None and not isinstance(ptc, bool):
        c.add("invalid_field", f"'parallel_tool_calls' must be true or false, not {_type_name(ptc)}")
    return tools


def _check_conversation(c: _Checker, messages: list[Message]) -> None:
    roles = [m.role for m in messages]
    if "assistant" not in roles:
        c.add("no_assistant_turn", "the conversation has no assistant message to train on")
        return
    if roles[-1] != "assistant":
        c.add("not_ending_with_assistant", f"the conversation ends with a {roles[-1]} message, not an "
                                           "assistant reply")
    elif all(m.weight == 0 for m in messages if m.role == "assistant"):
        c.add("no_trained_turn", "every assistant message has weight 0, so nothing would be trained")
    for i, r in enumerate(roles[1:], start=2):
        if r == "system":
            c.add("system_not_first", f"message {i} is a system message; most chat templates expect it first")


def _parse_chat(c: _Checker, record: dict) -> Conversation | None:
    if not _require(c, record, "chat"):
        return None
    tools = _record_tools(c, record)
    items = _message_list(c, record["messages"], "messages")
    if items is None:
        return None
    msgs = _chat_messages(c, items, "role", "content", CHAT_ROLES, CHAT_MESSAGE_KEYS)
    if msgs is None or tools is None:
        return None
    _check_conversation(c, msgs)
    check_tool_flow(msgs, tools, c.add)
    ptc = record.get("parallel_tool_calls")
    return Conversation(tuple(msgs), line=c.line, tools=tools,
                        parallel_tool_calls=ptc if isinstance(ptc, bool) else None)


def _parse_sharegpt(c: _Checker, record: dict) -> Conversation | None:
    _require(c, record, "sharegpt")
    system = c.text(record["system"], "'system'", allow_empty=True) if "system" in record else None
    if "conversations" not in record:
        return None
    items = _message_list(c, record["conversations"], "conversations")
    if items is None:
        return None
    msgs = _chat_messages(c, items, "from", "value", SHAREGPT_ROLES, SHAREGPT_MESSAGE_KEYS, where="turn")
    if msgs is None:
        return None
    if system and system.strip():
        msgs = [Message("system", system)] + msgs
    _check_conversation(c, msgs)
    return Conversation(tuple(msgs), line=c.line)


def _parse_completion(c: _Checker, record: dict) -> Conversation | None:
    ok = _require(c, record, "completion")
    prompt = c.text(record["prompt"], "'prompt'") if "prompt" in record else None
    completion = c.text(record["completion"], "'completion'") if "completion" in record else None
    if not ok or prompt is None or completion is None:
        return None
    return Conversation((Message("user", prompt), Message("assistant", completion)), line=c.line)


def _parse_alpaca(c: _Checker, record: dict) -> Conversation | None:
    ok = _require(c, record, "alpaca")
    instruction = c.text(record["instruction"], "'instruction'") if "instruction" in record else None
    extra = c.text(record["input"], "'input'", allow_empty=True) if "input" in record else ""
    output = c.text(record["output"], "'output'") if "output" in record else None
    system = c.text(record["system"], "'system'", allow_empty=True) if "system" in record else ""
    if not ok or None in (instruction, extra, output, system):
        return None
    user = instruction if not extra.strip() else f"{instruction}\n\n{extra}"
    msgs = ((Message("system", system),) if system.strip() else ()) + (
        Message("user", user), Message("assistant", output))
    return Conversation(msgs, line=c.line)


def _reply(c: _Checker, value: Any, key: str) -> str | None:
    """A preference reply: a string, or a message list ending with the assistant reply."""
    if isinstance(value, list):
        items = _message_list(c, value, key)
        if items is None:
            return None
        msgs = _chat_messages(c, items, "role", "content", CHAT_ROLES, CHAT_MESSAGE_KEYS, where=f"{key} message")
        if msgs is None:
            return None
        if msgs[-1].role != "assistant":
            c.add("not_ending_with_assistant", f"{key!r} must end with an assistant message")
            return None
        if msgs[-1].tool_calls:
            c.add("invalid_content", f"{key!r}: a preference reply must be text; tool calls as replies are not "
                                     "supported")
            return None
        return msgs[-1].content
    return c.text(value, repr(key))


def _prompt_messages(c: _Checker, value: Any, key: str, tools: tuple[dict, ...] = ()) -> tuple[Message, ...] | None:
    """A preference prompt: a string (one user turn) or a message list ending with a user turn (or with the
    tool results the replies answer)."""
    if not isinstance(value, list):
        text = c.text(value, repr(key))
        return (Message("user", text),) if text is not None else None
    items = _message_list(c, value, key)
    msgs = _chat_messages(c, items, "role", "content", CHAT_ROLES, CHAT_MESSAGE_KEYS,
                          where=f"{key} message") if items is not None else None
    if msgs is None:
        return None
    if msgs[-1].role not in ("user", "tool"):
        c.add("prompt_not_ending_with_user", f"{key!r} ends with a {msgs[-1].role} message; the prompt must end "
                                             "with the user turn the chosen and rejected replies answer")
        return None
    check_tool_flow(msgs, tools, c.add, open_last_turn=False)
    return tuple(msgs)


def _implicit_prompt(c: _Checker, record: dict) -> tuple[tuple[Message, ...], str, str] | None:
    """TRL's implicit-prompt records: chosen and rejected are whole conversations that share every turn but
    the last (the prompt). Returns (prompt, chosen reply, rejected reply)."""
    sides = {}
    for key in ("chosen", "rejected"):
        items = _message_list(c, record[key], key)
        msgs = _chat_messages(c, items, "role", "content", CHAT_ROLES, CHAT_MESSAGE_KEYS,
                              where=f"{key} message") if items is not None else None
        if msgs is None:
            return None
        if msgs[-1].role != "assistant":
            c.add("not_ending_with_assistant", f"{key!r} must end with an assistant message")
            return None
        sides[key] = msgs
    prompt_c, prompt_r = tuple(sides["chosen"][:-1]), tuple(sides["rejected"][:-1])
    if not prompt_c or prompt_c != prompt_r:
        c.add("missing_field", "missing 'prompt': without it, 'chosen' and 'rejected' must be whole conversations "
                               "that share every turn but the last")
        return None
    if prompt_c[-1].role != "user":
        c.add("prompt_not_ending_with_user", f"the shared turns end with a {prompt_c[-1].role} message, not the "
                                             "user turn the replies answer")
        return None
    return prompt_c, sides["chosen"][-1].content, sides["rejected"][-1].content


def _pair(c: _Checker, prompt, chosen, rejected, tools: tuple[dict, ...] | None = ()) -> PreferencePair | None:
    if prompt is None or chosen is None or rejected is None or tools is None:
        return None
    if chosen == rejected:
        c.add("identical_pair", "'chosen' and 'rejected' are the same text, so the pair teaches nothing")
    return PreferencePair(prompt, chosen, rejected, line=c.line, tools=tools)


def _parse_preference(c: _Checker, record: dict) -> PreferencePair | None:
    ok = _require(c, record, "preference")
    if not ok:
        return None
    if "prompt" not in record:
        if isinstance(record["chosen"], list) and isinstance(record["rejected"], list):
            found = _implicit_prompt(c, record)
            return _pair(c, *found) if found else None
        c.add("missing_field", "missing 'prompt' (the preference format needs 'prompt', 'chosen', 'rejected')")
        return None
    prompt = _prompt_messages(c, record["prompt"], "prompt")
    chosen = _reply(c, record["chosen"], "chosen")
    rejected = _reply(c, record["rejected"], "rejected")
    return _pair(c, prompt, chosen, rejected)


def _parse_openai_dpo(c: _Checker, record: dict) -> PreferencePair | None:
    """OpenAI's DPO format: ``input.messages`` is the prompt, ``preferred_output`` / ``non_preferred_output``
    are one-message assistant lists (older files: ``preferred_completion`` / ``non_preferred_completion``)."""
    record = {OPENAI_DPO_ALIASES.get(k, k): v for k, v in record.items()}
    if not _require(c, record, "openai_dpo"):
        return None
    inp = record["input"]
    if not isinstance(inp, dict):
        c.add("invalid_field", f"'input' must be an object with 'messages', not {_type_name(inp)}")
        return None
    c.keys(inp, ("messages", "tools", "parallel_tool_calls", "functions"), where="'input': ")
    if "messages" not in inp:
        c.add("missing_messages", "no 'input.messages' list")
        return None
    tools = _record_tools(c, inp)
    prompt = _prompt_messages(c, inp["messages"], "input.messages", tools or ())
    chosen = _reply(c, record["preferred_output"], "preferred_output")
    rejected = _reply(c, record["non_preferred_output"], "non_preferred_output")
    return _pair(c, prompt, chosen, rejected, tools)


def _parse_text(c: _Checker, record: dict) -> RawText | None:
    ok = _require(c, record, "text")
    text = c.text(record["text"], "'text'") if "text" in record else None
    if not ok or text is None:
        return None
    return RawText(text, line=c.line)


def _parse_unpaired(c: _Checker, record: dict) -> LabeledExample | None:
    """KTO's unpaired feedback: TRL's ``{"prompt", "completion", "label"}`` (strings or message lists), or a
    chat conversation with a top-level ``label`` judging its last assistant turn."""
    if not _require(c, record, "unpaired"):
        return None
    label = record["label"]
    if not isinstance(label, bool):
        shown = f" {label!r}" if isinstance(label, (str, int, float)) else ""
        c.add("invalid_label", f"'label' must be true or false (a JSON boolean), not {_type_name(label)}{shown}")
    if "messages" in record:
        if "prompt" in record or "completion" in record:
            c.add("invalid_field", "give either 'messages' or 'prompt' and 'completion', not both")
            return None
        found = _labeled_conversation(c, record["messages"])
    elif "prompt" not in record or "completion" not in record:
        c.add("missing_field", f"missing {'prompt' if 'prompt' not in record else 'completion'!r} (unpaired "
                               "examples are {'prompt', 'completion', 'label'} or {'messages', 'label'})")
        return None
    else:
        found = _prompt_messages(c, record["prompt"], "prompt"), _reply(c, record["completion"], "completion")
    if found is None or None in found or not isinstance(label, bool):
        return None
    return LabeledExample(found[0], found[1], label, line=c.line)


def _labeled_conversation(c: _Checker, value: Any) -> tuple[tuple[Message, ...], str] | None:
    """(prompt, reply) of a labelled conversation: the reply is its last message, an assistant turn."""
    items = _message_list(c, value, "messages")
    msgs = _chat_messages(c, items, "role", "content", CHAT_ROLES, CHAT_MESSAGE_KEYS) if items is not None else None
    if msgs is None:
        return None
    if msgs[-1].role != "assistant":
        c.add("not_ending_with_assistant", f"the conversation ends with a {msgs[-1].role} message, not the assistant "
                                           "reply its label judges")
        return None
    if len(msgs) < 2 or msgs[-2].role != "user":
        c.add("prompt_not_ending_with_user", "the labelled reply must answer a user message (the turn before it)")
        return None
    if not msgs[-1].content.strip():
        c.add("empty_content", "the labelled assistant reply is empty")
        return None
    return tuple(msgs[:-1]), msgs[-1].content


def _parse_vertex(c: _Checker, record: dict) -> Conversation | None:
    """Vertex AI supervised tuning: ``systemInstruction`` + ``contents`` of user/model turns (honing.data.vertex)."""
    if not _require(c, record, "vertex"):
        return None
    system = read_system(c, record)
    tools = read_vertex_tools(c, record["tools"]) if "tools" in record else ()
    turns = read_contents(c, record["contents"])
    if system is None or tools is None or turns is None:
        return None
    msgs = system + turns
    _check_conversation(c, msgs)
    check_tool_flow(msgs, tools, c.add)
    return Conversation(tuple(msgs), line=c.line, tools=tools)


def _parse_vertex_preference(c: _Checker, record: dict) -> PreferencePair | None:
    """Vertex AI preference tuning: ``contents`` ending with a user turn, two scored ``completions``."""
    if not _require(c, record, "vertex_preference"):
        return None
    system = read_system(c, record)
    turns = read_contents(c, record["contents"])
    replies = read_completions(c, record["completions"])
    if system is None or turns is None or replies is None:
        return None
    if turns[-1].role not in ("user", "tool"):
        c.add("prompt_not_ending_with_user", "'contents' must end with the user turn the completions answer, not a "
                                             "model turn")
        return None
    check_tool_flow(turns, (), c.add, open_last_turn=False)
    return _pair(c, tuple(system + turns), *replies)


_PARSERS = {"chat": _parse_chat, "sharegpt": _parse_sharegpt, "completion": _parse_completion,
            "alpaca": _parse_alpaca, "preference": _parse_preference, "openai_dpo": _parse_openai_dpo,
            "text": _parse_text, "unpaired": _parse_unpaired, "vertex": _parse_vertex,
            "vertex_preference": _parse_vertex_preference}


# ---------------------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------------------


def read_examples(path: str | os.PathLike, format: str = "auto", on_error: str = "raise") -> Iterator[Example]:
    """Stream the examples of ``path`` (each with its 1-based ``line``).

    ``on_error="raise"``: the first record with an error raises DataError naming ``path:line`` and the
    category (run ``hone data validate`` to see them all); ``"skip"``: bad records are left out.
    Warnings never stop reading.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError("on_error must be 'raise' or 'skip'")
    parser = RecordParser(format)
    for line, value in iter_records(path):
        example, problems = parser.parse(line, value)
        if example is not None:
            yield example
        elif on_error == "raise":
            errors = [p for p in problems if p.severity == "error"]
            if errors:
                p = errors[0]
                raise DataError(f"{path}:{p.line}: {p.category}: {p.message} "
                                f"(run `hone data validate {path}` to list every problem)")


def load_examples(path: str | os.PathLike, format: str = "auto", on_error: str = "raise") -> list[Example]:
    """All examples of ``path`` in a list (see :func:`read_examples`)."""
    return list(read_examples(path, format=format, on_error=on_error))


def example_to_record(example: Example) -> dict:
    """The canonical JSONL record of an example: OpenAI chat, preference (chat prompt), or text."""
    if isinstance(example, Conversation):
        record: dict = {"messages": example.as_dicts()}
        if example.tools:
            record["tools"] = list(example.tools)
        if example.parallel_tool_calls is not None:
            record["parallel_tool_calls"] = example.parallel_tool_calls
        return record
    if isinstance(example, PreferencePair):
        if example.tools:  # only OpenAI's DPO format carries tools with a preference pair
            return {"input": {"messages": [m.as_dict() for m in example.prompt], "tools": list(example.tools)},
                    "preferred_output": [{"role": "assistant", "content": example.chosen}],
                    "non_preferred_output": [{"role": "assistant", "content": example.rejected}]}
        return {"prompt": [m.as_dict() for m in example.prompt], "chosen": example.chosen,
                "rejected": example.rejected}
    if isinstance(example, LabeledExample):
        return {"prompt": [m.as_dict() for m in example.prompt], "completion": example.completion,
                "label": example.label}
    if isinstance(example, RawText):
        return {"text": example.text}
    raise TypeError(f"not an example: {type(example).__name__}")


def write_jsonl(examples: Iterable[Example], path: str | os.PathLike) -> int:
    """Write examples as canonical JSONL, atomically (temp file + rename). Returns the count written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    n = 0
    try:
        with open(fd, "w", encoding="utf-8", newline="\n") as f:
            for ex in examples:
                f.write(json.dumps(example_to_record(ex), ensure_ascii=False) + "\n")
                n += 1
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n
