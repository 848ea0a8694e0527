"""benchmarks/gpu_check.py, rehearsed on the CPU: what it carries to the GPU machine, its summary, and its
train step end to end (uninterrupted twice, killed with SIGKILL after a checkpoint, resumed, compared)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_check  # lives in benchmarks/, not a package: on the path above


def test_carries_what_the_gpu_image_lacks_and_leaves_its_torch_alone():
    pins = dict(p.split("==") for p in gpu_check.missing_on_device())
    assert {"pydantic", "pydantic-core", "gguf", "jsonschema"} <= pins.keys()  # Honing's, and theirs
    assert not pins.keys() & {"torch", "transformers", "peft", "accelerate", "numpy"}  # the image's own
    assert not pins.keys() & gpu_check.NOT_CARRIED  # too big to travel, or `hone serve` only
    assert all(v and v[0].isdigit() for v in pins.values())


def test_summary_names_the_failed_step_and_why():
    report = {"device": "cuda", "tiny": False, "failed": "train", "wall_s": 95.0, "steps": {
        "env": {"ok": True, "seconds": 3.0, "torch": "2.11.0", "gpu": "NVIDIA H200", "absent_dependencies": []},
        "train": {"ok": False, "seconds": 90.0, "error": "train: resumed losses differ by 3e-02\nmore"}}}
    table = gpu_check.summary_table(report)
    assert "FAILED at train" in table
    assert "NVIDIA H200" in table and "resumed losses differ by 3e-02" in table and "more" not in table


@pytest.mark.slow
def test_cpu_rehearsal_of_the_train_step(tmp_path):
    """The GPU check's train step on a tiny SmolLM2-shaped model: on the CPU the resumed run's losses equal
    the uninterrupted run's exactly, and the results folder holds the four files (at most 8 come back)."""
    from honing.models.catalog import resolve_model

    carry = tmp_path / "carry" / "tokenizer"
    carry.mkdir(parents=True)
    for name in gpu_check.TOKENIZER_FILES:
        shutil.copy2(resolve_model("smollm2-135m-instruct").path / name, carry / name)
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "run", "--device", "cpu", "--tiny",
           "--random-weights", "--carry", str(carry.parent), "--only", "env,model,train", "--train-steps", "4",
           "--budget-s", "880",
           "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:] + (out / "log.txt").read_text()[-3000:]
    report = json.loads((out / "gpu.json").read_text())
    train = report["steps"]["train"]
    assert report["failed"] is None and train["steps"] == 4 and train["killed_after_checkpoint"] >= 1
    assert train["resume_max_rel_loss_diff"] == 0.0 and train["bitwise_equal_losses"]
    assert sorted(p.name for p in out.iterdir()) == ["gpu.json", "log.txt", "runs.tar.gz", "summary.txt"]
    assert "all steps passed" in (out / "summary.txt").read_text()
