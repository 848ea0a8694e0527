"""The same loop under ``torchrun --nproc_per_node 2`` (CPU, gloo, DDP): each process trains on its shard
of every global batch and rank 0 logs and saves. Two processes x micro-batch 2 must match one process x
micro-batch 2 x accumulation 2 (the same global batch of 4) up to float summation order."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import build_tiny_model_dir, write_arithmetic_chat

from honing.train import build_config, train

STEPS = 4


def _values(d: Path, out: str) -> dict:
    return {"model": str(d / "tiny"), "data": str(d / "train.jsonl"), "out": str(d / out), "batch_size": 4,
            "micro_batch_size": 2, "max_steps": STEPS, "learning_rate": 5e-3, "dtype": "fp32", "seed": 1,
            "eval_every": 2, "tensorboard": False, "lora.r": 4, "lora.dropout": 0.0}


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_match_one(tmp_path):
    build_tiny_model_dir(tmp_path / "tiny")
    write_arithmetic_chat(tmp_path / "train.jsonl", 27)  # 24 train + 3 held out: 6 steps per epoch

    single = train(build_config(values=_values(tmp_path, "single")), log=lambda _m: None)

    bindir = Path(sys.executable).parent
    overrides = [f"--set={k}={v}" for k, v in _values(tmp_path, "ddp").items()]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    done = subprocess.run(
        [str(bindir / "torchrun"), "--standalone", "--nproc_per_node", "2", "--no-python", str(bindir / "hone"),
         "train", "--quiet", *overrides],
        check=False, env=env, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ddp_dir = tmp_path / "ddp"

    run = json.loads((ddp_dir / "run.json").read_text())
    assert run["world_size"] == 2 and run["status"] == "completed"
    # Rank 0 alone reports: one summary, one metrics row per step (plus the step-0 eval).
    assert done.stdout.count("trainable parameters") == 1
    ddp_rows, single_rows = _rows(ddp_dir), _rows(single.run_dir)
    assert [r["step"] for r in ddp_rows] == [r["step"] for r in single_rows] == list(range(STEPS + 1))
    # Same examples in every step, same losses up to summation order.
    assert [r.get("lines") for r in ddp_rows] == [r.get("lines") for r in single_rows]
    for a, b in zip(ddp_rows, single_rows, strict=True):
        for key in ("train_loss", "eval_loss", "grad_norm"):
            if key in b:
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a["step"], key)
    # Each process saved its RNG state in the checkpoints.
    last = ddp_dir / "checkpoints" / f"step-{STEPS}"
    assert (last / "rng-rank0.pt").is_file() and (last / "rng-rank1.pt").is_file()

    a = load_file(str(single.final_dir / "adapter_model.safetensors"))
    b = load_file(str(ddp_dir / "final" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    moved = 0
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-6, msg=name)
        if "lora_B" in name:  # initialized to zeros: nonzero means training moved it
            moved += int(b[name].abs().sum() > 0)
    assert moved > 0
