"""Validation never crashes: random bytes, random JSON structures and chat-shaped records with arbitrary
text always yield a report whose problems carry known categories and sensible line numbers."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from honing.data.formats import CATEGORIES
from honing.data.validate import Report, validate_file

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Keys that steer records into every format's code paths, plus noise.
KEYS = st.sampled_from(["messages", "role", "content", "weight", "name", "prompt", "completion", "chosen",
                        "rejected", "instruction", "input", "output", "conversations", "from", "value",
                        "text", "system", "type", "id", "x"])
ROLES = st.sampled_from(["system", "user", "assistant", "developer", "human", "gpt", "tool", ""])
SCALARS = st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=False) | st.text(max_size=20) | ROLES
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=5),
                    max_leaves=25)


def _check(report: Report, n_lines: int) -> None:
    assert isinstance(report, Report)
    for p in report.problems:
        assert p.category in CATEGORIES
        assert p.line is None or 1 <= p.line <= max(n_lines, 1)
    assert report.ok == (report.error_count == 0)
    json.dumps(report.to_json())


def _validate(content: bytes, suffix: str, **kw) -> Report:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"fuzz{suffix}"
        path.write_bytes(content)
        return validate_file(path, **kw)


@FUZZ
@given(content=st.binary(max_size=400), suffix=st.sampled_from([".jsonl", ".json", ".csv", ".tsv"]))
def test_random_bytes_never_crash(content, suffix):
    _check(_validate(content, suffix), content.count(b"\n") + 1)


@FUZZ
@given(lines=st.lists(JSON, min_size=1, max_size=12), suffix=st.sampled_from([".jsonl", ".json"]))
def test_random_json_structures_never_crash(lines, suffix):
    if suffix == ".jsonl":
        content = "\n".join(json.dumps(v) for v in lines).encode()
    else:
        content = json.dumps(lines, indent=1).encode()
    _check(_validate(content, suffix), content.count(b"\n") + 1)


MESSAGE = st.fixed_dictionaries({"role": ROLES, "content": st.text(max_size=30)},
                                optional={"weight": st.sampled_from([0, 1, 2, "1", None])})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(convs=st.lists(st.lists(MESSAGE, max_size=5), min_size=1, max_size=8))
def test_chat_shaped_records_with_any_text_never_crash_token_counting(convs, smol_tokenizer):
    content = "\n".join(json.dumps({"messages": m}) for m in convs).encode()
    report = _validate(content, ".jsonl", tokenizer=smol_tokenizer, max_length=64)
    _check(report, len(convs))
    if report.stats["examples"]:
        assert report.stats["tokens_per_example"]["max"] > 0
