"""FSDP2 (``distributed: fsdp``) under ``torchrun --nproc_per_node 2`` on the CPU (gloo): parameters,
gradients and optimizer state sharded across the two processes. Same result as one process on the same
global batch; the fused LoRA layers still engage on sharded layers; sharded checkpoints
(torch.distributed.checkpoint) resume after ``kill -9`` to the uninterrupted result; final/ is a plain
PEFT adapter."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import build_tiny_model_dir, write_arithmetic_chat

from honing.rundir import RunDir
from honing.train import build_config, train

STEPS = 4


def _values(d: Path, out: str) -> dict:
    return {"model": str(d / "tiny"), "data": str(d / "train.jsonl"), "out": str(d / out), "batch_size": 4,
            "micro_batch_size": 2, "max_steps": STEPS, "learning_rate": 5e-3, "dtype": "fp32", "seed": 1,
            "eval_every": 2, "tensorboard": False, "lora.r": 4}


def _torchrun(d: Path, out: str, *extra: str, env_extra: dict | None = None, background: bool = False):
    bindir = Path(sys.executable).parent
    overrides = [f"--set={k}={v}" for k, v in _values(d, out).items()] + ["--set=distributed=fsdp"]
    cmd = [str(bindir / "torchrun"), "--standalone", "--nproc_per_node", "2", "--no-python", str(bindir / "hone"),
           "train", "--quiet", *overrides, *extra]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", **(env_extra or {}))
    if background:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    return subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=300)


def _adapter(run: Path) -> dict:
    return load_file(str(run / "final" / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    d = tmp_path_factory.mktemp("fsdp")
    build_tiny_model_dir(d / "tiny")
    write_arithmetic_chat(d / "train.jsonl", 27)  # 24 train + 3 held out
    return d


@pytest.fixture(scope="module")
def fsdp_run(d):
    done = _torchrun(d, "fsdp")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return d / "fsdp", done.stdout


def test_fsdp_two_processes_match_one(d, fsdp_run):
    run_dir, stdout = fsdp_run
    single = train(build_config(values=_values(d, "single")), log=lambda _m: None)
    rec = RunDir(run_dir).record()
    assert rec["world_size"] == 2 and rec["status"] == "completed"
    assert "distributed: fsdp over 2 processes (gloo)" in stdout
    # The fused path is applied before sharding and still engages on FSDP's renamed layer classes.
    assert "fused path on 2 of 2 decoder layers" in stdout
    fsdp_rows, single_rows = RunDir(run_dir).metrics(), RunDir(single.run_dir).metrics()
    assert [r.get("lines") for r in fsdp_rows] == [r.get("lines") for r in single_rows]
    for a, b in zip(fsdp_rows, single_rows, strict=True):
        for key in ("train_loss", "eval_loss", "grad_norm"):
            if key in b:
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a["step"], key)
    # Sharded checkpoints: one DCP directory with a file per process.
    shards = RunDir(run_dir).checkpoints()[-1].path / "sharded"
    assert (shards / ".metadata").is_file() and len(list(shards.glob("*.distcp"))) == 2
    a, b = _adapter(single.run_dir), _adapter(run_dir)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-6, msg=name)
    assert any(b[n].abs().sum() > 0 for n in b if "lora_B" in n)  # training moved the adapter


def test_fsdp_resumes_after_kill9(d, fsdp_run):
    """Killed while writing the step-4 checkpoint (step 2 complete): the resumed run ends with the
    uninterrupted run's adapter."""
    run_dir = d / "killed"
    proc = _torchrun(d, "killed", env_extra={"HONING_TEST_SAVE_DELAY": "4"}, background=True)
    deadline = time.time() + 240
    while not (run_dir / "checkpoints" / ".tmp-step-4").exists():
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() < deadline, "the step-4 save never started"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert [c.step for c in RunDir(run_dir).checkpoints()] == [2]

    done = _torchrun(d, "killed", "--resume")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "resuming from" in done.stdout
    a, b = _adapter(fsdp_run[0]), _adapter(run_dir)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-7, msg=name)
