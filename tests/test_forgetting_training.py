"""Forgetting-aware training on a tiny seeded Llama: the general-text probe at every eval, replay of
general instructions (seeded, resumable, weighted by its share of the loss), the forgetting budget, and
the shipped replay set kept apart from the forgetting probes."""

from __future__ import annotations

import json
import re

import pytest
from train_helpers import build_tiny_model_dir, write_arithmetic_chat

from honing.errors import ConfigError
from honing.train import build_config, train
from honing.train.replay import ReplaySet


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("forget")
    build_tiny_model_dir(d / "tiny")
    write_arithmetic_chat(d / "train.jsonl", 24)
    write_arithmetic_chat(d / "eval.jsonl", 6, seed=3)
    # A stand-in "general" set with long answers: replay must not dominate the task by token count.
    rows = [{"messages": [{"role": "user", "content": f"Tell me about the number {i}."},
                          {"role": "assistant", "content": " ".join([f"The number {i} is a number."] * 4)}]}
            for i in range(10)]
    (d / "general.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def _run(workdir, out, **kw):
    values = {"model": str(workdir / "tiny"), "data": str(workdir / "train.jsonl"),
              "eval_data": str(workdir / "eval.jsonl"), "out": str(workdir / out), "batch_size": 4,
              "dtype": "fp32", "tensorboard": False, "seed": 0, "max_steps": 4, "eval_every": 2,
              "learning_rate": 5e-3, "early_stopping_patience": None}
    overrides = [f"{k}={v}" for k, v in kw.pop("set", {}).items()]
    values.update(kw)
    messages: list[str] = []
    result = train(build_config(values=values, overrides=overrides), log=messages.append)
    rows = [json.loads(x) for x in (workdir / out / "metrics.jsonl").read_text().splitlines()]
    return result, rows, messages


@pytest.fixture(scope="module")
def plain(workdir):
    return _run(workdir, "plain")


def test_probe_at_every_eval_starts_at_one(plain):
    _, rows, _ = plain
    evals = [r for r in rows if "eval_loss" in r]
    assert [r["step"] for r in evals] == [0, 2, 4]
    assert evals[0]["forgetting_ppl_ratio"] == 1.0
    assert all(r["forgetting_ppl"] > 1 for r in evals)
    # Training moves the model, so the probe moves (a probe that never changes would be a stub).
    assert evals[-1]["forgetting_ppl_ratio"] != 1.0
    assert all("forgetting_ppl" not in r for r in rows if "eval_loss" not in r)


@pytest.fixture(scope="module")
def half(workdir):
    """Replay at half of each step's loss, every step."""
    return _run(workdir, "replay-half", set={"replay.fraction": 0.5, "replay.data": workdir / "general.jsonl"})[1]


def test_replay_loss_logged_and_task_loss_kept_apart(workdir, plain, half):
    plain = plain[1]
    _, tiny, msgs = _run(workdir, "replay-tiny", set={"replay.fraction": 1e-9, "replay.data": workdir / "general.jsonl"})
    assert any(m.startswith("replay: 0% of each step's loss") for m in msgs)
    def loss(rows):
        return [r["train_loss"] for r in rows if "train_loss" in r]

    # train_loss is the task's loss alone: at a vanishing replay share the run is the run without replay...
    assert loss(tiny) == pytest.approx(loss(plain), abs=1e-5)
    # ...and a real share changes the updates (the control: replay is not silently ignored).
    assert loss(half)[1:] != pytest.approx(loss(plain)[1:], abs=1e-3)
    assert all(r["replay_loss"] > 0 for r in half if "train_loss" in r)
    assert all("replay_loss" not in r for r in plain)


def test_replay_choice_is_a_pure_function_of_step_and_rank():
    items = list(range(10))
    rs = ReplaySet(items, 0.1, 3, seed=7, source="test")
    assert rs.for_step(5) == ReplaySet(items, 0.1, 3, seed=7, source="test").for_step(5)  # resumable
    # Consecutive steps walk through a permutation: every example once per pass (steps 0-2 = 9 of 10).
    first_pass = [x for s in range(3) for x in rs.for_step(s)]
    assert len(set(first_pass)) == 9
    # Two processes take disjoint slices of the same step (within one pass over the set).
    a, b = rs.for_step(0, rank=0, world=2), rs.for_step(0, rank=1, world=2)
    assert len(a) == len(b) == 3 and not set(a) & set(b)
    assert ReplaySet(items, 0.1, 3, seed=8, source="test").for_step(0) != rs.for_step(0)


def test_replay_every_k_steps_walks_the_same_order_at_k_times_the_weight():
    items = list(range(10))
    each, third = ReplaySet(items, 0.2, 2, seed=7, source="t"), ReplaySet(items, 0.2, 2, seed=7, source="t", every=3)
    assert [third.for_step(s) for s in (1, 2, 4, 5)] == [[], [], [], []]
    # replay steps 0, 3, 6 take what every-step replay takes at steps 0, 1, 2: every example in turn
    assert [third.for_step(s) for s in (0, 3, 6)] == [each.for_step(s) for s in (0, 1, 2)]
    # over 3 steps: task 3 x 0.8, replay 1 x 0.6 = 3 x 0.2, the every-step mix
    assert third.task_share == each.task_share == pytest.approx(0.8)
    assert third.replay_weight == pytest.approx(3 * each.replay_weight)
    assert "every 3 steps, weighted x3" in third.describe()


def test_replay_every_two_steps_in_a_run(workdir, half):
    general = {"replay.fraction": 0.5, "replay.data": workdir / "general.jsonl"}
    _, every, msgs = _run(workdir, "replay-every2", set={**general, "replay.every": 2})
    each = half
    steps = [r for r in every if "train_loss" in r]
    assert [r["step"] for r in steps if "replay_loss" in r] == [1, 3]  # optimizer steps 0 and 2
    assert any("every 2 steps, weighted x2" in m for m in msgs)
    # the first step replays at twice the weight, so the second step starts elsewhere than every-step replay's
    loss = [r["train_loss"] for r in steps]
    each_loss = [r["train_loss"] for r in each if "train_loss" in r]
    assert loss[0] == pytest.approx(each_loss[0], abs=1e-6)
    assert loss[1] != pytest.approx(each_loss[1], abs=1e-4)


def test_forgetting_budget_stops_and_keeps_a_checkpoint_within_it(workdir, monkeypatch):
    # A random tiny model's general-text perplexity *falls* with any training, so the probe is scripted
    # here: 10 before training, +5% per eval after. The real probe is exercised by the test above.
    from honing.evaluate.forgetting import TextProbe

    values = iter([10.0, 10.2, 10.7, 11.2])
    monkeypatch.setattr(TextProbe, "perplexity", lambda self, model: next(values))
    result, rows, msgs = _run(workdir, "budget", forgetting_budget=0.05, max_steps=6)
    ratios = [r["forgetting_ppl_ratio"] for r in rows if "forgetting_ppl_ratio" in r]
    assert ratios == [1.0, 1.02, 1.07]  # step 0, 2 (within +5%), 4 (past it)
    assert result.status == "early_stopped" and result.steps == 4
    assert any("past forgetting_budget +5%" in m for m in msgs)
    assert result.best_step == 2  # the eval past the budget never became the result


def test_replay_refused_for_other_objectives():
    with pytest.raises(ConfigError, match=r"replay.fraction: .*objective dpo"):
        build_config(values={"data": "d.jsonl", "objective": "dpo"}, overrides=["replay.fraction=0.1"])
    build_config(values={"data": "d.jsonl", "objective": "dpo"})  # the control: without replay it is fine


def test_shipped_replay_set_is_apart_from_the_probes():
    from honing.evaluate.forgetting import general_questions, general_text
    from honing.train.replay import shipped_path

    chats = [json.loads(x) for x in shipped_path().read_text().splitlines()]
    assert len(chats) >= 100
    assert all(c["messages"][-1]["role"] == "assistant" and c["messages"][-1]["content"] for c in chats)
    prompts = " ".join(m["content"].lower() for c in chats for m in c["messages"] if m["role"] == "user")
    for q in general_questions():
        assert q["question"].lower() not in prompts
    # No 8-word run of the probe text appears in any replay chat.
    words = re.findall(r"[a-z']+", general_text().lower())
    grams = {" ".join(words[i:i + 8]) for i in range(len(words) - 7)}
    replay_words = re.findall(r"[a-z']+", " ".join(m["content"].lower() for c in chats for m in c["messages"]))
    assert not grams & {" ".join(replay_words[i:i + 8]) for i in range(len(replay_words) - 7)}


def test_replay_auto_rehearses_only_the_models_own_answers():
    """auto: 0.2 where the replay answers are the model's own (the default model with the shipped set, or
    the user's replay.data), off for other models (a 135M model's answers would pull them) and objectives."""
    from honing.train.replay import AUTO_FRACTION, resolve_fraction

    def fraction(objective="sft", **values):
        config = build_config(values={"data": "d.jsonl", "objective": objective, **values})
        return resolve_fraction(config, objective)

    assert fraction() == (AUTO_FRACTION, "on")  # the embedded default model
    off, why = fraction(model="/models/other")
    assert off == 0.0 and "replay.data" in why
    assert fraction(model="/models/other", replay={"data": "mine.jsonl"})[0] == AUTO_FRACTION
    assert fraction(objective="dpo") == (0.0, None)
    assert fraction(replay={"fraction": 0}) == (0.0, None)  # set by the user: used as given
    assert fraction(replay={"fraction": 0.1}) == (0.1, None)
