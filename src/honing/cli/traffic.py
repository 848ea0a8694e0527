"""`hone data from-traffic`: a served model's stored completions with feedback become a training file
(parsing and printing only; the work is honing.lifecycle.traffic)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from honing.errors import ConfigError


def _pairs(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--metadata: {item!r} is not KEY=VALUE")
        out[key] = value
    return out


def from_traffic_cmd(
    out: Annotated[Path, typer.Argument(help="The training file to write (JSONL).")],
    project: Annotated[str, typer.Option("--project", help="Whose stored completions (the API key's project; "
                                                           "'default' with --no-auth).")],
    kind: Annotated[str, typer.Option("--kind", help="sft: corrected answers; kto: rated answers (TRL's "
                                                     "unpaired format); dpo: correction vs the model's answer.")]
    = "sft",
    data_dir: Annotated[str, typer.Option("--data-dir", help="The service's data dir.")] = "hone-data",
    db: Annotated[str | None, typer.Option("--db", help="The service's database URL (default: SQLite in "
                                                        "DATA_DIR).")] = None,
    served_model: Annotated[str | None, typer.Option("--served-model", help="Only completions of this model.")]
    = None,
    metadata: Annotated[list[str] | None, typer.Option("--metadata", help="KEY=VALUE the completions must "
                                                                          "carry (repeatable).")] = None,
    since_days: Annotated[float | None, typer.Option("--since-days", min=0.0, help="Only the last N days.")]
    = None,
    eval_file: Annotated[Path | None, typer.Option("--eval", help="Evaluation set: its prompts are left out "
                                                                  "(leakage) and it is validated too.")] = None,
    approved: Annotated[bool, typer.Option("--approved", help="sft: thumbs-up answers are examples too.")]
    = False,
    model: Annotated[str, typer.Option("--model", "-m", help="Tokenizer for the validation's token checks; "
                                                             "'none' skips them.")] = "smollm2-135m-instruct",
    max_length: Annotated[int, typer.Option("--max-length", min=1)] = 2048,
    min_examples: Annotated[int, typer.Option("--min-examples", min=1, help="Fewer is an error (no file).")]
    = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Build OUT from the feedback on stored chat completions: curated (duplicates, near-duplicates,
    prompts of --eval) and validated as `hone data validate` does; nothing is written when it fails."""
    from honing.lifecycle.traffic import build_dataset
    from honing.serve import stored
    from honing.serve.db import make_engine, sessions, upgrade
    from honing.serve.settings import Settings

    settings = Settings(data_dir=data_dir, db_url=db)
    if settings.is_sqlite and not Path(settings.db_url.removeprefix("sqlite:///")).is_file():
        raise ConfigError(f"--data-dir: no service database at {settings.db_url} (start `hone serve` there, "
                          "or give --db)")
    upgrade(settings.db_url)
    engine = make_engine(settings.db_url)
    try:
        with sessions(engine)() as s:
            rows = stored.traffic(s, project, model=served_model, meta=_pairs(metadata), since_days=since_days)
    finally:
        engine.dispose()
    tokenizer = None
    if model.lower() != "none":
        from honing.models import load_tokenizer

        tokenizer = load_tokenizer(model)
    summary = build_dataset(rows, kind, out, eval_path=eval_file, tokenizer=tokenizer, max_length=max_length,
                            approved=approved, min_examples=min_examples)
    if as_json:
        print(json.dumps(summary.as_dict(), indent=2, ensure_ascii=False))
        return
    v = summary.validation
    print(f"{summary.kept} {kind} example(s) -> {out} from {summary.stored_completions} stored completion(s) with "
          f"feedback; removed {summary.invalid} invalid, {summary.duplicates} duplicate, {summary.near_duplicates} "
          f"near-duplicate, {summary.leaked} in the eval set; validation OK ({v['warnings']} warning(s))")
