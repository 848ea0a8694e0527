"""Two DPO step variants interleaved in ONE process (robust to other jobs on the machine): a DPO micro-step (the
adapter-disabled reference forward + the policy forward and backward) of one pair on SmolLM2-135M-Instruct with
fused LoRA r=16 in fp32, one thread, alternating the two variants pair by pair (the order flips each repeat).
Prints wall and process CPU seconds of each and their ratios. Variants (COMPARE):

* ``layouts`` (default): the shared-prompt row vs two sequences per pair (the shared-prompt change);
* ``head``: the frozen output head's gradient computed in the forward (``FROZEN_HEAD_JACOBIAN``) vs the head
  recomputed under checkpoint in the backward (before), both with the shared-prompt row;
* ``reference``: a later epoch's step, the pair's reference log-probs kept from its first step (``prepare_step``),
  vs the reference forward in every step (before), both with the shared-prompt row.

Usage: HF_HUB_OFFLINE=1 HONING_CACHE_DIR=.cache .venv/bin/python benchmarks/dpo_layouts_ab.py [PAIRS [COMPARE]]
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_dpo import MODEL, make_pairs


def main() -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from honing.config import build_config
    from honing.models.catalog import resolve_model
    from honing.models.loading import load_tokenizer
    from honing.train import preference
    from honing.train.fused_lora import enable_fused_lora
    from honing.train.preference import DPOObjective

    torch.set_num_threads(1)
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    compare = sys.argv[2] if len(sys.argv) > 2 else "layouts"
    names = {"layouts": ("shared prompt", "two sequences"), "head": ("head Jacobian", "head checkpoint"),
             "reference": ("reference kept", "reference each step")}[compare]
    path = Path(tempfile.mkdtemp()) / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in make_pairs(n, seed=0, max_length=512)))
    obj = DPOObjective(build_config(values={"data": str(path), "objective": "dpo", "max_length": 512}))
    obj.reference = "adapter_disabled"
    items = obj.render_set(load_tokenizer(MODEL), obj.read_examples(str(path)), str(path), "x").items
    model = AutoModelForCausalLM.from_pretrained(str(resolve_model(MODEL).path), dtype=torch.float32)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    enable_fused_lora(model)
    model.train()
    if compare == "reference":  # the first epoch's work, done before the timing
        obj._setup = SimpleNamespace(model=model, runtime=SimpleNamespace(to_device=lambda b: b,
                                                                          autocast=contextlib.nullcontext))
        obj.prepare_step(0, [[item] for item in items])
    seconds = {True: [0.0, 0.0], False: [0.0, 0.0]}  # the new variant? -> [wall, process CPU]
    losses = {True: [], False: []}
    for repeat in range(2):
        for item in items:
            for new in (True, False) if repeat % 2 == 0 else (False, True):
                if compare == "layouts":
                    obj.shared_prompt = new
                elif compare == "head":
                    preference.FROZEN_HEAD_JACOBIAN = new
                batch = obj.collate([item], 0)
                if compare == "reference" and not new:
                    del batch["ref_logps"]  # the in-step reference forward runs
                wall, cpu = time.perf_counter(), time.process_time()
                loss = obj.loss(model, batch).loss_sum
                loss.backward()
                seconds[new][0] += time.perf_counter() - wall
                seconds[new][1] += time.process_time() - cpu
                losses[new].append(loss.item())
                model.zero_grad(set_to_none=True)
    print(f"{names[0]}: {seconds[True][0]:.1f} s wall, {seconds[True][1]:.1f} s CPU; "
          f"{names[1]}: {seconds[False][0]:.1f} s wall, {seconds[False][1]:.1f} s CPU; "
          f"largest loss difference {max(abs(a - b) for a, b in zip(losses[True], losses[False])):.2e}")
    print(f"{names[0]} / {names[1]}: x{seconds[False][0] / seconds[True][0]:.2f} wall, "
          f"x{seconds[False][1] / seconds[True][1]:.2f} CPU")


if __name__ == "__main__":
    main()
