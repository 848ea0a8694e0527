"""The training loop on a tiny seeded Llama: golden losses, the run-directory contract, adapter/merge
equivalences, batch x accumulation invariance, early stopping with the best checkpoint, non-finite steps."""

from __future__ import annotations

import json
import math

import pytest
import torch
from train_helpers import build_tiny_model_dir, write_arithmetic_chat

from honing.train import TrainingError, build_config, train

# First five train losses of the tiny model (seed 0) on 24 arithmetic chats, batch 4, lr 5e-3, fp32,
# packing on. Recorded from this implementation; packing off / bf16 agree to ~2e-4.
# lora.dropout 0 (the default since the fused path); PEFT's modules give the same values to 1e-6.
GOLDEN_FIRST5 = [10.790419, 10.649251, 10.59149, 10.49599, 10.513195]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    build_tiny_model_dir(d / "tiny")
    write_arithmetic_chat(d / "train.jsonl", 24)
    write_arithmetic_chat(d / "eval_wrong.jsonl", 8, seed=5, offset=13)
    return d


def _config(workdir, out, **kw):
    values = {"model": str(workdir / "tiny"), "data": str(workdir / "train.jsonl"), "out": str(workdir / out),
              "batch_size": 4, "dtype": "fp32", "tensorboard": False, "seed": 0}
    values.update(kw)
    return build_config(values=values)


def _quiet(_msg):
    pass


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture(scope="module")
def finished_run(workdir):
    cfg = _config(workdir, "run", max_steps=5, learning_rate=5e-3, eval_every=5, merge=True, tensorboard=True)
    return train(cfg, log=_quiet)


def test_golden_first_five_losses(finished_run):
    assert finished_run.train_losses[:5] == pytest.approx(GOLDEN_FIRST5, abs=2e-4)
    assert finished_run.train_losses[4] < finished_run.train_losses[0] - 0.2


def test_first_loss_equals_plain_transformers_loss(finished_run, workdir):
    """Step 1's loss (before any update) is the base model's token-averaged cross-entropy on the
    assistant tokens of the first batch, as transformers itself computes it."""
    from transformers import AutoModelForCausalLM

    from honing.data.render import render_conversation
    from honing.models import load_tokenizer
    from honing.train.batching import step_indices
    from honing.train.dataset import held_out_split, read_examples

    tok = load_tokenizer(str(workdir / "tiny"))
    examples = read_examples(workdir / "train.jsonl")
    train_idx, _ = held_out_split(len(examples), 0.1, 200, seed=0)
    _, first = step_indices(len(train_idx), 4, seed=0, step=0)
    model = AutoModelForCausalLM.from_pretrained(workdir / "tiny")
    total = tokens = 0.0
    for i in first:
        r = render_conversation(tok, examples[train_idx[i]])
        labels = torch.tensor([r.labels()])
        with torch.no_grad():
            mean = model(input_ids=torch.tensor([r.input_ids]), labels=labels).loss
        n = int((labels[:, 1:] != -100).sum())
        total, tokens = total + float(mean) * n, tokens + n
    assert finished_run.train_losses[0] == pytest.approx(total / tokens, abs=1e-5)


def test_run_directory_contract(finished_run):
    run_dir = finished_run.run_dir
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "completed"
    assert run["base_model"]["reference"].endswith("tiny")
    assert run["method"] == "lora" and run["objective"] == "sft"
    assert set(run["versions"]) >= {"python", "torch", "transformers", "peft", "honing"}
    train_src = run["dataset"]["train"]
    assert len(train_src["sha256"]) == 64 and train_src["examples"] + run["dataset"]["eval"]["examples"] == 24
    assert train_src["trained_tokens"] > 0
    assert run["best"]["step"] == 5 and math.isfinite(run["best"]["eval_loss"])
    assert run["peak_memory_mb"] > 0 and 0 < run["tokens_per_s"] < run["input_tokens_per_s"]
    assert run["config"]["lora"]["r"] == 16
    assert run["dtype"] == "fp32"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4, 5]
    assert {"train_loss", "lr", "grad_norm", "tokens_per_s", "trained_tokens", "epoch"} <= set(rows[1])
    assert "eval_loss" in rows[0] and "eval_loss" in rows[5]
    assert (run_dir / "loss_curve.png").stat().st_size > 1000
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert (run_dir / "summary.md").read_text().startswith("# Run")
    for ckpt in (run_dir / "checkpoints").iterdir():
        assert (ckpt / "COMPLETE").is_file(), ckpt
    assert (run_dir / "final" / "adapter_model.safetensors").is_file()


