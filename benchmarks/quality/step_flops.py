"""FLOPs per training token of the demo recipe's step, and this CPU's bf16 / fp32 matmul rates.

The step: LoRA r 16 on every linear layer of the top 8 of 30 decoder layers, a [8, 89] batch (the demo's
mean example length), the head on the trained positions only; counted by torch's FlopCounterMode. Divide
the step's measured tokens/s by the rate to see what share of the machine's matmul throughput a step uses.

Usage: python benchmarks/quality/step_flops.py MODEL_DIR   (e.g. ~/.cache/honing/models/smollm2-135m-instruct)
"""

from __future__ import annotations

import json
import sys
import time

import torch
from peft import LoraConfig, get_peft_model
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForCausalLM

BATCH, LENGTH, TRAINED = 8, 89, 4
LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def step_flops_per_token(path: str) -> float:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    n = model.config.num_hidden_layers
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=LINEAR,
                                             layers_to_transform=list(range(n - 8, n))))
    inner = model.base_model.model
    ids = torch.randint(0, inner.config.vocab_size, (BATCH, LENGTH))
    with FlopCounterMode(display=False) as counter:
        hidden = inner.model(input_ids=ids).last_hidden_state
        logits = inner.lm_head(hidden[:, -TRAINED:, :].contiguous())
        torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                          ids[:, -TRAINED:].reshape(-1)).backward()
    return counter.get_total_flops() / (BATCH * LENGTH)


def matmul_gflops(rows: int, inner: int, cols: int, dtype, reps: int = 5) -> float:
    """Best of ``reps`` for a [rows, inner] @ [inner, cols] matmul, after one warm-up call."""
    a, b = torch.randn(rows, inner).to(dtype), torch.randn(inner, cols).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * rows * inner * cols / best / 1e9


def main() -> None:
    mlp = (BATCH * LENGTH, 576, 1536)  # the step's own MLP shape for SmolLM2-135M
    print(json.dumps({
        "flops_per_token": step_flops_per_token(sys.argv[1]), "threads": torch.get_num_threads(),
        "bf16_gflops_2048": matmul_gflops(2048, 2048, 2048, torch.bfloat16),
        "fp32_gflops_2048": matmul_gflops(2048, 2048, 2048, torch.float32),
        "bf16_gflops_mlp_shape": matmul_gflops(*mlp, torch.bfloat16, reps=10),
        "fp32_gflops_mlp_shape": matmul_gflops(*mlp, torch.float32, reps=10),
    }, indent=1))


if __name__ == "__main__":
    main()
