"""DPO / SimPO numerics on a tiny seeded model: reply log-probs against full logits, each loss type against a
hand computation and against TRL's DPOTrainer, the reference pass against the base model, step 0."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_tiny_llama

from honing.config import build_config
from honing.data.conversation import Message, PreferencePair
from honing.train.preference import DPOObjective, SimPOObjective, dpo_losses, sequence_logps

PAIRS = [PreferencePair((Message("user", f"Question {i}: name a colour."),), f"Blue, number {i}.",
                        f"I will not answer question {i} at all, sorry.") for i in range(4)]


def _config(**values):
    return build_config(values={"data": "x.jsonl", "objective": "dpo", **values})


def _full_logps(model, batch, n):
    """The obvious way: full logits, log_softmax, sum over each sequence's trained tokens."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                   position_ids=batch["position_ids"], use_cache=False).logits.float()  # a cache turns packing off
    lp = torch.log_softmax(logits[:, :-1], dim=-1)
    labels, owner = batch["labels"][:, 1:], batch["sequence_index"][:, 1:]
    keep = labels != -100
    token_lp = lp[keep].gather(1, labels[keep].unsqueeze(1)).squeeze(1)
    return torch.zeros(n).index_add(0, owner[keep], token_lp)


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_llama()


@pytest.mark.parametrize("packing", [False, True])
def test_sequence_logps_equal_full_logits_and_gradients(tiny, smol_tokenizer, packing):
    obj = DPOObjective(_config(packing=packing))
    items = obj.render_set(smol_tokenizer, PAIRS, "x", "sha").items
    batch = obj.collate(items, smol_tokenizer.pad_token_id)
    mine, counts = sequence_logps(tiny, batch, 8, chunk_tokens=32)  # several chunks, recomputed in the backward
    g_mine = torch.autograd.grad(mine.sum(), tiny.model.layers[1].mlp.down_proj.weight)[0]
    ref = _full_logps(tiny, batch, 8)
    g_ref = torch.autograd.grad(ref.sum(), tiny.model.layers[1].mlp.down_proj.weight)[0]
    torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(g_mine, g_ref, rtol=1e-4, atol=1e-6)
    expected = [sum(it.chosen.loss_mask[1:]) for it in items] + [sum(it.rejected.loss_mask[1:]) for it in items]
    assert counts.tolist() == expected
    # Control: the rejected replies are the longer ones, so their log-probs are lower.
    assert (mine[4:] < mine[:4]).all()


def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


def _hand_loss(lt, beta, ls, pc, pr, rc, rr, nc, nr):
    d = (pc - rc) - (pr - rr)
    if lt == "sigmoid":
        return -(1 - ls) * math.log(_sigmoid(beta * d)) - ls * math.log(_sigmoid(-beta * d))
    if lt == "robust":
        return (-(1 - ls) * math.log(_sigmoid(beta * d)) + ls * math.log(_sigmoid(-beta * d))) / (1 - 2 * ls)
    if lt == "hinge":
        return max(0.0, 1 - beta * d)
    return ((pc - rc) / nc - (pr - rr) / nr - 1 / (2 * beta)) ** 2  # ipo


CASES = [("sigmoid", 0.1, 0.0), ("sigmoid", 0.5, 0.2), ("robust", 0.1, 0.2), ("hinge", 0.3, 0.0), ("ipo", 0.1, 0.0)]


@pytest.mark.parametrize("loss_type,beta,ls", CASES)
def test_dpo_loss_equals_hand_computation(tiny, smol_tokenizer, loss_type, beta, ls):
    obj = DPOObjective(_config(packing=False, **{"dpo.loss_type": loss_type, "dpo.beta": beta,
                                                  "dpo.label_smoothing": ls}))
    items = obj.render_set(smol_tokenizer, PAIRS, "x", "sha").items
    refs = [(-60.0 + 3 * i, -70.0 - 2 * i) for i in range(4)]
    for it, r in zip(items, refs):
        it.ref = r
    batch = obj.collate(items, smol_tokenizer.pad_token_id)
    out = obj.loss(tiny, batch)
    with torch.no_grad():
        lp = _full_logps(tiny, batch, 8).tolist()
    nc = [sum(it.chosen.loss_mask[1:]) for it in items]
    nr = [sum(it.rejected.loss_mask[1:]) for it in items]
    hand = [_hand_loss(loss_type, beta, ls, lp[i], lp[4 + i], *refs[i], nc[i], nr[i]) for i in range(4)]
    assert float(out.loss_sum) == pytest.approx(sum(hand), rel=1e-4, abs=1e-5)
    rewards_c = [beta * (lp[i] - refs[i][0]) for i in range(4)]
    rewards_r = [beta * (lp[4 + i] - refs[i][1]) for i in range(4)]
    assert float(out.stats["rewards/chosen"]) == pytest.approx(sum(rewards_c), rel=1e-4)
    assert float(out.stats["rewards/margin"]) == pytest.approx(sum(rewards_c) - sum(rewards_r), rel=1e-4)
    assert float(out.stats["rewards/accuracy"]) == sum(c > r for c, r in zip(rewards_c, rewards_r))
    assert out.loss_sum.requires_grad


