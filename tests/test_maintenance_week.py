"""examples/maintenance/week_of_traffic.py's data: reproducible, and the week's requests never seen in training
or validation (a leak would let the retrained model look better than it is)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _week():
    spec = importlib.util.spec_from_file_location("week_of_traffic", REPO / "examples/maintenance/week_of_traffic.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_week_is_reproducible_and_held_out(tmp_path):
    week = _week()
    a, b = week.build(tmp_path / "a"), week.build(tmp_path / "b")
    assert a["days"] == b["days"] and (tmp_path / "a/valid.jsonl").read_bytes() == (tmp_path / "b/valid.jsonl").read_bytes()
    days = a["days"]
    assert [len(d) for d in days] == [week.PER_DAY] * 7
    assert [sum(r["shifted"] for r in d) for d in days] == [0, 1, 2, 4, 6, 6, 6]
    asked = [r["question"] for d in days for r in d]
    assert len(set(asked)) == len(asked) == 84
    train = {json.loads(x)["messages"][1]["content"] for x in a["train"].read_text().splitlines()}
    valid = [json.loads(x)["messages"] for x in (tmp_path / "a/valid.jsonl").read_text().splitlines()]
    assert len(valid) == week.VALID_KNOWN + week.VALID_MATH
    assert not set(asked) & (train | {m[1]["content"] for m in valid})
    # math requests and validation items list the eleventh module; the others the ten the model was trained on
    assert all(("math," in r["system"]) == r["shifted"] for d in days for r in d)
    assert sum(m[2]["content"] == "math" for m in valid) == week.VALID_MATH
    assert all(r["reference"] == "math" for d in days for r in d if r["shifted"])
