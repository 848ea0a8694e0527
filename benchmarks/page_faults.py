"""Per-step overhead of returning memory to the OS: minor page faults and kernel CPU time of a short
training run, with malloc_trim after every step (the old policy) vs only when RSS grew (the runtime's
HeapTrimmer) vs never. Each policy runs in its own fresh process, alternating order over rounds.

    HF_HUB_OFFLINE=1 HONING_CACHE_DIR=.cache .venv/bin/python benchmarks/page_faults.py --steps 12 --rounds 2

Short examples are where this matters: a 60-token step allocates and frees the same few hundred MB,
and trimming it away every step means faulting it back in on the next one.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
POLICIES = {"every-step": -1.0, "on-growth": 0.10, "never": float("inf")}


def _short_chats(path: Path, n: int, long: bool) -> None:
    """Real demo examples: the docstring prompts cut short (~60 tokens) or kept whole (long)."""
    rows = [json.loads(line) for line in (REPO / "examples/docstring_module/train.jsonl").read_text().splitlines()]
    out = []
    for r in rows[:n]:
        msgs = r["messages"]
        if not long:
            msgs = [dict(m, content=" ".join(m["content"].split()[:30])) if m["role"] == "user" else m for m in msgs]
        out.append(json.dumps({"messages": msgs}))
    path.write_text("\n".join(out) + "\n")


def _run(policy: str, steps: int, long: bool, q) -> None:
    from honing.train import build_config, train
    from honing.train import runtime as rt

    growth = POLICIES[policy]
    original = rt.HeapTrimmer.__init__

    def init(self, growth_=growth, slack_mb=0.0 if growth < 0 else 64.0, rss=rt.current_rss_mb):
        original(self, growth=growth_, slack_mb=slack_mb, rss=rss)
        if growth_ == float("inf"):
            self._trim = None

    rt.HeapTrimmer.__init__ = init
    with tempfile.TemporaryDirectory() as d:
        data = Path(d) / "train.jsonl"
        _short_chats(data, 16 * steps, long)
        cfg = build_config(values={"data": str(data), "out": str(Path(d) / "run"), "batch_size": 16,
                                   "max_steps": steps, "eval_fraction": 0, "tensorboard": False,
                                   "dtype": "fp32", "learning_rate": 1e-4, "lora.top_layers": 8})
        before = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        result = train(cfg, log=lambda _m: None)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_SELF)
    q.put({"policy": policy, "wall_s": round(wall, 2),
           "minor_faults": after.ru_minflt - before.ru_minflt,
           "user_s": round(after.ru_utime - before.ru_utime, 2), "sys_s": round(after.ru_stime - before.ru_stime, 2),
           "peak_rss_mb": result.peak_memory_mb, "input_tokens_per_s": result.input_tokens_per_s})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--long", action="store_true", help="whole docstrings (~90-400 tokens) instead of ~60 tokens")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/page_faults.json"))
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    results = []
    order = list(POLICIES)
    for r in range(args.rounds):
        for policy in (order if r % 2 == 0 else order[::-1]):
            q = ctx.Queue()
            p = ctx.Process(target=_run, args=(policy, args.steps, args.long, q))
            p.start()
            res = q.get()
            p.join()
            res["round"] = r
            results.append(res)
            print(json.dumps(res), flush=True)
    record = {"command": " ".join(sys.argv), "steps": args.steps, "long": args.long, "results": results}
    path = Path(args.out)
    old = json.loads(path.read_text()) if path.is_file() else {}
    old["long" if args.long else "short"] = record
    path.write_text(json.dumps(old, indent=2) + "\n")


if __name__ == "__main__":
    main()
