"""DPO step work cut without changing the numbers, on a seeded tiny Llama with a moved LoRA adapter (fp32):
the adapter-disabled reference computed once per pair in ``prepare_step`` and kept for later epochs gives the
loss the in-step reference gives, and is not computed again; a frozen output head's gradient taken in the
forward (the head Jacobian) gives the log-probs and LoRA gradients of the checkpointed head."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest
import torch
from test_dpo_shared_prompt import PAIRS, _lora_model, _objective

from honing.train import preference
from honing.train.preference import collate_pairs


def _setup(obj, model):
    runtime = SimpleNamespace(to_device=lambda b: b, autocast=contextlib.nullcontext)
    obj.setup(SimpleNamespace(model=model, runtime=runtime, config=obj.config, log=lambda m: None))


def test_reference_kept_per_pair_gives_the_in_step_loss_and_is_computed_once(smol_tokenizer, monkeypatch):
    obj = _objective(packing=True, method="lora")
    items = obj.render_set(smol_tokenizer, PAIRS, "x", "sha").items
    model = _lora_model(fused=True)
    _setup(obj, model)
    assert obj.reference == "adapter_disabled" and all(it.ref is None for it in items)
    in_step = obj.loss(model, collate_pairs(items, 0, True, shared_prompt=True))  # no ref on the items yet

    micro_batches = [items[:2], items[2:]]
    obj.prepare_step(0, micro_batches)
    assert all(it.ref is not None for it in items)
    batch = collate_pairs(items, 0, True, shared_prompt=True)
    assert "ref_logps" in batch
    kept = obj.loss(model, batch)
    torch.testing.assert_close(kept.loss_sum, in_step.loss_sum, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(kept.stats["rewards/margin"], in_step.stats["rewards/margin"], rtol=1e-5, atol=1e-6)
    assert float(in_step.stats["rewards/margin"]) != 0.0  # control: the adapter moved, so the reference matters

    calls = []
    real = preference.sequence_logps
    monkeypatch.setattr(preference, "sequence_logps", lambda *a, **k: calls.append(1) or real(*a, **k))
    obj.prepare_step(1, micro_batches)  # a later epoch: nothing to compute
    assert calls == []


@pytest.mark.parametrize("softcap", [None, 2.0])
def test_frozen_head_jacobian_same_logps_and_gradients(smol_tokenizer, monkeypatch, softcap):
    obj = _objective(packing=True)
    items = obj.render_set(smol_tokenizer, PAIRS, "x", "sha").items
    model = _lora_model(fused=True)
    model.get_base_model().config.final_logit_softcapping = softcap
    batch = collate_pairs(items, 0, True, shared_prompt=True)
    out = {}
    for jacobian in (True, False):
        monkeypatch.setattr(preference, "FROZEN_HEAD_JACOBIAN", jacobian)
        model.zero_grad(set_to_none=True)
        logps, _ = preference.sequence_logps(model, batch, 2 * len(items), chunk_tokens=16)  # several chunks
        (logps * torch.linspace(-1, 2, logps.numel())).sum().backward()
        out[jacobian] = logps.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}
    torch.testing.assert_close(out[True][0], out[False][0], rtol=0, atol=0)
    assert out[True][1].keys() == out[False][1].keys() and out[True][1]
    for k, g in out[False][1].items():  # fp32 sums in another order: rounding relative to the gradient's scale
        torch.testing.assert_close(out[True][1][k], g, rtol=1e-4, atol=1e-5 * float(g.abs().max()), msg=k)
