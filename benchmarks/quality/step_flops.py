#!/usr/bin/env python
"""FLOPs per training token of the demo recipe's step (LoRA r16 on all linear layers of the top 8 of 30,
head on trained positions only), counted by torch's FlopCounterMode; and this CPU's bf16/fp32 matmul rate."""
import sys, time, json, torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForCausalLM
from peft import LoraConfig, get_peft_model


path = sys.argv[1]
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
n_layers = model.config.num_hidden_layers
cfg = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj","k_proj","v_proj","o_proj","gate_proj","up_proj","down_proj"], layers_to_transform=list(range(n_layers - 8, n_layers)))
model = get_peft_model(model, cfg)
B, T, trained = 8, 89, 4
ids = torch.randint(0, 49152, (B, T))
with FlopCounterMode(display=False) as fc:
    h = model.base_model.model.model(input_ids=ids).last_hidden_state
    logits = model.base_model.model.lm_head(h[:, -trained:, :].contiguous())
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ids[:, -trained:].reshape(-1))
    loss.backward()
flops = fc.get_total_flops()
per_token = flops / (B * T)

def rate(dtype, n=2048, reps=5):
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best = 1e9
    for _ in range(reps):
        t = time.perf_counter(); a @ b; best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9

def mlp_rate(dtype, rows=712, reps=10):  # the step's own shape: [8x89, 576] @ [576, 1536]
    x, w = torch.randn(rows, 576).to(dtype), torch.randn(1536, 576).to(dtype)
    torch.nn.functional.linear(x, w)
    best = 1e9
    for _ in range(reps):
        t = time.perf_counter(); torch.nn.functional.linear(x, w); best = min(best, time.perf_counter() - t)
    return 2 * rows * 576 * 1536 / best / 1e9

out = {"flops_per_token": per_token, "threads": torch.get_num_threads(),
       "bf16_gflops_2048": rate(torch.bfloat16), "fp32_gflops_2048": rate(torch.float32),
       "bf16_gflops_mlp_shape": mlp_rate(torch.bfloat16), "fp32_gflops_mlp_shape": mlp_rate(torch.float32)}
print(json.dumps(out, indent=1))
