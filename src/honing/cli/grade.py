"""`hone grade`: run an OpenAI grader object over samples, or check one."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from honing.graders import load_grader, run_result_json
from honing.graders.core import GraderError
from honing.graders.files import read_grader_file, read_samples
from honing.graders.sandbox import UNSAFE_ENV, sandbox_unsafe


def grade_cmd(
    grader: Annotated[Path, typer.Option("--grader", help="The grader object as JSON (OpenAI's format).")],
    samples: Annotated[Path | None, typer.Option("--samples", help="JSONL, one {\"model_sample\": ..., \"item\": "
                                                 "{...}} per line (OpenAI's graders/run body without grader).")]
    = None,
    validate: Annotated[bool, typer.Option("--validate", help="Only check the grader.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list of graders/run responses.")] = False,
) -> None:
    """Grade each sample with the grader and print OpenAI's graders/run response for it.

    Python graders run in the bubblewrap sandbox (docs/graders.md)."""
    spec = read_grader_file(grader)
    try:
        g = load_grader(spec, allow_unsafe_python=True)
    except GraderError as e:
        raise GraderError(f"{grader}: {e}") from None
    if sandbox_unsafe() and _has_python(spec):
        print(f"warning: {UNSAFE_ENV}=1 and no bubblewrap: python graders run UNSANDBOXED", file=sys.stderr)
    if validate:
        print(json.dumps({"grader": spec}) if as_json else f"{grader}: valid {g.type} grader '{g.name}'")
        return
    if samples is None:
        raise typer.BadParameter("give --samples FILE (or --validate)", param_hint="--samples")
    rows = read_samples(samples, g.item_fields())
    with g:
        results = g.grade(rows)
    if as_json:
        print(json.dumps([run_result_json(r) for r in results], indent=2))
        return
    for number, r in enumerate(results, 1):
        print(_line(number, r))


def _has_python(spec: dict) -> bool:
    subs = spec.get("graders") if isinstance(spec.get("graders"), dict) else {}
    return spec.get("type") == "python" or any(isinstance(s, dict) and s.get("type") == "python" for s in subs.values())


def _line(number: int, r) -> str:
    meta = r.metadata
    parts = [f"{number:>4}  reward {r.reward:.4f}  ({meta['execution_time'] * 1000:.1f} ms)"]
    if r.sub_rewards:
        parts.append("  ".join(f"{k}={v:.4f}" for k, v in r.sub_rewards.items()))
    if r.errors:
        parts.append("errors: " + "; ".join(r.errors))
    return "  ".join(parts)


def register(app: typer.Typer) -> None:
    app.command("grade")(grade_cmd)
