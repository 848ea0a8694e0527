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
    import io
    import itertools

    out = io.StringIO()  # not a terminal: plain lines, as under nohup or in CI logs
    bar = Progress(total=10, start=0, enabled=True, stream=out)
    t0 = bar.t0
    bar.clock = itertools.repeat(t0 + 20.0).__next__  # 2 steps took 20 s -> 8 steps left take 80 s
    bar.update(2, loss=1.5, eval_loss=1.2, tps=218.0, eps=2.5, forgetting=1.083)  # an eval: always a line
    bar.update(3, loss=1.4, tps=220.0)  # 0 s since the last line: none
    bar.clock = itertools.repeat(t0 + 20.0 + Progress.LINE_EVERY_S).__next__
    bar.update(4, loss=1.3, tps=221.0)  # LINE_EVERY_S later: a line
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "step 2/10  loss 1.5000  eval 1.2000  2.5 ex/s  218 tok/s  forgetting ppl +8%  ETA 1:20"
    assert len(lines) == 2 and lines[1].startswith("step 4/10  loss 1.3000  eval 1.2000")


def test_closing_paragraph_names_the_objective_and_method(tmp_path):
    dpo = build_config(values={"data": "d.jsonl", "objective": "dpo", "lora": {"r": 8}})
    assert closing_paragraph(_result(tmp_path), dpo).startswith("Trained a DPO LoRA (rank 8) adapter")
    full_cpt = build_config(values={"data": "d.txt", "objective": "cpt", "method": "full"})
    assert closing_paragraph(_result(tmp_path), full_cpt).startswith(
        "Fine-tuned every weight of smollm2-135m-instruct (continued pre-training)")


def _lines_at(total: int, seconds_per_step: float, evals: tuple[int, ...] = ()) -> list[int]:
    """Steps at which a non-terminal Progress prints, on a fake clock advancing ``seconds_per_step``."""
    import io

    out = io.StringIO()
    bar = Progress(total=total, start=0, enabled=True, stream=out)
    now = [bar.t0]
    bar.clock = lambda: now[0]
    for step in range(1, total + 1):
        now[0] += seconds_per_step
        bar.update(step, loss=1.0, eval_loss=0.5 if step in evals else None, tps=100.0)
    return [int(line.split()[1].split("/")[0]) for line in out.getvalue().splitlines()]


def test_progress_lines_off_a_terminal_keep_a_steady_cadence():
    # Fast steps (1 s, 1,000 steps -> every 10 steps would be 10 s): ~30 s apart, not a line per 10 steps.
    fast = _lines_at(1000, 1.0)
    assert fast[:3] == [1, 31, 61] and fast[-1] == 1000
    # Slow steps (60 s each): every 10 steps (a hundredth of the run), not one per step.
    slow = _lines_at(1000, 60.0)
    assert slow[:3] == [1, 11, 21] and slow[-1] == 1000 and len(slow) == 101
    # A short run prints its first and last step; an eval always prints.
    assert _lines_at(5, 1.0) == [1, 5]
    assert _lines_at(5, 1.0, evals=(3,)) == [1, 3, 5]


def test_the_time_to_first_step_is_in_the_closing_paragraph_and_the_summary(tmp_path):
    from honing.train.reporting import StartupClock, write_summary

    clock = StartupClock(origin=100.0, counted_from="the process's start")
    now = iter([103.0, 104.5, 106.25])
    clock.clock = lambda: next(now)
    clock.lap("imports")
    clock.lap("model and tokenizer")
    clock.first_step_done()
    startup = clock.record()
    assert startup == {"time_to_first_step_s": 6.25, "counted_from": "the process's start",
                       "phases": {"imports": 3.0, "model and tokenizer": 1.5, "first optimizer step": 1.75}}
    (tmp_path / "run.json").write_text(json.dumps({"wall_seconds": 372.0, "startup": startup}))
    result = SimpleNamespace(run_dir=tmp_path, final_dir=tmp_path / "final", steps=3, hyperparameters={"batch_size": 8},
                             input_tokens_per_s=218.4, tokens_per_s=5.4, peak_memory_mb=2150.0)
    config = build_config(values={"data": "d.jsonl"})
    assert "in 6.2 min, the first step 6.2 s after the start (" in closing_paragraph(result, config)
    run = {"status": "completed", "base_model": {"reference": "m", "source": "catalog"}, "method": "lora",
           "objective": "sft", "steps_done": 3, "startup": startup}
    hp = {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3, "total_steps": 3}
    text = write_summary(tmp_path, run, hp, [])
    assert ("- time to first step: 6.2 s from the process's start (imports 3.0, model and tokenizer 1.5, "
            "first optimizer step 1.8)") in text
