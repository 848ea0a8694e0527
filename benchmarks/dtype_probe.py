"""Which compute dtype is fastest for LoRA training of SmolLM2-135M on this CPU?

Times forward+backward (packed row, chunked loss) for:
  fp32             fp32 weights, fp32 LoRA
  bf16-base        bf16 frozen weights, fp32 LoRA (peft autocast_adapter_dtype) - Honing's `dtype: bf16`
  fp32+autocast    fp32 weights, torch.autocast("cpu", bfloat16)
  bf16-all         everything bf16
Usage: HF_HUB_OFFLINE=1 HONING_CACHE_DIR=.cache python benchmarks/dtype_probe.py [--tokens 512] [--steps 2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time


def main() -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    from honing.models.loading import load_model
    from honing.train.losses import causal_lm_loss_sum

    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--modes", default="fp32,bf16-base,fp32+autocast,bf16-all")
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, 40000, (1, args.tokens), generator=g)
    labels = ids.clone()
    labels[:, : args.tokens // 2] = -100
    inputs = {"input_ids": ids, "position_ids": torch.arange(args.tokens).unsqueeze(0)}
    results = {}
    for mode in args.modes.split(","):
        load = torch.bfloat16 if mode in ("bf16-base", "bf16-all") else torch.float32
        model, _, _ = load_model("smollm2-135m-instruct", dtype=load)
        torch.manual_seed(0)
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"),
                               autocast_adapter_dtype=mode != "bf16-all")
        model.train()
        ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if mode == "fp32+autocast" else contextlib.nullcontext
        times, losses = [], []
        for step in range(args.steps + 1):
            t0 = time.perf_counter()
            with ctx():
                s, n = causal_lm_loss_sum(model, inputs, labels)
            (s / n).backward()
            model.zero_grad(set_to_none=True)
            if step:  # the first step warms up allocators and kernels
                times.append(time.perf_counter() - t0)
            losses.append(float(s.detach()) / n)
        results[mode] = {"tokens_per_s": round(args.tokens * len(times) / sum(times), 1), "loss": round(losses[0], 5)}
        print(mode, results[mode], flush=True)
        del model
    print(json.dumps(results))


if __name__ == "__main__":
    main()
