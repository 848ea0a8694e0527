"""The replay items trained in a task micro-batch's forward (``honing.train.loop._replay_fold_target``): the
same losses, replay losses and gradients as their own forward, step by step; a resumed run still bit for bit
the uninterrupted one; and the fold kept out where it would compute more than it saves.

Tiny seeded Llama (2 layers, hidden 64), fp32, one thread, 3 steps."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import build_tiny_model_dir, write_arithmetic_chat

from honing.config import build_config
from honing.data.render import IGNORE_INDEX, RenderedExample
from honing.train import loop
from honing.train.loop import PAUSE_FILE, train
from honing.train.objectives import SFTObjective

# The two paths differ only in float summation order (padding width, one forward instead of two).
RTOL, ATOL = 1e-4, 1e-6


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("fold")
    build_tiny_model_dir(d / "tiny")
    write_arithmetic_chat(d / "train.jsonl", 16)
    # General chats longer than the task's (as the shipped set's are), of different lengths.
    rows = [{"messages": [{"role": "user", "content": f"Tell me about the number {i}."},
                          {"role": "assistant", "content": " ".join([f"The number {i} is a number."] * (2 + i % 3))}]}
            for i in range(8)]
    (d / "general.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def _config(data: Path, out: Path, **values):
    return build_config(values={
        "model": str(data / "tiny"), "data": str(data / "train.jsonl"), "out": str(out), "dtype": "fp32",
        "threads": 1, "learning_rate": 5e-3, "tensorboard": False, "eval_fraction": 0.0, "seed": 3,
        "early_stopping_patience": None, "lora.r": 4, "lora.dropout": 0.0, "batch_size": 4, "micro_batch_size": 2,
        "max_steps": 3, "max_grad_norm": None, **values},
        overrides=["replay.fraction=0.5", f"replay.data={data / 'general.jsonl'}", "replay.examples_per_step=2"])


def _steps(config, fold: bool, monkeypatch) -> tuple[list[dict], list[list[torch.Tensor]], int]:
    """(metrics rows, each step's gradient, forwards the replay ran alone) of 3 steps through the loop; folded
    into the first micro-batch on every step (where the loop folds: test_replay_is_folded_only_where_it_saves)."""
    monkeypatch.setattr(loop, "FOLD_REPLAY", fold)
    monkeypatch.setattr(loop, "_replay_fold_target", lambda run, batches, replay: 0 if replay and fold else None)
    apart = []
    real = loop._replay_backward
    monkeypatch.setattr(loop, "_replay_backward", lambda *a: apart.append(1) or real(*a))
    run = loop._setup(config, resume=False, progress=False, log=lambda _m: None)
    grads: list[list[torch.Tensor]] = []
    run.optimizer.register_step_pre_hook(lambda *_: grads.append([p.grad.detach().clone() for p in run.params]))
    run.model.train()
    rows = [loop._optimizer_step(run) for _ in range(3)]
    run.runtime.close()
    return rows, grads, len(apart)


@pytest.mark.parametrize("packing", [True, False], ids=["packed", "padded"])
def test_folded_replay_gives_the_losses_and_gradients_of_its_own_forward(data, tmp_path, monkeypatch, packing):
    config = _config(data, tmp_path / "a", packing=packing)
    folded, folded_grads, folded_apart = _steps(config, True, monkeypatch)
    alone, alone_grads, alone_apart = _steps(_config(data, tmp_path / "b", packing=packing), False, monkeypatch)
    assert (folded_apart, alone_apart) == (0, 3)  # the control: each path ran as named
    for f, a in zip(folded, alone):
        assert f["train_loss"] == pytest.approx(a["train_loss"], rel=RTOL)
        assert f["replay_loss"] == pytest.approx(a["replay_loss"], rel=RTOL)
    assert len(folded_grads) == len(alone_grads) == 3
    assert any(g.abs().sum() > 0 for g in folded_grads[-1])
    for step_f, step_a in zip(folded_grads, alone_grads):
        for f, a in zip(step_f, step_a):
            torch.testing.assert_close(f, a, rtol=RTOL, atol=ATOL)


def test_folded_replay_resumes_bitwise(data, tmp_path):
    def losses(run_dir):
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return [(r["train_loss"], r["replay_loss"]) for r in rows if "train_loss" in r]

    straight = train(_config(data, tmp_path / "straight"), log=lambda _m: None)
    out = tmp_path / "resumed"

    def pause(msg):
        if msg.startswith("trainable parameters"):
            (out / PAUSE_FILE).touch()

    assert train(_config(data, out), log=pause).steps == 1
    resumed = train(_config(data, out), resume=True, log=lambda _m: None)
    assert resumed.steps == 3 and losses(out) == losses(straight.run_dir)
    a = load_file(str(straight.final_dir / "adapter_model.safetensors"))
    b = load_file(str(resumed.final_dir / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _item(n: int, trained: int) -> RenderedExample:
    return RenderedExample(list(range(1, n + 1)), [False] * (n - trained) + [True] * trained, full_length=n)


@pytest.mark.parametrize("packing", [True, False], ids=["packed", "padded"])
def test_collate_with_replay_splits_the_trained_positions(packing):
    objective = SFTObjective(SimpleNamespace(packing=packing))
    items, replay = [_item(5, 2), _item(7, 3)], [_item(9, 4)]
    batch = objective.collate_with_replay(items, replay, pad_id=0)
    whole = objective.collate(items + replay, 0)["labels"]
    task, rep = batch["labels"], batch["replay_labels"]
    assert not ((task != IGNORE_INDEX) & (rep != IGNORE_INDEX)).any()  # no position in both
    assert torch.equal(torch.where(task != IGNORE_INDEX, task, rep), whole)  # together: every trained position
    # trained targets (the shifted labels) per side: the objective's normalizer of each
    assert int((task[:, 1:] != IGNORE_INDEX).sum()) == sum(objective.normalizer(it) for it in items)
    assert int((rep[:, 1:] != IGNORE_INDEX).sum()) == sum(objective.normalizer(it) for it in replay)


def _fake_run(packing: bool, distributed: bool = False):
    objective = SFTObjective(SimpleNamespace(packing=packing))
    return SimpleNamespace(objective=objective, config=SimpleNamespace(packing=packing),
                           runtime=SimpleNamespace(is_cuda=False, dist=SimpleNamespace(enabled=distributed)))


def test_replay_is_folded_only_where_it_saves():
    short, long_ = [_item(40, 5)] * 4, [_item(300, 50)]
    assert loop._replay_fold_target(_fake_run(True), [short], [_item(90, 40)]) == 0  # packed: no padding
    assert loop._replay_fold_target(_fake_run(True), [short], long_) == 0
    # padded: one 90-token replay row pads four 40-token rows to 90 (450 tokens for 250): apart
    assert loop._replay_fold_target(_fake_run(False), [short], [_item(90, 40)]) is None
    assert loop._replay_fold_target(_fake_run(False), [short], long_) is None
    # ...but 8 rows of 100 take an 80-token replay row (20 tokens of padding), not a 40-token one (60)
    assert loop._replay_fold_target(_fake_run(False), [[_item(100, 5)] * 8], [_item(80, 40)]) == 0
    assert loop._replay_fold_target(_fake_run(False), [[_item(100, 5)] * 8], [_item(40, 20)]) is None
    assert loop._replay_fold_target(_fake_run(True, distributed=True), [short], [_item(90, 40)]) is None
    assert loop._replay_fold_target(_fake_run(True), [[], short], [_item(90, 40)]) == 1  # not an empty shard
