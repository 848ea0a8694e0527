"""Reward of a model on RFT rows: greedy completions graded by a grader; and the paired difference of two.

    python examples/rft_word_count/measure.py score --model smollm2-135m-instruct --out base.json
    python examples/rft_word_count/measure.py score --model runs/rft_word_count --out grpo.json
    python examples/rft_word_count/measure.py compare base.json grpo.json

``score`` writes every row's completion, reward and sub-rewards, and the mean reward with its bootstrap 95% CI
(honing.evaluate.bootstrap); ``compare`` prints both means and the paired bootstrap CI of the difference
(second minus first), over the same rows. Greedy decoding, as GRPO's validation reward (eval_temperature 0).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def score(model_ref: str, data: Path, grader_path: Path, max_new_tokens: int, limit: int | None) -> dict:
    import torch

    from honing.data.rft import read_rft
    from honing.evaluate.bootstrap import mean_ci
    from honing.evaluate.generation import generate
    from honing.graders import Sample, load_grader
    from honing.models.loading import load_for_inference

    spec = json.loads(grader_path.read_text(encoding="utf-8"))
    grader = load_grader(spec)
    rows = read_rft(data, grader.item_fields())[:limit]
    model, tokenizer, _ = load_for_inference(model_ref, dtype=torch.float32)
    start_cpu, start = time.process_time(), time.perf_counter()
    prompts = [list(r.prompt) for r in rows]
    texts = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens).texts
    with grader:
        results = grader.grade([Sample(output_text=t, item=r.item) for t, r in zip(texts, rows)])
    rewards = [r.reward for r in results]
    ci = mean_ci(rewards)
    return {
        "model": model_ref, "data": str(data), "grader": str(grader_path), "rows": len(rows),
        "max_new_tokens": max_new_tokens, "mean_reward": ci.estimate, "ci": [ci.low, ci.high],
        "generation_wall_s": round(time.perf_counter() - start, 1),
        "generation_cpu_s": round(time.process_time() - start_cpu, 1),
        "per_row": [{"item": r.item, "completion": t, "reward": g.reward, "sub_rewards": g.sub_rewards}
                    for r, t, g in zip(rows, texts, results)],
    }


def compare(first: dict, second: dict) -> dict:
    from honing.evaluate.bootstrap import paired_difference_ci

    a = [r["reward"] for r in first["per_row"]]
    b = [r["reward"] for r in second["per_row"]]
    if [r["item"] for r in first["per_row"]] != [r["item"] for r in second["per_row"]]:
        raise SystemExit("compare: the two files grade different rows")
    d = paired_difference_ci(b, a)
    return {"first": first["model"], "second": second["model"], "rows": len(a),
            "first_mean": round(first["mean_reward"], 4), "second_mean": round(second["mean_reward"], 4),
            "difference": round(d.estimate, 4), "difference_ci": [round(d.low, 4), round(d.high, 4)]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("score", help="grade a model's greedy completions")
    s.add_argument("--model", required=True, help="a catalog name, model directory or training run directory")
    s.add_argument("--data", type=Path, default=HERE / "rft_eval.jsonl")
    s.add_argument("--grader", type=Path, default=HERE / "grader.json")
    s.add_argument("--max-new-tokens", type=int, default=48)
    s.add_argument("--limit", type=int, default=None, help="only the first N rows")
    s.add_argument("--out", type=Path, required=True)
    c = sub.add_parser("compare", help="paired difference of two score files (second minus first)")
    c.add_argument("first", type=Path)
    c.add_argument("second", type=Path)
    args = parser.parse_args(argv)
    from honing.fileio import write_json_atomic

    if args.command == "score":
        result = score(args.model, args.data, args.grader, args.max_new_tokens, args.limit)
        write_json_atomic(args.out, result)
        print(json.dumps({k: v for k, v in result.items() if k != "per_row"}))
    else:
        first, second = (json.loads(p.read_text(encoding="utf-8")) for p in (args.first, args.second))
        print(json.dumps(compare(first, second)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
