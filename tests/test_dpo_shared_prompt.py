"""DPO with each pair's prompt once (the shared-prompt row and its 4-D mask) against the two-sequence layout
it replaces, on a seeded tiny Llama in fp32: the same reply log-probs, loss and LoRA gradients (plain PEFT and
the fused LoRA layers, packed and padded rows, sdpa and eager attention), the adapter-disabled and the stored
reference, and SimPO/ORPO through the same code."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_llama

from honing.config import build_config
from honing.data.conversation import Message, PreferencePair
from honing.train.objectives import SetupContext
from honing.train.orpo import ORPOObjective
from honing.train.preference import (
    DPOObjective,
    SimPOObjective,
    collate_pairs,
    compute_reference,
    shared_prompt_unsupported,
)

# Prompts of different lengths (one with a system message), replies that begin alike and differ in length.
PAIRS = [
    PreferencePair((Message("user", "Question 0: name a colour, please."),), "Blue.", "Blue, and also a long story."),
    PreferencePair((Message("system", "You answer in one word."), Message("user", "Question 1: a fruit?")),
                   "Apple, the red one.", "No."),
    PreferencePair((Message("user", "Q2"),), "Two words.", "I will not answer question 2 at all, sorry."),
]


def _objective(cls=DPOObjective, **values):
    config = build_config(values={"data": "x.jsonl", "objective": cls.name, **values})
    obj = cls(config)
    if cls is DPOObjective:
        obj.reference = "adapter_disabled"
    return obj


def _lora_model(fused: bool, attn: str = "sdpa"):
    from peft import LoraConfig, get_peft_model

    base = make_tiny_llama(seed=3)
    base.config._attn_implementation = attn
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    if fused:
        from honing.train.fused_lora import enable_fused_lora

        assert enable_fused_lora(model) > 0
    torch.manual_seed(7)
    with torch.no_grad():  # a moved adapter: the policy differs from the reference (adapter disabled)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    model.train()
    return model


def _loss_and_grads(model, obj, items, pad_id, shared: bool):
    model.zero_grad(set_to_none=True)
    batch = collate_pairs(items, pad_id, obj.config.packing, shared_prompt=shared)
    n = len(items)
    batch["n_pairs"] = torch.tensor(n)
    out = obj.loss(model, batch)
    out.loss_sum.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}
    return out, grads, batch


@pytest.mark.parametrize("fused,packing,attn", [(True, True, "sdpa"), (False, True, "sdpa"), (True, False, "sdpa"),
                                                (False, True, "eager")])
def test_shared_prompt_same_loss_and_lora_gradients(smol_tokenizer, fused, packing, attn):
    obj = _objective(packing=packing)
    items = obj.render_set(smol_tokenizer, PAIRS, "x", "sha").items
    assert all(it.shared_prefix > 5 for it in items)  # the layout really shares something
    model = _lora_model(fused, attn)
    pad = smol_tokenizer.pad_token_id
    old, g_old, b_old = _loss_and_grads(model, obj, items, pad, shared=False)
    new, g_new, b_new = _loss_and_grads(model, obj, items, pad, shared=True)
    assert b_new["input_ids"].numel() < b_old["input_ids"].numel()  # fewer tokens through the model
    torch.testing.assert_close(new.loss_sum, old.loss_sum, rtol=1e-5, atol=1e-6)
    for key in ("logps/chosen", "logps/rejected", "rewards/margin"):
        torch.testing.assert_close(new.stats[key], old.stats[key], rtol=1e-5, atol=1e-5)
    assert float(old.stats["rewards/margin"]) != 0.0  # control: the policy is not the reference
    assert g_new.keys() == g_old.keys() and len(g_new) > 0
    for k in g_old:
        torch.testing.assert_close(g_new[k], g_old[k], rtol=1e-4, atol=1e-7, msg=k)


def test_rejected_reply_cannot_see_the_chosen_one(smol_tokenizer):
    """Control for the mask: change a chosen reply's tokens and the rejected log-probs must not move (and the
    chosen ones must)."""
    from honing.train.preference import sequence_logps

    obj = _objective(packing=True)
    items = obj.render_set(smol_tokenizer, PAIRS, "x", "sha").items
    model = make_tiny_llama(seed=3).eval()
    batch = collate_pairs(items, 0, True, shared_prompt=True)
    first = items[0]
    ids = batch["input_ids"].clone()
    ids[0, first.shared_prefix : len(first.chosen)] = 17  # pair 0's chosen branch (its labels stay as they are)
    with torch.no_grad():
        before, _ = sequence_logps(model, batch, 6)
        after, _ = sequence_logps(model, dict(batch, input_ids=ids), 6)
    torch.testing.assert_close(after[3:], before[3:])  # rejected replies: untouched
    assert (after[0] - before[0]).abs() > 1e-4  # the changed chosen reply moves


def test_stored_reference_is_the_same_in_both_layouts(smol_tokenizer):
    obj = _objective(packing=True)
    items = obj.render_set(smol_tokenizer, PAIRS, "x", "sha").items
    model = make_tiny_llama(seed=3)
    shared = compute_reference(model, items, obj)
    obj.shared_prompt = False
    two = compute_reference(model, items, obj)
    torch.testing.assert_close(torch.tensor(shared), torch.tensor(two), rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("cls", [SimPOObjective, ORPOObjective])
def test_simpo_orpo_same_loss_in_both_layouts(smol_tokenizer, cls):
    obj = _objective(cls, packing=True)
    items = obj.render_set(smol_tokenizer, PAIRS, "x", "sha").items
    model = _lora_model(fused=True)
    old, g_old, _ = _loss_and_grads(model, obj, items, 0, shared=False)
    new, g_new, _ = _loss_and_grads(model, obj, items, 0, shared=True)
    torch.testing.assert_close(new.loss_sum, old.loss_sum, rtol=1e-5, atol=1e-6)
    for k in g_old:
        torch.testing.assert_close(g_new[k], g_old[k], rtol=1e-4, atol=1e-7, msg=k)


def test_unsupported_attention_falls_back_with_a_reason(smol_tokenizer):
    model = make_tiny_llama()
    assert shared_prompt_unsupported(model, 512) is None
    model.config.sliding_window = 64  # Gemma 2/3, Mistral: a window shorter than a pair's row needs its own mask
    assert "sliding-window" in shared_prompt_unsupported(model, 512)
    assert shared_prompt_unsupported(model, 32) is None  # rows within the window: the mask is exact
    model.config.sliding_window = None
    model.config._attn_implementation = "flash_attention_2"
    assert "flash_attention_2" in shared_prompt_unsupported(model, 512)
    obj, said = _objective(packing=True), []
    ctx = SetupContext(model=model, tokenizer=smol_tokenizer, run_dir=".", train_set=None, eval_set=None,
                       runtime=None, config=obj.config, resumed=False, log=said.append)
    obj.setup(ctx)
    assert obj.shared_prompt is False and any("two sequences per pair" in m for m in said)
    items = obj.render_set(smol_tokenizer, PAIRS, "x", "sha").items
    assert obj.collate(items, 0)["input_ids"].shape[1] == sum(len(it) for it in items)  # the old layout
