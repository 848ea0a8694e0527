"""What the loop promises every objective, tested once over ``honing.train.registry.OBJECTIVES`` (PEFT's tester
style): (a) batch 4 x accumulation 1 and batch 1 x accumulation 4 give the same gradient; (b) a run paused
after a step and resumed ends bit for bit where an uninterrupted run does (per-step losses and adapter weights).

Each objective needs a tiny data set in ``DATASETS``: a new objective without one fails here instead of going
untested. Tiny seeded model (2 layers, hidden 64), fp32, one thread, 1-3 steps.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from preference_helpers import write_toy_pairs
from safetensors.torch import load_file
from train_helpers import build_tiny_model_dir, write_arithmetic_chat

from honing.config import build_config
from honing.train import loop
from honing.train.loop import PAUSE_FILE, train
from honing.train.registry import OBJECTIVES

# Gradients of the two step shapes differ only by float summation order (padding and micro-batch size differ).
GRAD_RTOL, GRAD_ATOL = 1e-4, 1e-6


def _labeled(path: Path, n: int = 16, seed: int = 0) -> Path:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(1, 50), rng.randint(1, 50)
        good = i % 4 != 0  # mostly desirable: the mismatched replies gain too, so z0 > 0 at step 2
        rows.append({"prompt": f"What is {a} plus {b}?", "label": good,
                     "completion": f"{a} plus {b} is {a + b}." if good else f"No idea, maybe {a + b + 7}?"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _corpus(path: Path, n: int = 6) -> Path:
    path.mkdir()
    for i in range(n):
        (path / f"doc{i}.txt").write_text(f"Valve {i} must be closed before pump {i} is primed. " * 4)
    return path


def _rft(path: Path, n: int = 16) -> Path:
    rows = [{"messages": [{"role": "user", "content": f"Name a word that rhymes with number {i}."}],
             "target": "hello there, world"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# GRPO samples its training data: a graded similarity gives the random tiny model's samples rewards that
# differ within a group (a gradient), with no sandbox needed.
RFT_GRADER = {"type": "text_similarity", "name": "near", "input": "{{sample.output_text}}",
              "reference": "{{item.target}}", "evaluation_metric": "fuzzy_match"}
# objective -> (writer of its tiny data set at a path, extra config); None: the objective's own tests cover it.
DATASETS = {
    "sft": (lambda p: write_arithmetic_chat(p / "d.jsonl", 16), {}),
    "dpo": (lambda p: write_toy_pairs(p / "d.jsonl", 16), {}),
    "simpo": (lambda p: write_toy_pairs(p / "d.jsonl", 16), {}),
    "orpo": (lambda p: write_toy_pairs(p / "d.jsonl", 16), {}),
    "kto": (lambda p: _labeled(p / "d.jsonl"), {}),
    "cpt": (lambda p: _corpus(p / "corpus"), {"cpt.block_size": 32}),
    "grpo": (lambda p: _rft(p / "d.jsonl"), {"grpo.grader": RFT_GRADER, "grpo.group_size": 3,
                                             "grpo.max_completion_tokens": 6, "grpo.beta": 0.05}),
}
PENDING: dict[str, str] = {}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_model_dir(tmp_path_factory.mktemp("inv") / "tiny")


def _data(objective: str, where: Path) -> tuple[Path, dict]:
    if objective in PENDING:
        pytest.skip(PENDING[objective])
    if objective not in DATASETS:
        pytest.fail(f"objective {objective!r} is in OBJECTIVES but has no tiny data set in DATASETS: add one, so "
                    "the loop's invariants cover it")
    write, extra = DATASETS[objective]
    where.mkdir(parents=True, exist_ok=True)
    return write(where), extra


def _config(tiny: Path, data: Path, objective: str, out: Path, **values):
    return build_config(values={
        "model": str(tiny), "data": str(data), "objective": objective, "out": str(out), "dtype": "fp32",
        "threads": 1, "learning_rate": 5e-3, "tensorboard": False, "eval_fraction": 0.0, "seed": 5,
        "early_stopping_patience": None, "lora.r": 4, "lora.dropout": 0.1, **values})


def _second_step_gradients(config) -> list[torch.Tensor]:
    """The gradient of the loop's second optimizer step. The second: at the first, a fresh adapter is the
    reference itself, so reference-based terms (DPO's margins, KTO's z0) would be trivially zero."""
    run = loop._setup(config, resume=False, progress=False, log=lambda _m: None)
    captured: list[list[torch.Tensor]] = []
    run.optimizer.register_step_pre_hook(
        lambda *_: captured.append([p.grad.detach().clone() for p in run.params]))
    run.model.train()
    for _ in range(2):
        loop._optimizer_step(run)
    run.runtime.close()
    assert len(captured) == 2, "a step applied no update"
    return captured[-1]


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_batch_times_accumulation_gives_the_same_gradient(objective, tiny, tmp_path):
    data, extra = _data(objective, tmp_path / "data")
    common = {"batch_size": 4, "max_steps": 2, "max_grad_norm": None, "lora.dropout": 0.0, **extra}
    whole = _second_step_gradients(_config(tiny, data, objective, tmp_path / "b4", micro_batch_size=4, **common))
    accumulated = _second_step_gradients(_config(tiny, data, objective, tmp_path / "b1", micro_batch_size=1, **common))
    assert len(whole) == len(accumulated)
    assert any(g.abs().sum() > 0 for g in whole)  # control: the step has a gradient at all
    for a, b in zip(whole, accumulated):
        torch.testing.assert_close(b, a, rtol=GRAD_RTOL, atol=GRAD_ATOL)


def _losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["train_loss"] for r in rows if "train_loss" in r]


def _pause_after_first_step(run_dir: Path):
    """A log callback that asks the loop to pause once setup is done, so it stops after step 1."""
    def log(msg: str) -> None:
        if msg.startswith("trainable parameters"):
            (run_dir / PAUSE_FILE).touch()
    return log


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_resume_equals_uninterrupted(objective, tiny, tmp_path):
    data, extra = _data(objective, tmp_path / "data")
    common = {"batch_size": 2, "micro_batch_size": 1, "max_steps": 3, "save_every": 10, **extra}
    straight = train(_config(tiny, data, objective, tmp_path / "straight", **common), log=lambda _m: None)
    out = tmp_path / "resumed"
    paused = train(_config(tiny, data, objective, out, **common), log=_pause_after_first_step(out))
    assert paused.status == "paused" and paused.steps == 1
    resumed = train(_config(tiny, data, objective, out, **common), resume=True, log=lambda _m: None)
    assert resumed.status == "completed" and resumed.steps == 3
    assert _losses(out) == _losses(straight.run_dir)  # bitwise: the same floats
    a, b = load_file(str(straight.final_dir / "adapter_model.safetensors")), load_file(
        str(resumed.final_dir / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