def test_adapter_loads_with_plain_peft_and_merge_matches(finished_run, workdir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[1, 520, 3400, 905, 28, 17, 2]])
    base = AutoModelForCausalLM.from_pretrained(workdir / "tiny")
    base_logits = _logits(base, ids)
    tuned = PeftModel.from_pretrained(base, str(finished_run.run_dir / "final"))
    tuned_logits = _logits(tuned, ids)
    assert (tuned_logits - base_logits).abs().max() > 1e-3, "the adapter changed nothing"
    with tuned.disable_adapter():
        torch.testing.assert_close(_logits(tuned, ids), base_logits, rtol=0, atol=0)
    merged = AutoModelForCausalLM.from_pretrained(finished_run.merged_dir)
    torch.testing.assert_close(_logits(merged, ids), tuned_logits, rtol=1e-4, atol=1e-4)


def test_batch_times_accumulation_invariance(workdir):
    """batch 4 x accumulation 1 == batch 1 x accumulation 4: same losses and the same adapter."""
    from safetensors.torch import load_file

    kw = {"max_steps": 3, "learning_rate": 5e-3, "eval_fraction": 0, "lora": {"dropout": 0.0}}
    a = train(_config(workdir, "acc1", micro_batch_size=4, **kw), log=_quiet)
    b = train(_config(workdir, "acc4", micro_batch_size=1, **kw), log=_quiet)
    assert json.loads((b.run_dir / "run.json").read_text())["hyperparameters"]["grad_accumulation"] == 4
    assert b.train_losses == pytest.approx(a.train_losses, abs=1e-5)
    wa = load_file(str(a.final_dir / "adapter_model.safetensors"))
    wb = load_file(str(b.final_dir / "adapter_model.safetensors"))
    for k in wa:
        # Adam divides by sqrt(v): near-zero gradients amplify float reordering noise; a real difference
        # in the gradient would move weights by ~lr = 5e-3.
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-3, atol=5e-5)


def test_early_stopping_keeps_the_best_checkpoint(workdir):
    """Eval answers contradict the training answers and the LR is too high: eval loss gets worse, the
    run stops after `patience` evals and its result is the best step's weights, not the last."""
    from safetensors.torch import load_file

    cfg = _config(workdir, "early", eval_data=str(workdir / "eval_wrong.jsonl"), max_steps=12,
                  learning_rate=0.05, eval_every=1, early_stopping_patience=2)
    r = train(cfg, log=_quiet)
    assert r.status == "early_stopped"
    assert r.steps == r.best_step + 2 < 12
    run = json.loads((r.run_dir / "run.json").read_text())
    assert run["status"] == "early_stopped" and run["best"]["step"] == r.best_step
    assert min(loss for step, loss in r.eval_losses if step > 0) == r.best_eval_loss
    best = load_file(str(r.run_dir / "checkpoints" / f"step-{r.best_step}" / "trainable.safetensors"))
    final = load_file(str(r.final_dir / "adapter_model.safetensors"))
    # PEFT drops the adapter name from saved keys: "...lora_A.default.weight" -> "...lora_A.weight".
    for name, tensor in best.items():
        torch.testing.assert_close(final[name.replace(".default", "")], tensor, rtol=0, atol=0)


def _nan_on_calls(monkeypatch, bad_calls):
    from honing.train import objectives

    real = objectives.token_cross_entropy_sum
    calls = {"n": 0}

    def flaky(model, batch):
        calls["n"] += 1
        loss_sum, n = real(model, batch)
        return (loss_sum * float("nan") if calls["n"] in bad_calls else loss_sum), n

    monkeypatch.setattr(objectives, "token_cross_entropy_sum", flaky)