def test_dpo_loss_equals_trl_dpotrainer(smol_tokenizer, tmp_path):
    """TRL's own DPOTrainer._compute_loss on the same batch, model and reference log-probs.
    (TRL >= 1.0's sigmoid loss ignores label_smoothing, so the smoothed cases are compared by hand above.)"""
    pytest.importorskip("trl")
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    model = make_tiny_llama()
    rows = [{"prompt": [{"role": "user", "content": p.prompt[0].content}],
             "chosen": [{"role": "assistant", "content": p.chosen}],
             "rejected": [{"role": "assistant", "content": p.rejected}]} for p in PAIRS]
    args = DPOConfig(output_dir=str(tmp_path), precompute_ref_log_probs=True, report_to=[], use_cpu=True,
                     disable_tqdm=True)
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=smol_tokenizer)
    refs = [(-60.0 + 3 * i, -70.0 - 2 * i) for i in range(4)]
    for loss_type, beta, ls in [("sigmoid", 0.1, 0.0), ("robust", 0.1, 0.2), ("hinge", 0.3, 0.0), ("ipo", 0.1, 0.0)]:
        obj = DPOObjective(_config(packing=False, **{"dpo.loss_type": loss_type, "dpo.beta": beta,
                                                      "dpo.label_smoothing": ls}))
        obj.shared_prompt = False  # TRL's inputs: one sequence per reply (tests/test_dpo_shared_prompt.py: same loss)
        items = obj.render_set(smol_tokenizer, PAIRS, "x", "sha").items
        for it, r in zip(items, refs):
            it.ref = r
        batch = obj.collate(items, smol_tokenizer.pad_token_id)
        trainer.loss_types, trainer.beta, trainer.label_smoothing = [loss_type], beta, ls
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
                  "completion_mask": (batch["labels"] != -100).long(),
                  "ref_chosen_logps": torch.tensor([r[0] for r in refs]),
                  "ref_rejected_logps": torch.tensor([r[1] for r in refs])}
        theirs = float(trainer._compute_loss(trainer.model, inputs, False))
        mine = obj.loss(trainer.model, batch)
        assert float(mine.loss_sum) / 4 == pytest.approx(theirs, rel=1e-5, abs=1e-6), loss_type
        metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
        assert float(mine.stats["rewards/margin"]) / 4 == pytest.approx(metrics["rewards/margins"], rel=1e-5)
        assert float(mine.stats["logps/chosen"]) / 4 == pytest.approx(metrics["logps/chosen"], rel=1e-5)


def _lora(model, fused: bool):
    from peft import LoraConfig, get_peft_model

    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    if fused:
        from honing.train.fused_lora import enable_fused_lora

        assert enable_fused_lora(peft) > 0
    return peft


@pytest.mark.parametrize("fused", [False, True])
def test_reference_pass_is_the_base_model_and_step0_is_log2(smol_tokenizer, fused):
    base = make_tiny_llama(seed=5)
    obj = DPOObjective(_config(packing=True))
    obj.reference = "adapter_disabled"
    items = obj.render_set(smol_tokenizer, PAIRS, "x", "sha").items
    batch = obj.collate(items, smol_tokenizer.pad_token_id)
    with torch.no_grad():
        expected = _full_logps(base, batch, 8)
    model = _lora(make_tiny_llama(seed=5), fused)
    model.train()
    # Step 0: a fresh adapter (B = 0) is the reference: loss log 2 per pair, rewards 0.
    out = obj.loss(model, batch)
    assert float(out.loss_sum) / 4 == pytest.approx(math.log(2), abs=1e-6)
    assert float(out.stats["rewards/chosen"]) == pytest.approx(0.0, abs=1e-6)
    assert float(out.stats["rewards/margin"]) == pytest.approx(0.0, abs=1e-6)
    # Move the adapter: the reference must still be the base model, the policy must not.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    ref = obj.reference_logps(model, batch)
    torch.testing.assert_close(ref, expected, rtol=1e-5, atol=1e-4)
    policy, _ = sequence_logps(model, batch, 8)
    assert (policy - expected).abs().max() > 1e-2  # control: the adapter does change the log-probs
    assert model.training  # the reference pass leaves the mode alone


def test_simpo_loss_hand_computation(tiny, smol_tokenizer):
    cfg = build_config(values={"data": "x.jsonl", "objective": "simpo", "simpo.beta": 2.0, "simpo.gamma": 0.5})
    obj = SimPOObjective(cfg)
    items = obj.render_set(smol_tokenizer, PAIRS, "x", "sha").items
    batch = obj.collate(items, smol_tokenizer.pad_token_id)
    out = obj.loss(tiny, batch)
    with torch.no_grad():
        lp = _full_logps(tiny, batch, 8).tolist()
    hand = 0.0
    for i, it in enumerate(items):
        c = 2.0 * lp[i] / sum(it.chosen.loss_mask[1:])
        r = 2.0 * lp[4 + i] / sum(it.rejected.loss_mask[1:])
        hand += -math.log(_sigmoid(c - r - 0.5))
    assert float(out.loss_sum) == pytest.approx(hand, rel=1e-4)
    assert "ref_logps" not in batch


def test_dpo_losses_reject_unknown_type():
    z = torch.zeros(2)
    with pytest.raises(ValueError, match="unknown DPO loss_type"):
        dpo_losses(z, z, z, z, 0.1, "kto")


def test_dpo_needs_preference_pairs(smol_tokenizer):
    from honing.data.conversation import chat
    from honing.errors import DataError

    obj = DPOObjective(_config())
    with pytest.raises(DataError, match=r"x line 7: objective 'dpo' needs preference pairs"):
        obj.render_set(smol_tokenizer, [chat(("user", "hi"), ("assistant", "yo"), line=7)], "x", "sha")
