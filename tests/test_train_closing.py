"""What `hone train` ends with: one short paragraph (what was trained, how good against the baselines,
what it cost, where it is), and the progress line's fields."""

from __future__ import annotations

import json
from types import SimpleNamespace

from honing.train import build_config
from honing.train.reporting import Progress, closing_paragraph


def _result(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"wall_seconds": 372.0}))
    return SimpleNamespace(run_dir=tmp_path, final_dir=tmp_path / "final", steps=123, hyperparameters={"batch_size": 8},
                           input_tokens_per_s=218.4, tokens_per_s=5.4, peak_memory_mb=2150.0)


def test_closing_paragraph_names_the_result_the_baselines_the_cost_and_the_place(tmp_path):
    config = build_config(values={"data": "d.jsonl", "lora": {"r": 16, "top_layers": 8}})
    approach = lambda name, v: SimpleNamespace(name=name, primary_value=v)
    evaluation = SimpleNamespace(
        approaches=[approach("zero-shot", 0.037), approach("few-shot", 0.654), approach("fine-tuned", 0.721)],
        primary="accuracy", n_examples=240, report_html=tmp_path / "eval" / "report.html",
        verdict="fine-tuned wins: accuracy 0.721 vs few-shot 0.654 (+6.7 points, 95% CI +0.4 to +13.3).",
        forgetting={"flagged": False, "reasons": [], "perplexity_change": 0.08, "qa_accuracy_change": -0.05})
    text = closing_paragraph(_result(tmp_path), config, evaluation)
    assert "\n" not in text
    for part in ("Trained a LoRA (rank 16, top 8 layers) adapter", "123 steps x 8 examples", "6.2 min", "218 tokens/s of all tokens",
                 "accuracy is 0.721 (vs zero-shot 0.037, few-shot 0.654)", "+6.7 points", "perplexity +8%",
                 "QA -5 points (within the thresholds)", str(tmp_path / "final"), "report.html"):
        assert part in text, part
    flagged = dict(evaluation.forgetting, flagged=True, reasons=["general QA accuracy down 50.0 points (threshold 10)"])
    evaluation.forgetting = flagged
    assert "flagged: general QA accuracy down 50.0 points" in closing_paragraph(_result(tmp_path), config, evaluation)
    # Without an evaluation: what was trained, the cost and the place only.
    bare = closing_paragraph(_result(tmp_path), config, None)
    assert "held-out" not in bare and str(tmp_path / "final") in bare


def test_progress_line_shows_rates_forgetting_and_a_whole_run_eta():
    bar = Progress(total=10, start=0, enabled=True)
    try:
        bar.clock = iter([bar.t0 + 20.0]).__next__  # 2 steps took 20 s -> 8 steps left take 80 s
        bar.update(2, loss=1.5, eval_loss=1.2, tps=218.0, eps=2.5, forgetting=1.083)
        fields = bar.bar.tasks[0].fields
    finally:
        bar.close()
    assert (fields["tps"], fields["eps"], fields["forget"], fields["eta"]) == ("218", "2.5", "ppl +8%", "1:20")


def test_closing_paragraph_names_the_objective_and_method(tmp_path):
    dpo = build_config(values={"data": "d.jsonl", "objective": "dpo", "lora": {"r": 8}})
    assert closing_paragraph(_result(tmp_path), dpo).startswith("Trained a DPO LoRA (rank 8) adapter")
    full_cpt = build_config(values={"data": "d.txt", "objective": "cpt", "method": "full"})
    assert closing_paragraph(_result(tmp_path), full_cpt).startswith(
        "Fine-tuned every weight of smollm2-135m-instruct (continued pre-training)")