def test_a_nonfinite_step_is_skipped_and_logged(workdir, monkeypatch):
    _nan_on_calls(monkeypatch, {2})
    messages = []
    # One forward per step (micro_batch_size = batch_size), so the 2nd loss call is step 2 whatever the
    # measured CPU token budget would pick.
    r = train(_config(workdir, "nan1", max_steps=4, eval_fraction=0, micro_batch_size=4), log=messages.append)
    assert r.status == "completed" and r.steps == 4
    assert math.isnan(r.train_losses[1]) and all(math.isfinite(x) for x in r.train_losses[2:])
    assert any("non-finite" in m and "step 2" in m for m in messages)
    run = json.loads((r.run_dir / "run.json").read_text())
    assert run["nonfinite_steps"] == 1


def test_repeated_nonfinite_steps_stop_the_run(workdir, monkeypatch):
    _nan_on_calls(monkeypatch, set(range(2, 100)))
    with pytest.raises(TrainingError, match="3 consecutive steps"):
        train(_config(workdir, "nan3", max_steps=8, eval_fraction=0, save_every=1), log=_quiet)
    run_dir = workdir / "nan3"
    assert json.loads((run_dir / "run.json").read_text())["status"] == "failed"
    assert not (run_dir / "final").exists()


def test_a_nonfinite_weight_is_never_saved(workdir, tmp_path):
    from transformers import AutoModelForCausalLM

    from honing.train.checkpoint import save_checkpoint
    from honing.train.distributed import DistContext

    model = AutoModelForCausalLM.from_pretrained(workdir / "tiny")
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    with torch.no_grad():
        model.model.norm.weight[3] = float("inf")
    with pytest.raises(TrainingError, match="model.norm.weight"):
        save_checkpoint(tmp_path, 1, model, opt, sched, {"step": 1}, DistContext())
    assert not list((tmp_path / "checkpoints").glob("step-*"))


def test_existing_run_is_not_overwritten(finished_run, workdir):
    from honing.errors import ConfigError

    with pytest.raises(ConfigError, match="--resume"):
        train(_config(workdir, "run", max_steps=1), log=_quiet)


@pytest.mark.parametrize(("requested", "fast", "method", "expected"), [
    ("auto", False, "lora", ("fp32", torch.float32, None)),  # AVX2-only CPU: bf16 is emulated, slow
    ("auto", True, "lora", ("bf16", torch.bfloat16, None)),  # bf16 base, fp32 adapter weights
    ("auto", True, "full", ("bf16", torch.float32, torch.bfloat16)),  # fp32 master weights + autocast
    ("bf16", False, "lora", ("bf16", torch.bfloat16, None)),  # an explicit choice is obeyed
    ("fp32", True, "full", ("fp32", torch.float32, None)),
])
def test_dtype_auto_follows_the_measured_bf16_speed(monkeypatch, requested, fast, method, expected):
    import honing.precision
    from honing.train.runtime import compute_dtypes

    monkeypatch.setattr(honing.precision, "bf16_is_fast", lambda device="cpu": fast)
    cfg = build_config(values={"data": "x.jsonl", "dtype": requested, "method": method})
    assert compute_dtypes(cfg.dtype, cfg.method, torch.device("cpu")) == expected


def test_default_dtype_is_auto():
    assert build_config(values={"data": "x.jsonl"}).dtype == "auto"


