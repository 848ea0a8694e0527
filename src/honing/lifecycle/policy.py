"""The retraining loop's decisions, apart from any service: when a production model's traffic calls for
retraining, and what the retrain trains on.

A check looks at the stored completions that arrived since the last one. It retrains when

* **drift is found**: :func:`honing.lifecycle.drift.drift` of the new requests against the model's training
  data recommends anything but ``fine`` (a significant excess of inputs far from every training input), or
* **enough new feedback exists**: at least ``min_feedback`` corrected answers since the last retrain.

Either way the new training file is the production model's training data plus the supervised examples
built from corrected answers (``honing.lifecycle.traffic``: curated, leakage against the eval set removed,
validated), so a retrain never forgets what production was trained on; drift without corrections cannot
retrain (nothing says what the new inputs' answers should be) and says so.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from honing.errors import DataError
from honing.fileio import write_text_atomic


@dataclass(frozen=True)
class Decision:
    retrain: bool
    reason: str


def decide(drift_report, new_feedback: int, min_feedback: int) -> Decision:
    """Retrain or not, and why in one sentence. ``drift_report``: a DriftReport, or None when drift was not
    measured (turned off, or too few inputs)."""
    drifted = drift_report is not None and drift_report.recommendation != "fine"
    enough = new_feedback >= min_feedback
    feedback = f"{new_feedback} new corrected answer(s) (retrain from {min_feedback})"
    if drifted and enough:
        return Decision(True, f"drift found ({drift_report.recommendation}) and {feedback}")
    if drifted:
        return Decision(True, f"drift found ({drift_report.recommendation}); {feedback}")
    if enough:
        return Decision(True, feedback)
    why = "no drift" if drift_report is not None else "drift not measured"
    return Decision(False, f"{why} and {feedback}")


def write_requests(messages: Iterable[list], path: str | Path) -> int:
    """The requests' messages as a chat JSONL (what drift reads as the current inputs); their count."""
    lines = [json.dumps({"messages": list(m)}, ensure_ascii=False) for m in messages]
    write_text_atomic(path, "".join(line + "\n" for line in lines))
    return len(lines)


def combine(base: str | Path, extra: str | Path) -> bytes:
    """The production model's training file followed by the examples built from traffic (both JSONL).
    The result is validated as any uploaded training file before a job may train on it."""
    base, extra = Path(base), Path(extra)
    if base.suffix.lower() not in (".jsonl", ".json"):
        raise DataError(f"the production model's training file {base.name} is not JSONL: traffic examples "
                        "(chat JSONL) cannot be appended to it")
    head = base.read_bytes()
    if head and not head.endswith(b"\n"):
        head += b"\n"
    return head + extra.read_bytes()
