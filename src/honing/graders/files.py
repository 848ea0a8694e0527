"""Reading a grader object and the samples of ``hone grade`` from files, with errors that say where."""

from __future__ import annotations

import json
from pathlib import Path

from honing.errors import DataError
from honing.graders.core import GraderError, Sample

MAX_SHOWN = 10  # bad sample rows listed before "... and N more"


def read_grader_file(path: str | Path) -> dict:
    """The grader object in a JSON file (OpenAI's form: what goes in ``"grader": {...}``)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise GraderError(f"{p}: cannot read ({e.strerror or e})") from None
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as e:
        raise GraderError(f"{p}:{e.lineno}: not JSON ({e.msg}, column {e.colno})") from None
    if isinstance(spec, dict) and isinstance(spec.get("grader"), dict) and "type" not in spec:
        spec = spec["grader"]  # a saved graders/run or validate request body
    return spec


def missing_item_fields(item: dict, fields: set[str]) -> list[str]:
    """The fields a grader's templates reference that ``item`` lacks, sorted."""
    return sorted(f for f in fields if f not in item)


def read_samples(path: str | Path, item_fields: set[str] = frozenset()) -> list[Sample]:
    """Rows of OpenAI's graders/run body without the grader: ``{"model_sample": str, "item": {...}}``.

    Every bad row is found before anything is graded; DataError lists them by line number."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise DataError(f"{p}: cannot read ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    samples, problems = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        sample, problem = _row(line, item_fields)
        if problem:
            problems.append(f"{p}:{number}: {problem}")
        else:
            samples.append(sample)
    if problems:
        more = f"\n... and {len(problems) - MAX_SHOWN} more" if len(problems) > MAX_SHOWN else ""
        raise DataError(f"{len(problems)} bad sample row(s):\n" + "\n".join(problems[:MAX_SHOWN]) + more)
    if not samples:
        raise DataError(f"{p}: no samples (one JSON object per line: {{\"model_sample\": ..., \"item\": ...}})")
    return samples


def _row(line: str, item_fields: set[str]) -> tuple[Sample | None, str | None]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        return None, f"not JSON ({e.msg}, column {e.colno})"
    if not isinstance(row, dict):
        return None, f"must be a JSON object, not {type(row).__name__}"
    unknown = sorted(set(row) - {"model_sample", "item"})
    if unknown:
        return None, f"unknown key {unknown[0]!r} (a row has model_sample and item)"
    if not isinstance(row.get("model_sample"), str):
        return None, "model_sample: required, a string (the model's output to grade)"
    item = row.get("item", {})
    if not isinstance(item, dict):
        return None, f"item: must be an object, not {type(item).__name__}"
    missing = missing_item_fields(item, item_fields)
    if missing:
        return None, f"item has no field {missing[0]!r}, which the grader's templates use"
    return Sample(row["model_sample"], item), None
