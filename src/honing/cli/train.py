"""`hone train`: fine-tune a model from a recipe and/or flags. Parsing and printing only; the work is
honing.train.train."""

from __future__ import annotations

import typer

FLAG_KEYS = ("model", "data", "eval_data", "method", "objective", "init_from", "epochs", "out", "merge", "device")


def _epilog() -> str:
    from rich.markup import escape

    from honing.config import describe_fields

    # Every key documented once, from the schema's field descriptions (escaped: they contain [..]).
    lines = ["Configuration keys (in a recipe, or as --set key=value; nested keys are dotted):"]
    for key, default, desc in describe_fields():
        lines.append(escape(f"{key} (default: {default}): {desc}"))
    return "\n\n".join(lines)


def train_cmd(
    recipe: str = typer.Argument(None, help="YAML recipe (see examples/recipes/). Flags and --set override it."),
    set_: list[str] = typer.Option(  # noqa: B008
        None, "--set", help="Override any configuration key: --set lora.r=8 (repeatable)."
    ),
    model: str = typer.Option(None, "--model", help="Same as --set model=... ."),
    data: str = typer.Option(None, "--data", help="Same as --set data=... ."),
    eval_data: str = typer.Option(None, "--eval-data", help="Same as --set eval_data=... ."),
    method: str = typer.Option(None, "--method", help="Same as --set method=lora|qlora|full."),
    objective: str = typer.Option(None, "--objective",
                                  help="Same as --set objective=sft|dpo|simpo|cpt|grpo|kto|orpo."),
    grader: str = typer.Option(None, "--grader", help="objective grpo: the grader JSON file (--set grpo.grader=...)."),
    init_adapter: str = typer.Option(
        None, "--init-adapter", help="Start from an earlier run's result (RUN_DIR): same as --set init_from=RUN_DIR."),
    epochs: str = typer.Option(None, "--epochs", help="Same as --set epochs=N|auto."),
    out: str = typer.Option(None, "--out", help="Same as --set out=runs/NAME."),
    merge: bool = typer.Option(None, "--merge", help="Same as --set merge=true."),
    device: str = typer.Option(None, "--device", help="Same as --set device=auto|cpu|cuda."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its newest complete checkpoint."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    evaluate_after: bool = typer.Option(
        True, "--eval/--no-eval",
        help="With an eval file (eval_data): evaluate the result when training ends, as `hone eval` does "
             "(fine-tuned vs the base model zero-shot; report in RUN_DIR/eval/).",
    ),
    eval_baselines: str = typer.Option(
        "zero-shot", "--eval-baselines", help="Baselines of that evaluation: any of zero-shot,few-shot,rag."),
) -> None:
    """Fine-tune a base model on a dataset into a run directory (adapter or full model, metrics, checkpoints)."""
    from honing.startup import mark_command_start

    mark_command_start()  # the run's "time to first step" counts from the process's start, imports included
    from rich.console import Console

    from honing.config import build_config
    from honing.train import train

    console = Console(stderr=False, highlight=False)
    if epochs is not None and epochs != "auto":
        try:
            epochs = int(epochs)
        except ValueError:
            from honing.errors import ConfigError

            raise ConfigError(f"--epochs: expected a positive integer or 'auto', got {epochs!r}") from None
    values = {"model": model, "data": data, "eval_data": eval_data, "method": method, "objective": objective,
              "init_from": init_adapter, "epochs": epochs,
              "out": out, "merge": merge, "device": device, "grpo.grader": grader}
    config = build_config(recipe, overrides=set_ or [], values=values)
    from honing.startup import prepare_imports

    prepare_imports(config.method)  # before PEFT's import: a faster start
    console.print(f"[bold]hone train[/] -> {config.out}")
    result = train(config, resume=resume, progress=not quiet, log=console.print)
    if not _is_main_process():
        return  # rank 0 reports for all processes
    if result.status == "paused":
        console.print(f"[bold yellow]paused[/] at step {result.steps}: continue with "
                      f"`hone train --resume --out {result.run_dir}` and the same settings")
        return
    console.print(
        f"[bold green]{result.status}[/]: result in {result.final_dir}"
        + (f", merged model in {result.merged_dir}" if result.merged_dir else "")
    )
    console.print(f"peak memory (RSS): {result.peak_memory_mb:.0f} MB; trained tokens/s: {result.tokens_per_s:,.1f} "
                  f"(all example tokens/s: {result.input_tokens_per_s:,.1f})")
    evaluation = None
    if evaluate_after and config.eval_data and config.objective == "sft":
        evaluation = _evaluate_run(console, result.run_dir, config.eval_data, eval_baselines, config.device)
        if config.gate.production is not None:  # a retrained model: judged against production here
            from honing.lifecycle.gate import gate_evaluation

            console.print(gate_evaluation(evaluation, progress=console.print).summary())
    from honing.train.reporting import closing_paragraph

    console.print()
    console.print(closing_paragraph(result, config, evaluation))


def register(app: typer.Typer) -> None:
    app.command(
        "train",
        epilog=_epilog(),
        help=(train_cmd.__doc__ or "")
        + "\n\nExample: hone train --model smollm2-135m-instruct --data train.jsonl --method lora --out runs/demo",
    )(train_cmd)


def _is_main_process() -> bool:
    import os

    # Under torchrun every rank runs this command; rank 0 alone evaluates (the others have exited the loop).
    return os.environ.get("RANK", "0") == "0"


def _evaluate_run(console, run_dir, eval_path: str, baselines: str, device: str = "auto") -> None:
    """The end-of-training evaluation: the library's ``evaluate``, printed as ``hone eval`` prints it."""
    from honing.evaluate import evaluate

    console.rule("[bold]evaluation")
    wanted = tuple(b.strip() for b in baselines.split(",") if b.strip())
    result = evaluate(run_dir, eval_path, baselines=wanted, device=device, progress=console.print)
    console.print(result.summary_table())
    console.print(f"report: {result.report_html}")
    return result

