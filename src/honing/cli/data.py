"""`hone data ...`: check training data before spending compute on it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from honing.cli.traffic import from_traffic_cmd

app = typer.Typer(help="Training data: validate files, list every problem, count tokens.", no_args_is_help=True)

# Problems of one category shown before "... and N more" in the human output (--json lists them all).
SHOWN_PER_CATEGORY = 50


def _validate_rft(file: Path, grader: Path | None, as_json: bool) -> None:
    """RFT rows (messages ending with the user's turn; other fields = the grader's item): every problem with
    its line; exit 1 when there is one."""
    import json

    from honing.data.rft import check_rft
    from honing.graders import load_grader
    from honing.train.grpo import load_grader_spec

    fields = load_grader(load_grader_spec(str(grader))).item_fields() if grader is not None else set()
    examples, problems = check_rft(file, fields)
    if as_json:
        typer.echo(json.dumps({"path": str(file), "format": "rft", "ok": not problems, "examples": len(examples),
                               "errors": len(problems), "problems": [p.as_dict() for p in problems]}, indent=2))
    else:
        for p in problems:
            typer.echo(f"{file}:{p.line}: {p.category}: {p.message}")
        fields_note = f"; grader fields: {', '.join(sorted(fields)) or 'none'}" if grader is not None else ""
        typer.echo(f"{file}: {len(examples)} RFT prompt(s), {len(problems)} problem(s){fields_note}")
    if problems:
        raise typer.Exit(1)


@app.command("validate")
def validate_cmd(
    file: Annotated[Path, typer.Argument(help="Training data: .jsonl, .json, .csv/.tsv or .parquet.")],
    format: Annotated[str, typer.Option("--format", "-f",
                                        help="auto, chat, completion, alpaca, sharegpt, preference, openai_dpo, "
                                             "vertex, vertex_preference, unpaired, text, or rft "
                                             "(reinforcement prompts; see --grader).")] = "auto",
    model: Annotated[str, typer.Option("--model", "-m",
                                       help="Model whose tokenizer and chat template count the tokens (catalog "
                                            "name, HF directory or .gguf); 'none' skips token counting.")]
    = "smollm2-135m-instruct",
    max_length: Annotated[int, typer.Option("--max-length", min=1, help="Tokens per example before truncation.")]
    = 2048,
    epochs: Annotated[int, typer.Option("--epochs", min=1,
                                        help="Epochs, for the trained-token total and the time estimate.")] = 3,
    eval_file: Annotated[Path | None, typer.Option("--eval", help="Eval file: checked too, and for prompts that "
                                                                 "also appear in FILE (leakage).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    show: Annotated[int | None, typer.Option("--show", min=1, metavar="N",
                                             help="Also print the example on line N (row N for Parquet) as "
                                                  "the model's chat template renders it, trained spans "
                                                  "between ⟦ and ⟧.")] = None,
    grader: Annotated[Path | None, typer.Option("--grader", help="RFT data (objective grpo): check FILE's rows "
                                                                 "against this grader (every field it "
                                                                 "references present); implies --format rft.")]
    = None,
) -> None:
    """List every problem in FILE with its line number and category, then token statistics.

    Exit status: 0 when there are no errors (warnings allowed), 1 when there are errors,
    2 when the file cannot be read at all.
    """
    from honing.data.formats import container_of
    from honing.data.validate import validate_file

    container_of(file)  # unreadable file: a one-line error before loading any tokenizer
    if format == "rft" or grader is not None:
        _validate_rft(file, grader, as_json)
        return
    if eval_file is not None:
        container_of(eval_file)
    if show is not None and model.lower() == "none":
        raise typer.BadParameter("--show renders with the model's chat template; give --model", param_hint="--show")
    tokenizer = parameters = None
    if model.lower() != "none":
        from honing.data.stats import count_parameters
        from honing.models import load_tokenizer, resolve_model

        resolved = resolve_model(model)
        tokenizer = load_tokenizer(resolved)
        parameters = count_parameters(resolved.path)
    report = validate_file(file, format=format, tokenizer=tokenizer, max_length=max_length, epochs=epochs,
                           eval_path=eval_file, parameters=parameters)
    shown = _shown(file, format, tokenizer, show) if show is not None else None
    if as_json:
        out = report.to_json()
        if shown is not None:
            out["show"] = shown
        print(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        _print_report(report)
        if shown is not None:
            _print_shown(shown)
    raise typer.Exit(0 if report.ok else 1)


def _shown(file: Path, format: str, tokenizer, line: int) -> dict:
    """``{"line", "renderings": [{"label", "text"}] | "problems": [...]}`` for the record on ``line``."""
    from honing.data.formats import RecordParser, iter_records
    from honing.data.render import marked_renderings

    parser = RecordParser(format)
    for n, value in iter_records(file):
        example, problems = parser.parse(n, value)
        if n < line:
            continue
        if n > line or example is None:
            return {"line": line, "problems": [p.as_dict() for p in problems if n == line] or
                    [{"line": line, "category": "no_example", "message": f"no example starts on line {line}"}]}
        try:
            renderings = marked_renderings(tokenizer, example)
        except Exception as e:  # noqa: BLE001 - the template_error is in the report too; say it here
            return {"line": line, "problems": [{"line": line, "category": "template_error",
                                                "message": f"{type(e).__name__}: {e}"}]}
        return {"line": line, "renderings": [{"label": label, "text": text} for label, text in renderings]}
    return {"line": line, "problems": [{"line": line, "category": "no_example",
                                        "message": f"the file ends before line {line}"}]}


def _print_shown(shown: dict) -> None:
    # Plain print: rich would read "[...]" in the rendered text as markup.
    if "problems" in shown:
        print(f"\nline {shown['line']} cannot be shown: " +
              "; ".join(f"{p['category']}: {p['message']}" for p in shown["problems"]))
        return
    for r in shown["renderings"]:
        print(f"\n--- line {shown['line']}, {r['label']} (trained text between ⟦ and ⟧) ---")
        print(r["text"])


@app.command("curate")
def curate_cmd(
    file: Annotated[Path, typer.Argument(help="Training data to clean (any supported format and container).")],
    out: Annotated[Path, typer.Argument(help="Where to write the clean examples (canonical JSONL).")],
    format: Annotated[str, typer.Option("--format", "-f", help="auto or a format name.")] = "auto",
    model: Annotated[str, typer.Option("--model", "-m", help="Tokenizer for --max-length.")]
    = "smollm2-135m-instruct",
    max_length: Annotated[int | None, typer.Option("--max-length", min=1,
                                                   help="Drop examples longer than this many tokens.")] = None,
    keep_near: Annotated[bool, typer.Option("--keep-near-duplicates",
                                            help="Only drop exact duplicates.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Write FILE's valid examples to OUT without duplicates (and over-long examples, with --max-length)."""
    from honing.data.curate import curate_file
    from honing.data.formats import container_of

    container_of(file)
    tokenizer = None
    if max_length is not None:
        from honing.models import load_tokenizer

        tokenizer = load_tokenizer(model)
    summary = curate_file(file, out, format=format, tokenizer=tokenizer, max_length=max_length,
                          near=not keep_near)
    if as_json:
        print(json.dumps(summary.as_dict(), indent=2))
    else:
        print(f"kept {summary.kept} -> {out}; removed {summary.invalid} invalid, {summary.duplicates} duplicate, "
              f"{summary.near_duplicates} near-duplicate, {summary.too_long} too long")


