"""GRPO (objective grpo): the advantage and loss formulas against TRL's, OpenAI's RFT rows with line-numbered
problems, and a real run through the one loop on a tiny model: rewards and validation reward logged, the
best checkpoint chosen by the highest validation reward, and a paused run resumed to the same bits."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import build_tiny_model_dir

from honing.config import build_config
from honing.data.rft import read_rft
from honing.errors import ConfigError, DataError
from honing.train import train
from honing.train.grpo import group_advantages, policy_token_losses
from honing.train.loop import PAUSE_FILE

GRADER = {"type": "text_similarity", "name": "close", "input": "{{sample.output_text}}",
          "reference": "{{item.target}}", "evaluation_metric": "fuzzy_match"}


def write_rft(path, n, seed=0):
    rows = [{"messages": [{"role": "developer", "content": "Answer with one word."},
                          {"role": "user", "content": f"Say the word number {seed * 100 + i}."}],
             "target": "yes"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------------------------------------- formulas
def test_group_advantages_match_trls_formula():
    r = torch.tensor([[1.0, 0.0, 0.5, 0.5], [2.0, 2.0, 2.0, 2.0]], dtype=torch.float64)
    # TRL: (r - mean_group) / (std_group + 1e-4), std unbiased.
    g = group_advantages(r, "group")
    expected0 = (r[0] - 0.5) / (r[0].std() + 1e-4)
    assert torch.allclose(g[0], expected0)
    assert torch.equal(g[1], torch.zeros(4, dtype=torch.float64))  # zero variance: no signal
    b = group_advantages(r, "batch")
    assert torch.allclose(b, (r - r.mean(dim=1, keepdim=True)) / (r.std() + 1e-4))
    assert torch.allclose(group_advantages(r, "none"), r - r.mean(dim=1, keepdim=True))


def test_policy_loss_is_the_policy_gradient_and_clips():
    logps = torch.tensor([-1.0, -2.0, -0.5], requires_grad=True)
    adv = torch.tensor([1.0, -1.0, 0.5])
    loss = policy_token_losses(logps, adv, 0.2, 0.2)
    assert torch.allclose(loss, -adv)  # ratio is 1
    loss.sum().backward()
    assert torch.allclose(logps.grad, -adv)  # d/dlogp of -A exp(logp - old) at logp = old
    # Clipping (TRL's form) when the ratio is off: old log-probs that differ from the current ones.
    ratio = torch.tensor([1.5, 0.5])
    a = torch.tensor([1.0, -1.0])
    clipped = -torch.min(ratio * a, ratio.clamp(0.8, 1.2) * a)
    assert torch.allclose(clipped, torch.tensor([-1.2, 0.8]))


# ---------------------------------------------------------------------------------------------- data
def test_rft_rows_report_every_problem_with_its_line(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": "hi"}], "target": "x"},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "target": "x"},
        {"messages": [{"role": "user", "content": "hi"}]},
        {"messages": [{"role": "robot", "content": "hi"}], "target": "x"},
        {"prompt": "hi"},
    ]
    p = tmp_path / "rft.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError) as e:
        read_rft(p, {"target"})
    msg = str(e.value)
    assert "line 2: prompt_not_ending_with_user" in msg
    assert "line 3: missing_field" in msg and "'target'" in msg
    assert "line 4: unknown_role" in msg
    assert "line 5: missing_messages" in msg
    assert "line 1:" not in msg
    good = read_rft(write_rft(tmp_path / "ok.jsonl", 3), {"target"})
    assert good[0].prompt[0].role == "system" and good[0].item == {"target": "yes"} and good[0].line == 1


def test_hone_data_validate_checks_rft_rows_against_the_grader(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    hone = str(Path(sys.executable).with_name("hone"))
    (tmp_path / "grader.json").write_text(json.dumps(GRADER))
    good = write_rft(tmp_path / "good.jsonl", 3)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "x"}]}) + "\n"
                   + json.dumps({"messages": [{"role": "assistant", "content": "x"}], "target": "y"}) + "\n")
    ok = subprocess.run([hone, "data", "validate", str(good), "--grader", str(tmp_path / "grader.json")],
                        check=False, capture_output=True, text=True)
    assert ok.returncode == 0 and "3 RFT prompt(s), 0 problem(s); grader fields: target" in ok.stdout
    out = subprocess.run([hone, "data", "validate", str(bad), "--grader", str(tmp_path / "grader.json"), "--json"],
                         check=False, capture_output=True, text=True)
    assert out.returncode == 1
    report = json.loads(out.stdout)
    assert [(p["line"], p["category"]) for p in report["problems"]] == [
        (1, "missing_field"), (2, "prompt_not_ending_with_user")]


def test_grpo_needs_a_valid_grader(tmp_path):
    with pytest.raises(ConfigError, match="grpo.grader"):
        build_config(values={"data": "x.jsonl", "objective": "grpo"})
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"type": "string_check", "name": "x", "input": "{{sample.output_text}}",
                               "reference": "a", "operation": "eqq"}))
    from honing.train.grpo import GRPOObjective

    config = build_config(values={"data": "x.jsonl", "objective": "grpo", "grpo.grader": str(bad)})
    with pytest.raises(ConfigError, match="operation"):
        GRPOObjective(config)


# ---------------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("grpo")
    build_tiny_model_dir(d / "tiny")
    write_rft(d / "train.jsonl", 16)
    write_rft(d / "eval.jsonl", 6, seed=1)
    (d / "grader.json").write_text(json.dumps(GRADER))
    return d


def _config(d, out, **extra):
    values = {"model": str(d / "tiny"), "data": str(d / "train.jsonl"), "eval_data": str(d / "eval.jsonl"),
              "objective": "grpo", "grpo.grader": str(d / "grader.json"), "out": str(d / out), "batch_size": 4,
              "micro_batch_size": 2, "max_steps": 4, "learning_rate": 5e-3, "dtype": "fp32", "seed": 1,
              "eval_every": 2, "save_every": 2, "tensorboard": False, "early_stopping_patience": None,
              "grpo.group_size": 4, "grpo.max_completion_tokens": 6, "lora.r": 4, "threads": 1}
    values.update(extra)
    return build_config(values=values)


def test_grpo_trains_and_logs_rewards(data):
    result = train(_config(data, "run", **{"grpo.beta": 0.05}))
    assert result.status == "completed" and result.steps == 4
    rows = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "train_loss" in r]
    assert len(steps) == 4
    for r in steps:
        assert 0.0 <= r["train_reward"] <= 1.0
        assert 0.0 <= r["train_frac_reward_zero_std"] <= 1.0
        assert 1 <= r["train_completion_length"] <= 6
        assert r["train_kl"] >= 0.0 and math.isfinite(r["train_loss"])
        assert r["trained_tokens"] > 0
    evals = [r for r in rows if "eval_reward" in r]
    assert [r["step"] for r in evals] == [0, 2, 4]
    for r in evals:
        assert r["eval_reward_ci_low"] <= r["eval_reward"] <= r["eval_reward_ci_high"]
    record = json.loads((result.run_dir / "run.json").read_text())
    best = max(evals[1:], key=lambda r: (r["eval_reward"], -r["step"]))
    assert record["best"]["metric"] == "eval_reward"
    assert record["best"]["step"] == best["step"] and record["best"]["value"] == pytest.approx(best["eval_reward"])
    assert (result.final_dir / "adapter_model.safetensors").exists()


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap missing (sh scripts/system_deps.sh)")
def test_a_misbehaving_python_grader_never_reaches_the_loss(data):
    """NaN, inf, strings, out-of-range numbers and exceptions score 0 with a reason; the run goes on with a
    finite loss. Chained from an earlier GRPO result (init_from), as SFT -> GRPO recipes are."""
    source = ("import math\n"
              "def grade(sample, item):\n"
              "    k = len(sample['output_text']) % 5\n"
              "    return [float('nan'), math.inf, 'abc', 7.5][k] if k < 4 else 1 / 0\n")
    (data / "evil.json").write_text(json.dumps({"type": "python", "name": "evil", "source": source}))
    first = data / "chain-start"
    if not (first / "final").is_dir():
        train(_config(data, "chain-start", max_steps=1, eval_every=1, save_every=1))
    result = train(_config(data, "evil", max_steps=2, **{"grpo.grader": str(data / "evil.json"),
                                                         "init_from": str(first)}))
    rows = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "train_loss" in r]
    assert len(steps) == 2
    for r in steps:
        assert r["train_reward"] == 0.0 and r["train_grader_errors"] == 1.0  # every sample: 0, with a reason
        assert r["train_loss"] == 0.0 and math.isfinite(r["grad_norm"])  # zero advantages, finite numbers
    assert json.loads((result.run_dir / "run.json").read_text())["init_from"]["objective"] == "grpo"


def test_paused_grpo_run_resumes_to_the_same_bits(data):
    full = train(_config(data, "full"))

    def pause_once_training_starts(msg: str) -> None:
        if str(msg).startswith("trainable parameters"):
            (data / "paused" / PAUSE_FILE).touch()

    first = train(_config(data, "paused"), log=pause_once_training_starts)
    assert first.status == "paused" and first.steps == 1
    resumed = train(_config(data, "paused"), resume=True, log=lambda m: None)
    assert resumed.status == "completed" and resumed.steps == 4

    def rows(run):
        lines = (run.run_dir / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(x).items() if "per_s" not in k and k != "step_seconds"}
                for x in lines]

    assert rows(resumed)[-3:] == rows(full)[-3:]  # losses, rewards, eval rewards: equal, not close
    a = load_file(str(full.final_dir / "adapter_model.safetensors"))
    b = load_file(str(resumed.final_dir / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
