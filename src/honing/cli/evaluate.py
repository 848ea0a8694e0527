"""`hone eval`: the fine-tuned model against zero-shot, few-shot and RAG on the base model, with a report."""

from __future__ import annotations

import json
import sys

import typer


def eval_cmd(
    model: str = typer.Option(None, "--model", help="A training run directory (fine-tuned vs baselines), or a base "
                              "model reference (baselines only)."),
    data: str = typer.Option(None, "--data", help="Evaluation examples (chat JSONL or any format `hone data` reads); "
                             "the final assistant turn of each is the reference answer (tool-calling data: the "
                             "last turn that calls)."),
    config: str = typer.Option(None, "--config", help="YAML file of evaluation settings (the keys of "
                               "docs/evaluation.md's table); flags and --set override it."),
    overrides: list[str] = typer.Option(  # noqa: B008
        None, "--set", help="Override one setting: key=value (repeatable)."),
    baselines: str = typer.Option(None, "--baselines", help="Comma-separated baselines run on the base model "
                                  "(zero-shot, few-shot, rag; empty: none). Default: all three."),
    docs: str = typer.Option(None, "--docs", help="Folder of .txt/.md documents for the RAG baseline "
                             "(default: retrieve over the training answers)."),
    train_data: str = typer.Option(None, "--train-data", help="Training examples for few-shot and RAG "
                                   "(default: the run's training data from run.json)."),
    metric: str = typer.Option(None, "--metric", help="auto (default), classification, json, text or tool_call."),
    schema: str = typer.Option(None, "--schema", help="JSON schema file: adds schema conformance (json task)."),
    out: str = typer.Option(None, "--out", help="Report folder (default RUN_DIR/eval, or ./hone-eval)."),
    max_examples: int = typer.Option(None, "--max-examples", min=1, help="Evaluate only the first N examples."),
    max_new_tokens: int = typer.Option(None, "--max-new-tokens", min=1,
                                       help="Longest answer (default: from the reference lengths)."),
    k_shots: int = typer.Option(None, "--k-shots", min=1, help="Training examples per few-shot prompt (default 3)."),
    forgetting: bool = typer.Option(None, "--forgetting/--no-forgetting",
                                    help="Check general text perplexity and general QA before/after (default on)."),
    dtype: str = typer.Option(None, "--dtype", help="auto (default; measured: bf16 only where it is fast), fp32, "
                              "bf16."),
    device: str = typer.Option(None, "--device", help="auto (default; CUDA when available), cpu or cuda."),
    threads: str = typer.Option(None, "--threads", help="CPU threads: auto (default; measured: 1 when the cores are "
                                "busy, else torch's default) or a number."),
    as_json: bool = typer.Option(False, "--json", help="Print every number as JSON on stdout."),
    gate: bool = typer.Option(False, "--gate", help="Release gate (the run's gate: section; docs/maintenance.md): "
                              "exit 1 with the reason unless the fine-tuned model beats the cheaper approaches by "
                              "the margin, is not worse than --production, and forgets within the thresholds."),
    margin: float = typer.Option(None, "--margin", help="With --gate: same as gate.margin (e.g. 0.02 = 2 points)."),
    production: str = typer.Option(None, "--production", help="With --gate: the production run directory, "
                                   "evaluated on the same examples (same as gate.production)."),
) -> None:
    """Evaluate a fine-tuned run against the cheaper options (prompting, retrieval) and write a report.

    Exit status with --gate: 0 when the gate passes, 1 when it fails; 2 on bad input."""
    from honing.evaluate import evaluate
    from honing.evaluate.config import eval_config

    def progress(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    settings = eval_config(config, overrides, model=model, data=data, baselines=baselines, docs=docs,
                           train_data=train_data, metric=metric, schema=schema, out=out, max_examples=max_examples,
                           max_new_tokens=max_new_tokens, k_shots=k_shots, forgetting=forgetting, dtype=dtype,
                           device=device, threads=threads)
    result = evaluate(config=settings, progress=progress)
    verdict = None
    if gate:
        from honing.lifecycle.gate import gate_evaluation

        verdict = gate_evaluation(result, margin=margin, production=production, progress=progress)
    if as_json:
        print(json.dumps({**result.to_dict(), **({"gate": verdict.to_dict()} if verdict else {})}, indent=2))
    else:
        print(result.summary_table())
        print(f"report: {result.report_html}")
        if verdict:
            print(verdict.summary())
    if verdict is not None and not verdict.passed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)