def test_bad_data_line_is_named(workdir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    good = (workdir / "train.jsonl").read_text().splitlines()
    bad.write_text("\n".join(good[:3] + ['{"messages": [{"role": "user"}]}'] + good[3:]) + "\n")
    from honing.errors import DataError

    with pytest.raises(DataError, match=r"bad.jsonl:4"):
        train(_config(workdir, "bad", data=str(bad), max_steps=1), log=_quiet)


def test_top_layers_puts_adapters_on_the_last_layers_only(workdir):
    from safetensors.torch import load_file

    r = train(_config(workdir, "top1", max_steps=2, eval_fraction=0, **{"lora.top_layers": 1}), log=_quiet)
    keys = load_file(str(r.final_dir / "adapter_model.safetensors")).keys()
    assert keys and all(".layers.1." in k for k in keys)  # the tiny model has layers 0 and 1
    # every linear kind of the layer is adapted, as with 'all-linear'
    assert {k.split(".layers.1.")[1].split(".lora")[0] for k in keys} == {
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}
    from honing.errors import ConfigError

    with pytest.raises(ConfigError, match="lora.top_layers: 5 exceeds the model's 2 layers"):
        train(_config(workdir, "top5", max_steps=1, **{"lora.top_layers": 5}), log=_quiet)


def test_overfitting_warning_needs_rising_eval_and_falling_train():
    from honing.train.reporting import overfitting_warning

    def rows(train_losses, evals):
        out = [{"step": s + 1, "train_loss": x} for s, x in enumerate(train_losses)]
        for step, e in evals.items():
            out[step - 1]["eval_loss"] = e
        return out

    falling = [3.0 - 0.1 * i for i in range(12)]
    warn = overfitting_warning(rows(falling, {4: 1.0, 8: 1.1, 12: 1.2}))
    assert warn and "eval loss rose" in warn and "1.0000 -> 1.2000" in warn
    assert overfitting_warning(rows(falling, {4: 1.0, 8: 0.9, 12: 1.2})) is None  # not rising twice
    assert overfitting_warning(rows([1.0] * 12, {4: 1.0, 8: 1.1, 12: 1.2})) is None  # train not falling


def test_the_overfitting_warning_reaches_the_log_and_summary(workdir, monkeypatch):
    """The wiring: the loop asks overfitting_warning after every logged row and reports a warning once.
    (The rule is tested above; real overfitting is provoked in the test below.)"""
    from honing.train import loop

    seen = []

    def fake(rows):
        seen.append(len(rows))
        return "possible overfitting: eval loss rose" if len(rows) >= 3 else None

    monkeypatch.setattr(loop, "overfitting_warning", fake)
    messages = []
    r = train(_config(workdir, "overfit", max_steps=4, eval_every=2), log=messages.append)
    assert seen == [2, 3, 4, 5]  # rows: the step-0 eval, then one per step
    assert r.warnings.count("possible overfitting: eval loss rose") == 1
    assert sum(m.startswith("warning: possible overfitting") for m in messages) == 1
    assert "possible overfitting" in (r.run_dir / "summary.md").read_text()


def test_a_tiny_model_that_really_overfits_is_warned_about_and_stopped(workdir):
    """No monkeypatching: 8 examples whose answers are random words, memorised by full fine-tuning.
    Train loss falls to ~0 while eval loss on 8 other random examples turns upward; the run warns,
    early-stops and keeps the best checkpoint (the eval-loss minimum), not the last one."""
    import json
    import random

    words = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike oscar papa".split()  # noqa: SIM905

    def noise(n, seed):
        r = random.Random(seed)
        return "".join(json.dumps({"messages": [
            {"role": "user", "content": f"Code {r.randint(100, 999)}?"},
            {"role": "assistant", "content": " ".join(r.choice(words) for _ in range(6))}]}) + "\n" for _ in range(n))

    (workdir / "noise_train.jsonl").write_text(noise(8, 1))
    (workdir / "noise_eval.jsonl").write_text(noise(8, 2))
    messages = []
    r = train(_config(workdir, "overfit-real", data=str(workdir / "noise_train.jsonl"),
                      eval_data=str(workdir / "noise_eval.jsonl"), method="full", batch_size=8, max_steps=150,
                      learning_rate=3e-3, lr_scheduler="constant", eval_every=10, early_stopping_patience=2),
              log=messages.append)
    evals = dict(r.eval_losses)
    assert r.status == "early_stopped" and r.steps < 150
    assert r.train_losses[-1] < 0.2 * r.train_losses[0]  # memorised the training answers
    assert r.best_step == min((s for s in evals if s > 0), key=evals.get)
    assert evals[r.steps] > r.best_eval_loss + 0.3  # it really got worse after the best step
    assert any(m.startswith("warning: possible overfitting") for m in messages)
    assert "possible overfitting" in (r.run_dir / "summary.md").read_text()


def test_the_eval_before_training_after_the_first_step_is_the_base_models(workdir, monkeypatch):
    """A new LoRA adapter's step-0 eval runs after step 1 with the adapter disabled (the first step is not
    behind it): the same metrics as the eval before any update, logged in step order, and the training
    untouched (same losses, same adapter bit for bit). Dropout on: the eval must draw no random numbers."""
    from safetensors.torch import load_file

    from honing.train import loop

    kw = {"max_steps": 3, "learning_rate": 5e-3, "eval_every": 2, "save_every": 3, "micro_batch_size": 4, "threads": 1,
          "lora": {"r": 4, "dropout": 0.1}}
    msgs: list[str] = []
    after = train(_config(workdir, "base_eval_after", **kw), log=msgs.append)
    monkeypatch.setattr(loop, "_base_eval_can_wait", lambda *a: False)
    before_msgs: list[str] = []
    before = train(_config(workdir, "base_eval_before", **kw), log=before_msgs.append)
    rows = [[json.loads(line) for line in (r.run_dir / "metrics.jsonl").read_text().splitlines()]
            for r in (after, before)]
    assert [r["step"] for r in rows[0]] == [r["step"] for r in rows[1]] == [0, 1, 2, 3]
    for key in ("eval_loss", "forgetting_ppl"):
        assert rows[0][0][key] == pytest.approx(rows[1][0][key], rel=1e-6), key
    assert after.train_losses == before.train_losses
    a, b = (load_file(str(r.final_dir / "adapter_model.safetensors")) for r in (after, before))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    def order(lines):
        return [m.split(":")[0] for m in lines if m.startswith(("time to first step", "eval loss before training"))]

    assert order(msgs) == ["time to first step", "eval loss before training"]
    assert order(before_msgs) == ["eval loss before training", "time to first step"]  # the control


def test_the_base_models_probe_perplexity_is_measured_once_per_machine(workdir, tmp_path, monkeypatch):
    """The step-0 forgetting probe of a converted base (known by its GGUF's hash) comes from the machine cache
    on the second run: the same value, one 512-token forward fewer, the same training."""
    import shutil

    from safetensors.torch import load_file

    from honing.evaluate.forgetting import TextProbe

    monkeypatch.setenv("HONING_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HONING_PROBE_CACHE", "1")
    converted = tmp_path / "cache" / "models" / "tinyconv"
    shutil.copytree(workdir / "tiny", converted)
    (converted / "honing-conversion.json").write_text(json.dumps(
        {"source_file": "tiny.gguf", "source_sha256": "0" * 64, "format": "safetensors"}))
    calls = []
    original = TextProbe.perplexity
    monkeypatch.setattr(TextProbe, "perplexity", lambda self, model: calls.append(1) or original(self, model))
    kw = {"model": "tinyconv", "max_steps": 2, "learning_rate": 5e-3, "eval_every": 2, "save_every": 2,
          "micro_batch_size": 4, "threads": 1}
    results, probes = [], []
    for name in ("probe_first", "probe_cached"):
        calls.clear()
        results.append(train(_config(workdir, name, **kw), log=_quiet))
        probes.append(len(calls))
    assert probes == [2, 1]  # step 0 and step 2; then step 2 only
    rows = [[json.loads(line) for line in (r.run_dir / "metrics.jsonl").read_text().splitlines()] for r in results]
    assert rows[0][0] == rows[1][0] and rows[0][0]["forgetting_ppl_ratio"] == 1.0
    assert [r.get("forgetting_ppl_ratio") for r in rows[0]] == [r.get("forgetting_ppl_ratio") for r in rows[1]]
    a, b = (load_file(str(r.final_dir / "adapter_model.safetensors")) for r in results)
    assert all(torch.equal(a[k], b[k]) for k in a)
