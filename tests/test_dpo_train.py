"""DPO and SimPO through the one training loop on a tiny model: step 0 is log 2 with zero rewards, the model
learns to prefer chosen on a separable toy set (eval numbers logged like the train ones), the best checkpoint
follows eval loss, and a full fine-tuning DPO run killed with SIGKILL resumes to the same weights bit for bit
without recomputing its stored reference log-probs."""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from preference_helpers import write_toy_pairs
from safetensors.torch import load_file
from train_helpers import build_tiny_model_dir

from honing.config import build_config
from honing.train import train
from honing.train.preference import REFERENCE_FILE

HONE = [str(Path(sys.executable).with_name("hone"))]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("dpo")
    build_tiny_model_dir(d / "tiny")
    write_toy_pairs(d / "train.jsonl", 32, seed=0)
    write_toy_pairs(d / "eval.jsonl", 8, seed=1, style="openai")  # OpenAI's DPO format for the eval file
    return d


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("objective", ["dpo", "simpo"])
def test_learns_to_prefer_chosen(data, objective):
    cfg = build_config(values={
        "model": str(data / "tiny"), "data": str(data / "train.jsonl"), "eval_data": str(data / "eval.jsonl"),
        "objective": objective, "out": str(data / f"run-{objective}"), "batch_size": 8, "max_steps": 8,
        "learning_rate": 5e-3, "dtype": "fp32", "tensorboard": False, "eval_every": 4, "lora.r": 8,
        "early_stopping_patience": None})
    result = train(cfg, log=lambda _m: None)
    rows = _rows(result.run_dir)
    base, last = rows[0], rows[-1]
    if objective == "dpo":  # a fresh adapter is the reference: loss log 2, zero rewards, no preference yet
        assert base["eval_loss"] == pytest.approx(math.log(2), abs=1e-6)
        assert base["eval_rewards/margin"] == pytest.approx(0.0, abs=1e-6)
        assert base["eval_rewards/accuracy"] == 0.0
    assert last["eval_rewards/accuracy"] == 1.0
    assert last["eval_rewards/margin"] > base["eval_rewards/margin"] + 0.3
    assert last["eval_loss"] < base["eval_loss"] - 0.1
    assert result.best_step == 8 and result.best_eval_loss == pytest.approx(last["eval_loss"])
    for key in ("train_loss", "train_rewards/chosen", "train_rewards/rejected", "train_rewards/margin",
                "train_rewards/accuracy", "train_logps/chosen", "train_logps/rejected"):
        assert key in rows[1], key
    run = json.loads((result.run_dir / "run.json").read_text())
    assert run["objective"] == objective and run["dataset"]["train"]["pairs"] == 32
    assert (result.run_dir / "final" / "adapter_model.safetensors").is_file()
    assert not (result.run_dir / REFERENCE_FILE).exists()  # the LoRA reference is the adapter switched off


def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("HONING_SAVE_DELAY", None)
    return env


def _cmd(d: Path, out: str, resume: bool = False) -> list[str]:
    return HONE + ["train", str(d / "full.yaml"), "--out", str(d / out), "--quiet"] + (["--resume"] if resume else [])


def _run(cmd) -> str:
    done = subprocess.run(cmd, check=False, env=_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_full_dpo_resume_after_kill_9_is_bitwise_identical(data):
    from honing.train.checkpoint import SAVE_DELAY_ENV

    recipe = {"model": str(data / "tiny"), "data": str(data / "train.jsonl"), "eval_data": str(data / "eval.jsonl"),
              "objective": "dpo", "method": "full", "batch_size": 8, "micro_batch_size": 4, "max_steps": 6,
              "learning_rate": 1e-3, "dtype": "fp32", "seed": 3, "save_every": 2, "eval_every": 3,
              "early_stopping_patience": None, "tensorboard": False}
    (data / "full.yaml").write_text(yaml.safe_dump(recipe))
    _run(_cmd(data, "straight"))

    killed = data / "killed"
    env = dict(_env(), **{SAVE_DELAY_ENV: "0.3"})
    proc = subprocess.Popen(_cmd(data, "killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 180
        while not list((killed / "checkpoints").glob("step-*/COMPLETE")):
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.time() < deadline, "no checkpoint within 180 s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert not (killed / "final").exists()
    reference = _sha(killed / REFERENCE_FILE)

    out = _run(_cmd(data, "killed", resume=True))
    assert "log-probs read from" in out  # not recomputed from the trained weights
    assert _sha(killed / REFERENCE_FILE) == reference  # the stored file is untouched by the resume
    ref_a, ref_b = load_file(str(data / "straight" / REFERENCE_FILE)), load_file(str(killed / REFERENCE_FILE))
    assert ref_a.keys() == ref_b.keys() and all(torch.equal(ref_a[k], ref_b[k]) for k in ref_a)
    a = load_file(str(data / "straight" / "final" / "model.safetensors"))
    b = load_file(str(killed / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and a
    assert all(torch.equal(a[k], b[k]) for k in a)
    straight, resumed = _rows(data / "straight"), _rows(killed)
    pick = ("step", "train_loss", "train_rewards/margin", "eval_loss", "lines")
    assert [{k: r.get(k) for k in pick} for r in resumed if "train_loss" in r] == \
        [{k: r.get(k) for k in pick} for r in straight if "train_loss" in r]
