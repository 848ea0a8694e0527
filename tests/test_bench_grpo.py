"""benchmarks/bench_grpo.py compares Honing and TRL on ONE reward: its source run as Honing's sandboxed
python grader must score every output exactly as the same source called in-process (TRL's side)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from honing.graders import Sample, SandboxLimits, load_grader
from honing.graders import sandbox as sandbox_mod

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_grpo  # the benchmark folder is not a package

pytestmark = pytest.mark.skipif(
    sandbox_mod._probe() is not None,
    reason=f"bubblewrap sandbox unavailable ({sandbox_mod._probe()}): run `sh scripts/system_deps.sh` as root",
)

ANSWER = json.dumps({"name": "f", "required": ["a"], "optional": {"b": "1"}, "keyword_only": [], "variadic": []})
OUTPUTS = [
    ANSWER,  # all five keys: 1.0
    '{"name": "f", "required": ["a"], "optional": {}, "keyword_only": [], "variadic": ["*args"]}',  # 3 of 5
    '{"name": "g"}',  # a JSON object, no key right: 0.2
    '["f"]',  # JSON, not an object: 0
    '{"name": "f", "required": ["a"',  # cut off by max_completion_tokens: 0
    "",
]


def test_the_sandboxed_grader_and_the_in_process_function_agree():
    namespace: dict = {}
    exec(compile(bench_grpo.GRADE_SOURCE, "GRADE_SOURCE", "exec"), namespace)  # noqa: S102 - the benchmark's source
    item = {"answer": ANSWER}
    local = [namespace["grade"]({"output_text": o}, item) for o in OUTPUTS]
    assert local == pytest.approx([1.0, 0.2 + 0.8 * 3 / 5, 0.2, 0.0, 0.0, 0.0])
    grader = load_grader({"type": "python", "name": "signature_fields", "source": bench_grpo.GRADE_SOURCE},
                         limits=SandboxLimits(workers=1))
    with grader:
        results = grader.grade([Sample(output_text=o, item=item) for o in OUTPUTS])
    assert [r.reward for r in results] == local
    assert not any(any((r.metadata or {}).get("errors", {}).values()) for r in results)


def test_rft_rows_end_with_the_user_and_carry_the_reference():
    rows = bench_grpo.make_rows(3)
    assert len(rows) == 3
    for row in rows:
        assert row["messages"][-1]["role"] == "user"
        assert set(json.loads(row["answer"])) == {"name", "required", "optional", "keyword_only", "variadic"}
