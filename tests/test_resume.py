"""``hone train --resume`` after ``kill -9``: a real training subprocess is killed once right after its
first complete checkpoint and once in the middle of a save (the save-delay hook holds it between writing
the weights and writing COMPLETE); the resumed run must end with the same adapter weights, bit for bit,
as an uninterrupted run, having trained on the same examples in the same order."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from train_helpers import build_tiny_model_dir, write_arithmetic_chat

from honing.train.checkpoint import SAVE_DELAY_ENV

HONE = [str(Path(sys.executable).with_name("hone"))]
MAX_STEPS = 10


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume")
    build_tiny_model_dir(d / "tiny")
    write_arithmetic_chat(d / "train.jsonl", 40)
    recipe = {
        "model": str(d / "tiny"), "data": str(d / "train.jsonl"), "batch_size": 4, "micro_batch_size": 2,
        "epochs": 2, "max_steps": MAX_STEPS, "learning_rate": 5e-3, "dtype": "fp32", "seed": 3,
        "save_every": 2, "eval_every": 3, "keep_checkpoints": 2, "early_stopping_patience": None,
        "tensorboard": False, "lora": {"r": 4, "dropout": 0.1},  # dropout: the RNG state must be restored too
    }
    (d / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return d


def _env(save_delay: float = 0.0) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop(SAVE_DELAY_ENV, None)
    if save_delay:
        env[SAVE_DELAY_ENV] = str(save_delay)
    return env


def _cmd(setup: Path, out: str, resume: bool = False) -> list[str]:
    return HONE + ["train", str(setup / "recipe.yaml"), "--out", str(setup / out), "--quiet"] + (
        ["--resume"] if resume else []
    )


def _run(cmd, env) -> None:
    done = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _kill_when(cmd, env, condition, what: str) -> None:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 180
        while not condition():
            if proc.poll() is not None:
                pytest.fail(f"training ended before {what}: {proc.stderr.read()[-3000:]}")
            if time.time() > deadline:
                pytest.fail(f"timed out waiting for {what}")
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def _complete_steps(run: Path) -> list[int]:
    root = run / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(int(c.name.split("-")[1]) for c in root.glob("step-*") if (c / "COMPLETE").is_file())


def _half_written(run: Path, after: int) -> bool:
    """A save in progress past step ``after``: the weights are written, COMPLETE is not."""
    for tmp in (run / "checkpoints").glob(".tmp-step-*"):
        if int(tmp.name.split("-")[-1]) > after and (tmp / "trainable.safetensors").is_file():
            return True
    return False


def _train_rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "train_loss" in r]


def test_resume_after_kill_9_is_bitwise_identical(setup):
    _run(_cmd(setup, "straight"), _env())

    killed = setup / "killed"
    # Kill 1: the moment the first checkpoint is complete (saves are slowed so the process is caught
    # mid-run, usually inside the next step or the next save).
    _kill_when(_cmd(setup, "killed"), _env(save_delay=0.3), lambda: _complete_steps(killed), "a first checkpoint")
    first = _complete_steps(killed)
    assert first and first[-1] < MAX_STEPS

    # Kill 2: resume, then kill while a later checkpoint is half written.
    _kill_when(_cmd(setup, "killed", resume=True), _env(save_delay=30), lambda: _half_written(killed, first[-1]),
               "a half-written checkpoint")
    assert list((killed / "checkpoints").glob(".tmp-step-*")), "the kill should leave a partial save behind"
    assert not (killed / "final").exists()

    _run(_cmd(setup, "killed", resume=True), _env())

    a = load_file(str(setup / "straight" / "final" / "adapter_model.safetensors"))
    b = load_file(str(killed / "final" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and a
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs after resume"
    assert not list((killed / "checkpoints").glob(".tmp-step-*")), "partial saves are cleaned on resume"

    # Same data order, nothing skipped or repeated: the per-step example lines and losses match.
    straight_rows, killed_rows = _train_rows(setup / "straight"), _train_rows(killed)
    assert [r["step"] for r in killed_rows] == list(range(1, MAX_STEPS + 1))
    assert [r["lines"] for r in killed_rows] == [r["lines"] for r in straight_rows]
    assert [r["train_loss"] for r in killed_rows] == [r["train_loss"] for r in straight_rows]
    run = json.loads((killed / "run.json").read_text())
    steps_per_epoch = -(-run["dataset"]["train"]["examples"] // 4)
    epoch0 = [line for r in killed_rows[:steps_per_epoch] for line in r["lines"]]
    assert len(epoch0) == len(set(epoch0)) == run["dataset"]["train"]["examples"]
    assert run["status"] == "completed"