def _print_report(report) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if report.problems:
        table = Table(title=f"Problems in {report.path}", title_justify="left")
        table.add_column(report.unit, justify="right")
        table.add_column("severity")
        table.add_column("category")
        table.add_column("message", overflow="fold")
        shown: dict[str, int] = {}
        for p in report.problems:
            shown[p.category] = shown.get(p.category, 0) + 1
            if shown[p.category] > SHOWN_PER_CATEGORY:
                continue
            style = "red" if p.severity == "error" else "yellow"
            # problems of the --eval file are prefixed with its name; the JSON has the full path
            where = ("" if p.file is None else f"{Path(p.file).name}:") + ("-" if p.line is None else str(p.line))
            table.add_row(where, f"[{style}]{p.severity}[/]", p.category, p.message)
        for category, n in sorted(report.counts.items()):
            if n > SHOWN_PER_CATEGORY:
                table.add_row("", "", category, f"... and {n - SHOWN_PER_CATEGORY} more (see --json)")
        console.print(table)

    s = report.stats
    stats = Table(title="Statistics", title_justify="left", show_header=False)
    stats.add_column("what")
    stats.add_column("value", justify="right")
    stats.add_row("format", str(report.format or "-"))
    stats.add_row("examples", f"{s['examples']} valid of {s['records']} records")
    if s.get("answer_labels"):
        stats.add_row("answers", f"{s['answer_labels']} distinct labels (a classification task)")
    if "tokens_per_example" in s:
        t, a = s["tokens_per_example"], s["trained_tokens_per_example"]
        stats.add_row("tokens / example (min / median / p95 / max)",
                      f"{t['min']} / {t['median']:.0f} / {t['p95']:.0f} / {t['max']}")
        stats.add_row("trained (assistant) tokens / example (min / median / max)",
                      f"{a['min']} / {a['median']:.0f} / {a['max']}")
        stats.add_row(f"truncated at {s['max_length']} tokens", str(s["truncated_examples"]))
        stats.add_row(f"trained tokens, {s['epochs']} epoch(s)", f"{s['trained_tokens_all_epochs']:,}")
        stats.add_row(f"processed tokens, {s['epochs']} epoch(s)", f"{s['processed_tokens_all_epochs']:,}")
        # A reference rate, not a measurement of this machine: bf16 units and top-layer recipes run
        # several times faster (the demo: ~890 tokens/s in bf16); the trainer prints its measured rate.
        stats.add_row("estimated training time, 2-core CPU in fp32",
                      f"{_duration(s['estimated_training_seconds'])} "
                      f"(at ~{s['tokens_per_second_assumed']:.0f} tokens/s; bf16 CPUs and GPUs: far less)")
    if "eval_examples" in s:
        stats.add_row("eval examples", str(s["eval_examples"]))
    console.print(stats)
    verdict = ("[green]OK[/]" if report.ok else f"[red]{report.error_count} error(s)[/]")
    console.print(f"{verdict}, {report.warning_count} warning(s)")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


app.command("from-traffic")(from_traffic_cmd)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="data")
