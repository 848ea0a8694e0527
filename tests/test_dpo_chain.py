"""Chaining: SFT, then DPO from the SFT run's adapter (init_from). The DPO run continues that adapter, its
reference is the SFT model (log-probs stored once), and run.json records the lineage."""

from __future__ import annotations

import json
import math

import pytest
import torch
from preference_helpers import write_toy_pairs
from safetensors.torch import load_file
from train_helpers import build_tiny_model_dir, write_arithmetic_chat

from honing.config import build_config
from honing.data.formats import load_examples
from honing.errors import ConfigError
from honing.models import load_tokenizer
from honing.train import train
from honing.train.preference import REFERENCE_FILE, DPOObjective, sequence_logps

COMMON = {"dtype": "fp32", "tensorboard": False, "batch_size": 8, "lora.r": 4, "early_stopping_patience": None}


@pytest.fixture(scope="module")
def chained(tmp_path_factory):
    d = tmp_path_factory.mktemp("chain")
    build_tiny_model_dir(d / "tiny")
    write_arithmetic_chat(d / "sft.jsonl", 24)
    write_toy_pairs(d / "pairs.jsonl", 16)
    sft = train(build_config(values={**COMMON, "model": str(d / "tiny"), "data": str(d / "sft.jsonl"),
                                     "out": str(d / "sft"), "max_steps": 4, "learning_rate": 1e-2,
                                     "eval_fraction": 0}), log=lambda _m: None)
    dpo = train(build_config(values={**COMMON, "model": str(d / "tiny"), "data": str(d / "pairs.jsonl"),
                                     "objective": "dpo", "init_from": str(sft.run_dir), "out": str(d / "dpo"),
                                     "max_steps": 3, "learning_rate": 1e-3, "eval_fraction": 0.25}),
                log=lambda _m: None)
    return d, sft, dpo


def test_run_json_records_the_chain(chained):
    _, sft, dpo = chained
    run = json.loads((dpo.run_dir / "run.json").read_text())
    sft_run = json.loads((sft.run_dir / "run.json").read_text())
    chain = run["init_from"]
    assert chain["run"] == str(sft.run_dir) and chain["objective"] == "sft" and chain["method"] == "lora"
    assert chain["data"] == sft_run["dataset"]["train"]["sha256"] and chain["init_from"] is None
    assert run["config"]["init_from"] == str(sft.run_dir)
    assert sft_run.get("init_from") is None


def test_dpo_starts_from_the_sft_adapter_and_uses_it_as_reference(chained):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    d, sft, dpo = chained
    rows = [json.loads(line) for line in (dpo.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 0 and rows[0]["eval_loss"] == pytest.approx(math.log(2), abs=1e-6)
    # The stored reference log-probs are the SFT model's (base + SFT adapter), not the bare base's.
    stored = load_file(str(dpo.run_dir / REFERENCE_FILE))
    base = AutoModelForCausalLM.from_pretrained(str(d / "tiny"), dtype=torch.float32)
    obj = DPOObjective(build_config(values={"data": "x", "objective": "dpo", "packing": False}))
    pairs = load_examples(d / "pairs.jsonl")
    tok = load_tokenizer(str(d / "tiny"))
    run = json.loads((dpo.run_dir / "run.json").read_text())
    held_out = set(run["dataset"]["eval"]["split"]["lines"])
    train_pairs = [p for p in pairs if p.line not in held_out]  # the train set, in file order
    items = obj.render_set(tok, train_pairs[:2], "x", "sha").items
    batch = obj.collate(items, tok.pad_token_id)
    with torch.no_grad():
        bare, _ = sequence_logps(base, batch, 4)
        sft_model = PeftModel.from_pretrained(base, str(sft.final_dir))
        sft_logps, _ = sequence_logps(sft_model, batch, 4)
    expected = torch.cat([sft_logps[:2], sft_logps[2:]]).double()
    got = torch.cat([stored["train.chosen"][:2], stored["train.rejected"][:2]])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)
    assert (bare.double() - expected).abs().max() > 1e-2  # control: the SFT adapter changed the log-probs
    # The DPO adapter continued the SFT adapter (same keys and shapes, moved from it).
    a, b = load_file(str(sft.final_dir / "adapter_model.safetensors")), load_file(
        str(dpo.final_dir / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)


def test_init_from_errors_name_the_key(chained, tmp_path):
    d, sft, _ = chained
    with pytest.raises(ConfigError, match="init_from: .* is not a Honing run directory"):
        train(build_config(values={"model": str(d / "tiny"), "data": str(d / "pairs.jsonl"), "objective": "dpo",
                                   "init_from": str(tmp_path), "out": str(tmp_path / "x")}), log=lambda _m: None)
    with pytest.raises(ConfigError, match="model: smollm2-135m-instruct is not the base model of the init_from run"):
        train(build_config(values={"data": str(d / "pairs.jsonl"), "objective": "dpo", "init_from": str(sft.run_dir),
                                   "out": str(tmp_path / "y")}), log=lambda _m: None)
