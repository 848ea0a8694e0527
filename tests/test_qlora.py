"""QLoRA on a tiny model: the base's linear layers are 4-bit NF4 (double quantization), only the adapter
changes while the loss falls, the saved adapter loads with plain PEFT onto the full-precision base, merging
goes into that full-precision base (never into 4-bit weights), and a machine without 4-bit support gets a
clear error."""

from __future__ import annotations

import builtins
import json

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import build_tiny_model_dir, write_arithmetic_chat

from honing.config import build_config
from honing.errors import ConfigError, ModelError
from honing.train import chain, train
from honing.train.qlora import check_supported, quantized_modules, refuse_quantized_merge

pytest.importorskip("bitsandbytes")


@pytest.fixture(scope="module")
def qlora_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("qlora")
    build_tiny_model_dir(d / "tiny")
    write_arithmetic_chat(d / "train.jsonl", 24)
    captured = {}
    original = chain.load_starting_model

    def capture(config, runtime, say):
        model, tok, resolved, start = original(config, runtime, say)
        captured["model"] = model
        captured["before"] = {n: p.detach().clone() for n, p in model.named_parameters()}
        captured["quant_before"] = {n: m.weight.detach().clone() for n, m in model.named_modules()
                                    if n in set(quantized_modules(model))}
        return model, tok, resolved, start

    chain.load_starting_model = capture
    try:
        cfg = build_config(values={"model": str(d / "tiny"), "data": str(d / "train.jsonl"), "method": "qlora",
                                   "out": str(d / "run"), "batch_size": 4, "max_steps": 6, "learning_rate": 1e-2,
                                   "dtype": "fp32", "tensorboard": False, "eval_fraction": 0, "merge": True,
                                   "lora.r": 8})
        result = train(cfg, log=lambda _m: None)
    finally:
        chain.load_starting_model = original
    return d, result, captured


def test_base_is_4bit_nf4_double_quant(qlora_run):
    import bitsandbytes as bnb

    _, _, captured = qlora_run
    model = captured["model"]
    names = quantized_modules(model)
    assert len(names) == 2 * 7  # q k v o gate up down in each of the 2 layers
    layer = model.model.layers[0].self_attn.q_proj.base_layer  # PEFT injected the adapter into this model
    assert isinstance(layer, bnb.nn.Linear4bit) and layer.weight.dtype == torch.uint8
    assert layer.weight.quant_state.quant_type == "nf4" and layer.weight.quant_state.nested  # double quant
    assert type(model.lm_head) is torch.nn.Linear  # the head stays in full precision


def test_only_the_adapter_changes_and_the_loss_falls(qlora_run):
    _, result, captured = qlora_run
    model = captured["model"]
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], before) for n, before in captured["before"].items() if n in params)
    lora_b = [p for n, p in params.items() if "lora_B" in n]
    assert lora_b and all(p.abs().max() > 0 for p in lora_b)  # B starts at zero: the adapter trained
    assert all(("lora_" in n) == p.requires_grad for n, p in params.items())
    assert all(torch.equal(m.weight, captured["quant_before"][n]) for n, m in model.named_modules()
               if n in captured["quant_before"])
    losses = result.train_losses
    # bitsandbytes' CPU kernels are not bitwise deterministic across runs: a falling trend, not a fixed value.
    assert losses[-1] < losses[0] - 0.2 and sum(losses[3:]) / 3 < sum(losses[:3]) / 3 - 0.15, losses


def test_adapter_loads_in_plain_peft_onto_the_full_precision_base(qlora_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    d, result, _ = qlora_run
    base = AutoModelForCausalLM.from_pretrained(str(d / "tiny"), dtype=torch.float32)
    x = torch.tensor([[1, 5, 9, 13, 200, 3000]])
    with torch.no_grad():
        plain = base(x).logits
    model = PeftModel.from_pretrained(base, str(result.final_dir))
    saved = load_file(str(result.final_dir / "adapter_model.safetensors"))
    loaded = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert len(saved) == len(loaded) and saved
    with torch.no_grad():
        adapted = model(x).logits
    assert (adapted - plain).abs().max() > 1e-3  # the trained adapter acts on the fp32 base
    assert json.loads((result.run_dir / "run.json").read_text())["method"] == "qlora"


def test_merge_goes_into_the_full_precision_base(qlora_run):
    d, result, captured = qlora_run
    merged = load_file(str(result.merged_dir / "model.safetensors"))
    base = load_file(str(d / "tiny" / "model.safetensors"))
    adapter = load_file(str(result.final_dir / "adapter_model.safetensors"))
    key = "model.layers.0.self_attn.q_proj.weight"
    a = adapter["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
    b = adapter["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
    assert merged[key].dtype == torch.float32
    torch.testing.assert_close(merged[key], base[key] + (32 / 8) * b @ a, rtol=1e-5, atol=1e-6)
    config = json.loads((result.merged_dir / "config.json").read_text())
    assert "quantization_config" not in config
    with pytest.raises(ModelError, match="not merging into 4-bit weights.*full-precision base"):
        refuse_quantized_merge(captured["model"])


def test_unsupported_machine_gets_a_clear_error(monkeypatch):
    real_import = builtins.__import__

    def no_bnb(name, *args, **kwargs):
        if name == "bitsandbytes":
            raise ImportError("No module named 'bitsandbytes'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_bnb)
    with pytest.raises(ConfigError, match="method: qlora needs bitsandbytes"):
        check_supported(torch.device("cpu"))
    monkeypatch.undo()
    assert check_supported(torch.device("cpu"))  # this machine does run 4-bit (control)
