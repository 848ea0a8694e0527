"""Which speed levers pay on this machine? One LoRA training job, one lever changed at a time.

Each lever runs in its own subprocess (so its peak RSS is its own) on the benchmark's data
(``bench.synth_chats``: 64 chats, 64..1,024 tokens, seed 0) in the training loop's example order
(``step_indices``, seed 42): SmolLM2-135M-Instruct, fp32, LoRA r=16 alpha 32 all-linear, 4 examples per
optimizer step, loss = Honing's chunked trained-tokens-only cross-entropy, AdamW. The first step is a
warm-up and not timed. tokens/s counts non-padding tokens; tokens/CPU-s divides them by the process's
CPU time instead of wall time, which moves less when other jobs share the cores.

Levers (``--levers``, comma-separated):
  base        one example per forward (micro-batch 1: no padding, no cross-example attention), sdpa,
              LoRA dropout 0, lm_head chunk checkpointed only when there is more than one chunk
  head-ckpt   base + always checkpoint the lm_head chunk (recompute the vocabulary matmul in backward)
  pack2       2 examples packed per row (block-diagonal attention from position_ids)
  pack4       all 4 examples of the step packed in one row
  padded4     4 examples right-padded into [4, L] with an attention mask (what a padded trainer does)
  eager       base with eager attention instead of sdpa
  dropout     base with LoRA dropout 0.05 (the config default)
  grad-ckpt   base with activation (gradient) checkpointing of the decoder layers (memory lever)

Usage:
    HF_HUB_OFFLINE=1 HONING_CACHE_DIR=.cache .venv/bin/python benchmarks/levers.py --steps 3 [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

LEVERS = ["base", "head-ckpt", "pack2", "pack4", "padded4", "eager", "dropout", "grad-ckpt"]


def run_lever(lever: str, steps: int, data_file: str, threads: int) -> dict:
    """Train ``steps`` optimizer steps with one lever; returns tokens/s over steps 2.. and peak RSS."""
    import resource

    import torch
    from peft import LoraConfig, get_peft_model

    from honing.models.loading import load_model, load_tokenizer
    from honing.train.batching import step_indices
    from honing.train.dataset import read_examples, render_set
    from honing.train.losses import causal_lm_loss_sum
    from honing.train.packing import collate_packed, collate_padded

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    tok = load_tokenizer("smollm2-135m-instruct")
    items = render_set(tok, read_examples(data_file, "auto"), 1024, data_file, "-").items
    model, _, _ = load_model("smollm2-135m-instruct", dtype=torch.float32)
    if lever == "eager":
        model.config._attn_implementation = "eager"
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05 if lever == "dropout" else 0.0,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    model.config.use_cache = False
    if lever == "grad-ckpt":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4)
    per_forward = {"pack2": 2, "pack4": 4, "padded4": 4}.get(lever, 1)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ckpt = True if lever == "head-ckpt" else None
    seconds, cpu_seconds, tokens, losses = [], [], [], []
    for s in range(steps):
        idx = step_indices(len(items), 4, 42, s)[1]
        n_trained = sum(sum(items[i].loss_mask[1:]) for i in idx)
        t0, c0 = time.perf_counter(), time.process_time()
        loss_total = 0.0
        for j in range(0, len(idx), per_forward):
            group = [items[i] for i in idx[j : j + per_forward]]
            batch = collate_padded(group, pad_id) if lever == "padded4" else collate_packed(group)
            labels = batch.pop("labels")
            part, _ = causal_lm_loss_sum(model, batch, labels, checkpoint_chunks=ckpt)
            (part / n_trained).backward()
            loss_total += float(part.detach())
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - t0)
        cpu_seconds.append(time.process_time() - c0)
        tokens.append(sum(len(items[i]) for i in idx))
        losses.append(loss_total / n_trained)
        print(f"[{lever}] step {s + 1}: {tokens[-1]} tokens in {seconds[-1]:.1f}s, loss {losses[-1]:.4f}", flush=True)
    timed = slice(1, None) if steps > 1 else slice(None)
    return {"lever": lever, "tokens_per_s": sum(tokens[timed]) / sum(seconds[timed]),
            "tokens_per_cpu_s": sum(tokens[timed]) / sum(cpu_seconds[timed]), "losses": losses,
            "step_seconds": seconds, "step_cpu_seconds": cpu_seconds, "step_tokens": tokens,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--levers", default=",".join(LEVERS))
    ap.add_argument("--json", default=str(HERE / "results" / "levers.json"))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--child", nargs=4, metavar=("LEVER", "STEPS", "DATA", "THREADS"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        lever, steps, data, threads = a.child
        print("RESULT " + json.dumps(run_lever(lever, int(steps), data, int(threads))), flush=True)
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from bench import synth_chats

    data = Path(tempfile.mkdtemp(prefix="honing-levers-"), "train.jsonl")
    data.write_text("".join(json.dumps(c) + "\n" for c in synth_chats(64, seed=0, max_tokens=1024)))
    results = []
    for lever in a.levers.split(","):
        if lever not in LEVERS:
            raise SystemExit(f"unknown lever {lever!r}; choose from {', '.join(LEVERS)}")
        out = subprocess.run([sys.executable, __file__, "--child", lever, str(a.steps), str(data), str(a.threads)],
                             check=True, capture_output=True, text=True)
        line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
        results.append(json.loads(line[len("RESULT "):]))
        r = results[-1]
        print(f"{lever:>10}: {r['tokens_per_s']:7.1f} tokens/s  {r['tokens_per_cpu_s']:6.1f} tokens/CPU-s  peak RSS {r['peak_rss_gb']:.2f} GB  "
              f"losses {' '.join(f'{x:.4f}' for x in r['losses'])}", flush=True)
    base = next((r for r in results if r["lever"] == "base"), None)
    print("\n| lever | tokens/s | vs base | tokens/CPU-s | vs base | peak RSS GB |\n| --- | --- | --- | --- | --- | --- |")
    for r in results:
        ratio = f"x{r['tokens_per_s'] / base['tokens_per_s']:.2f}" if base else "-"
        cratio = f"x{r['tokens_per_cpu_s'] / base['tokens_per_cpu_s']:.2f}" if base else "-"
        print(f"| {r['lever']} | {r['tokens_per_s']:.1f} | {ratio} | {r['tokens_per_cpu_s']:.1f} | {cratio} | "
              f"{r['peak_rss_gb']:.2f} |")
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(a.json).with_suffix(".tmp")
    tmp.write_text(json.dumps({"steps": a.steps, "threads": a.threads, "load_avg_at_end": os.getloadavg(), "results": results}, indent=2))
    os.replace(tmp, a.json)
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
