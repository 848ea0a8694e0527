"""`hone compare`, `hone retrain`, `hone drift`: keep a fine-tuned model alive. Parsing and printing only;
the work is in honing.lifecycle.

Exit status: 0 done (retrain: the gate passed), 1 retrain's gate failed, 2 bad input (one-line error).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _baselines(text: str) -> list[str]:
    return [b.strip() for b in text.split(",") if b.strip()]


BaselinesOpt = Annotated[str, typer.Option("--baselines", help="Cheaper approaches run once on the (candidate's) "
                                           "base model, comma-separated; empty: none.")]
DocsOpt = Annotated[str | None, typer.Option("--docs", help="Folder of .txt/.md documents for the RAG baseline "
                                             "(default: retrieve over the training answers).")]
MaxExamplesOpt = Annotated[int | None, typer.Option("--max-examples", min=1, help="Evaluate only the first N examples.")]
ForgettingOpt = Annotated[bool, typer.Option("--forgetting/--no-forgetting",
                                             help="General-text perplexity and general QA, before/after, per run.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print every number as JSON on stdout.")]


def compare_cmd(
    runs: Annotated[list[Path], typer.Argument(help="Run directories, oldest first; the last one is the candidate.")],
    data: Annotated[Path, typer.Option("--data", help="Evaluation examples, the same for every run.")],
    baselines: BaselinesOpt = "zero-shot,few-shot,rag",
    train_data: Annotated[Path | None, typer.Option("--train-data", help="Examples for few-shot and RAG (default: "
                                                     "the candidate's training data).")] = None,
    docs: DocsOpt = None,
    max_examples: MaxExamplesOpt = None,
    forgetting: ForgettingOpt = True,
    out: Annotated[Path, typer.Option("--out", help="Report folder.")] = Path("hone-compare"),
    as_json: JsonOpt = False,
) -> None:
    """Evaluate runs on the same examples and compare them: paired bootstrap differences between every pair
    (and the cheaper baselines once), forgetting, training cost and what differs in their lineage."""
    from honing.lifecycle.compare import compare_runs

    c = compare_runs([str(r) for r in runs], data, baselines=_baselines(baselines), train_path=train_data,
                     docs_dir=docs, max_examples=max_examples, forgetting=forgetting, out_dir=out,
                     progress=_progress)
    if as_json:
        print(json.dumps(c.to_dict(), indent=2))
    else:
        print(c.summary_table())
        print(f"report: {c.out_dir / 'report.html'}")


def retrain_cmd(
    run: Annotated[Path, typer.Argument(help="The past run whose resolved recipe is rerun.")],
    model: Annotated[str | None, typer.Option("--model", help="New base model (catalog name, HF directory, .gguf).")]
    = None,
    data: Annotated[Path | None, typer.Option("--data", help="New version of the training data.")] = None,
    eval_data: Annotated[Path | None, typer.Option("--eval-data", help="Eval set for both runs (default: the past "
                                                    "run's eval_data).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="New run directory (default: RUN-retrain).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override any configuration key, gate.* included: "
                                                   "--set gate.margin=0.02 (repeatable).")] = None,
    baselines: BaselinesOpt = "zero-shot,few-shot,rag",
    docs: DocsOpt = None,
    max_examples: MaxExamplesOpt = None,
    forgetting: ForgettingOpt = True,
    quiet: Annotated[bool, typer.Option("--quiet", help="No training progress bar.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Rerun a past run's recipe on a new base model and/or data version, compare old and new on the same
    eval set (with the data diff), and apply the gate (the old run counts as production).

    Exit status: 0 when the gate passes, 1 when it fails (the reasons are printed), 2 on bad input."""
    from honing.lifecycle.retrain import retrain

    r = retrain(run, model=model, data=str(data) if data else None, eval_data=str(eval_data) if eval_data else None,
                out=out, overrides=set_ or [], baselines=_baselines(baselines), docs_dir=docs,
                max_examples=max_examples, forgetting=forgetting, train_progress=not quiet and not as_json,
                log=_progress)
    print(json.dumps(r.to_dict(), indent=2) if as_json else r.summary())
    raise typer.Exit(0 if r.gate.passed else 1)


def drift_cmd(
    reference: Annotated[Path, typer.Option("--reference", help="The training data (any format hone data reads).")],
    current: Annotated[Path, typer.Option("--current", help="Today's inputs: a data file, or request logs in the "
                                          "OpenAI chat format (JSONL with messages; Batch API body; .txt lines).")],
    percentile: Annotated[float, typer.Option("--percentile", help="Threshold for 'far': this percentile of "
                                              "held-out training inputs' distance to the rest.")] = 95.0,
    out: Annotated[Path, typer.Option("--out", help="Report folder.")] = Path("hone-drift"),
    as_json: JsonOpt = False,
) -> None:
    """Are today's inputs still like the training inputs? The share far from every training example,
    clusters of what is new, and a recommendation: retrain, collect more data, or fine."""
    from honing.lifecycle.drift import drift

    d = drift(reference, current, percentile=percentile, out_dir=out, progress=_progress)
    if as_json:
        print(json.dumps(d.to_dict(), indent=2))
    else:
        print(d.summary())
        print(f"report: {d.out_dir / 'report.html'}")


def register(app: typer.Typer) -> None:
    app.command("compare")(compare_cmd)
    app.command("retrain")(retrain_cmd)
    app.command("drift")(drift_cmd)
