"""`hone demo`: the whole job on the shipped example, end to end, on the embedded default model.

validate the data -> print its statistics -> fine-tune (LoRA, the shipped recipe) -> evaluate the
fine-tuned model against zero-shot, few-shot and retrieval baselines -> print the comparison and the
path of the HTML report. Every step is the library the other commands use; this module only wires
them together and prints.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

# The shipped example lives next to the sources in a checkout (pip install -e .), which is how the
# README's `make demo` runs it; --example points elsewhere.
REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_EXAMPLE = REPO_ROOT / "examples" / "docstring_module"
DEFAULT_RECIPE = REPO_ROOT / "examples" / "recipes" / "docstring_module_lora.yaml"


def _step(console, number: int, title: str) -> None:
    console.rule(f"[bold]{number}. {title}")


def demo_cmd(
    example: Annotated[Path, typer.Option("--example", help="Folder with train.jsonl, eval.jsonl and docs/.")]
    = DEFAULT_EXAMPLE,
    recipe: Annotated[Path, typer.Option("--recipe", help="Training recipe (YAML).")] = DEFAULT_RECIPE,
    out: Annotated[Path | None, typer.Option("--out", help="Run directory (default: runs/demo-<time>).")] = None,
    eval_examples: Annotated[int | None, typer.Option(
        "--eval-examples", min=10, help="Evaluate on the first N eval examples (default: all).")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a recipe key, e.g. --set max_examples=200 (repeatable).")] = None,
) -> None:
    """Validate the example data, fine-tune the default model on it, and prove it helped."""
    from rich.console import Console

    from honing.cli.data import _print_report
    from honing.config import build_config
    from honing.data.stats import count_parameters
    from honing.data.validate import validate_file
    from honing.errors import DataError
    from honing.models import load_tokenizer, resolve_model

    console = Console(highlight=False)
    started = time.perf_counter()
    train_path, eval_path, docs_dir = example / "train.jsonl", example / "eval.jsonl", example / "docs"
    for path in (train_path, eval_path, recipe):
        if not path.is_file():
            raise DataError(f"{path}: not found (the demo needs the repository's examples/ folder; "
                            "run it from a checkout, or pass --example/--recipe)")
    out = out or Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    config = build_config(recipe, overrides=set_ or [],
                          values={"data": str(train_path), "eval_data": str(eval_path), "out": str(out)})

    _step(console, 1, f"Load the default model ({config.model})")
    resolved = resolve_model(config.model)  # converts the embedded GGUF once, then reads the cache
    tokenizer = load_tokenizer(resolved)
    console.print(f"{resolved.path}")

    _step(console, 2, f"Validate the data: {train_path} (+ {eval_path.name} for leakage)")
    report = validate_file(train_path, tokenizer=tokenizer, max_length=config.max_length,
                           epochs=config.epochs if isinstance(config.epochs, int) else 1,
                           eval_path=eval_path, parameters=count_parameters(resolved.path))
    _print_report(report)
    if not report.ok:
        raise DataError(f"{train_path}: the example data has errors; fix them before training")

    _step(console, 3, f"Fine-tune ({config.method}) -> {config.out}")
    from honing.train import train

    result = train(config, progress=True, log=console.print)
    console.print(f"trained {result.steps} steps at {result.input_tokens_per_s:.0f} tokens/s of all tokens "
                  f"({result.tokens_per_s:.1f}/s of trained answer tokens), "
                  f"peak memory {result.peak_memory_mb / 1024:.1f} GiB; adapter in {result.final_dir}")

    _step(console, 4, "Evaluate: fine-tuned vs zero-shot, few-shot and retrieval (RAG) on the held-out split")
    from honing.evaluate import evaluate

    evaluation = evaluate(result.run_dir, eval_path, train_path=train_path, docs_dir=docs_dir,
                          baselines=("zero-shot", "few-shot", "rag"), max_examples=eval_examples,
                          device=config.device, progress=console.print)
    _print_samples(console, evaluation)
    console.print(evaluation.summary_table())
    minutes = (time.perf_counter() - started) / 60
    console.print(f"\n[bold]Report:[/] {evaluation.report_html}   (whole demo: {minutes:.1f} min)")


def _print_samples(console, evaluation, n: int = 5) -> None:
    """A few held-out examples: the base model's answer (zero-shot) next to the fine-tuned one."""
    samples = evaluation.samples(n) if hasattr(evaluation, "samples") else []
    if not samples:
        return
    from rich.table import Table

    table = Table(title="Held-out examples: base (zero-shot) vs fine-tuned", show_lines=True)
    for column in ("prompt", "reference", "base", "fine-tuned"):
        table.add_column(column, overflow="fold", max_width=60 if column == "prompt" else 24)
    for s in samples:
        table.add_row(s["prompt"], s["reference"], s["base"], s["fine-tuned"])
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_cmd)
