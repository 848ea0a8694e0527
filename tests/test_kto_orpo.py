"""KTO and ORPO numerics on a tiny seeded model against TRL's own loss code (copied below as golden reference
functions, with the file and commit they come from: TRL is not a dependency), and KTO's unpaired data format
with its line-numbered errors."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_llama

from honing.config import build_config
from honing.data.conversation import LabeledExample, Message, PreferencePair
from honing.data.formats import load_examples
from honing.data.validate import validate_file
from honing.errors import DataError
from honing.train.kto import KTOObjective, mismatched_partners, mismatched_view
from honing.train.orpo import ORPOObjective

# --- golden references: TRL's code, verbatim but for `self.` and accelerate's gather (one process: identity) ---


def trl_get_batch_logps(logits, labels, average_log_prob=False, label_pad_token_id=-100):
    """trl/experimental/kto/kto_trainer.py @ b8a6c0b5d237ed33907bf308cdd973cbfcd0c8ea, KTOTrainer.get_batch_logps
    (ORPOTrainer's is the same)."""
    labels = labels[:, 1:].clone()
    logits = logits[:, :-1, :]
    loss_mask = labels != label_pad_token_id
    labels[labels == label_pad_token_id] = 0
    per_token_logps = torch.gather(logits.log_softmax(-1), dim=2, index=labels.unsqueeze(2)).squeeze(2)
    if average_log_prob:
        return (per_token_logps * loss_mask).sum(-1) / loss_mask.sum(-1)
    return (per_token_logps * loss_mask).sum(-1)


def trl_kto_loss(policy_chosen_logps, policy_rejected_logps, policy_KL_logps, reference_chosen_logps,
                 reference_rejected_logps, reference_KL_logps, beta, desirable_weight, undesirable_weight):
    """trl/experimental/kto/kto_trainer.py @ b8a6c0b5d237ed33907bf308cdd973cbfcd0c8ea, KTOTrainer.kto_loss
    (loss_type "kto", calculate_KL True); get_batch_loss_metrics then takes losses.nanmean()."""
    kl = (policy_KL_logps - reference_KL_logps).mean().detach()
    kl = kl.mean().clamp(min=0)
    chosen_logratios = policy_chosen_logps - reference_chosen_logps
    chosen_losses = 1 - F.sigmoid(beta * (chosen_logratios - kl))
    chosen_rewards = beta * chosen_logratios.detach()
    rejected_logratios = policy_rejected_logps - reference_rejected_logps
    rejected_losses = 1 - F.sigmoid(beta * (kl - rejected_logratios))
    rejected_rewards = beta * rejected_logratios.detach()
    losses = torch.cat((desirable_weight * chosen_losses, undesirable_weight * rejected_losses), 0)
    return losses, chosen_rewards, rejected_rewards, kl


def trl_odds_ratio_loss(policy_chosen_logps, policy_rejected_logps, beta):
    """trl/experimental/orpo/orpo_trainer.py @ 85909e6b4ef02dd4be59a4ea70745db9437856d6,
    ORPOTrainer.odds_ratio_loss (the trainer's loss is then policy_nll_loss - losses.mean())."""
    log_odds = (policy_chosen_logps - policy_rejected_logps) - (
        torch.log1p(-torch.exp(policy_chosen_logps)) - torch.log1p(-torch.exp(policy_rejected_logps))
    )
    ratio = F.logsigmoid(log_odds)
    losses = beta * ratio
    chosen_rewards = beta * policy_chosen_logps.detach()
    rejected_rewards = beta * policy_rejected_logps.detach()
    return losses, chosen_rewards, rejected_rewards, torch.mean(ratio), torch.mean(log_odds)


# --- fixtures ---

LABELED = [LabeledExample((Message("user", f"Question {i}: name a colour."),),
                          f"Blue, number {i}." if i % 3 else f"I will not answer question {i}, sorry.", bool(i % 3))
           for i in range(6)]
PAIRS = [PreferencePair((Message("user", f"Question {i}: name a colour."),), f"Blue, number {i}.",
                        f"I will not answer question {i} at all, sorry.") for i in range(4)]


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_llama()


def _config(objective, **values):
    return build_config(values={"data": "x.jsonl", "objective": objective, "packing": False, **values})


def _full_logits(model, batch):
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits.float()


# --- KTO ---


def test_kto_loss_equals_trl(tiny, smol_tokenizer):
    """Outside the loop (no prepare_step) z0 is the micro-batch's, exactly TRL's estimate."""
    beta, dw, uw = 0.3, 1.5, 0.7
    obj = KTOObjective(_config("kto", **{"kto.beta": beta, "kto.desirable_weight": dw, "kto.undesirable_weight": uw}))
    items = obj.render_set(smol_tokenizer, LABELED, "x", "sha").items
    # A reference that differs from the policy, so the log-ratios and z0 are not zero.
    refs = [(-80.0 + 5 * i, -300.0 + 3 * i) for i in range(len(items))]
    for it, r in zip(items, refs):
        it.ref = r
    batch = obj.collate(items, smol_tokenizer.pad_token_id)
    mine = obj.loss(tiny, batch)
    with torch.no_grad():
        own = trl_get_batch_logps(_full_logits(tiny, batch), batch["labels"])
        kl_view = mismatched_view(batch)
        other = trl_get_batch_logps(_full_logits(tiny, kl_view), kl_view["labels"])
    up = batch["desirable"]
    ref_own, ref_other = torch.tensor([r[0] for r in refs]), torch.tensor([r[1] for r in refs])
    losses, rc, rr, kl = trl_kto_loss(own[up], own[~up], other, ref_own[up], ref_own[~up], ref_other, beta, dw, uw)
    assert float(kl) > 0  # control: z0 is not clamped away
    assert float(mine.loss_sum.detach()) / len(items) == pytest.approx(float(losses.nanmean()), rel=1e-5, abs=1e-6)
    assert float(mine.stats["kl"]) / len(items) == pytest.approx(float(kl), rel=1e-5)
    signed = (rc.sum() - rr.sum()) / len(items)
    assert float(mine.stats["rewards/signed"]) / len(items) == pytest.approx(float(signed), rel=1e-4, abs=1e-6)
    assert mine.loss_sum.requires_grad


def test_kto_mismatched_replies_come_from_other_prompts():
    prompts = ["a", "a", "b", "b", "c", "c", "d"]
    partners = mismatched_partners(prompts)
    assert all(prompts[j] != prompts[i] for i, j in enumerate(partners))
    assert mismatched_partners(["only"]) == [0]  # one example: nothing else to pair with (warned at render)


def test_kto_needs_labeled_examples(smol_tokenizer):
    with pytest.raises(DataError, match="line 3: objective 'kto' needs unpaired examples"):
        KTOObjective(_config("kto")).render_set(smol_tokenizer, [PreferencePair(PAIRS[0].prompt, "a", "b", line=3)],
                                                "f.jsonl", "sha")


# --- ORPO ---


def test_orpo_odds_ratio_equals_trl_and_nll_is_per_pair(tiny, smol_tokenizer):
    beta = 0.25
    obj = ORPOObjective(_config("orpo", **{"orpo.beta": beta}))
    obj.shared_prompt = False  # TRL's log-probs: one sequence per reply (tests/test_dpo_shared_prompt.py: same loss)
    items = obj.render_set(smol_tokenizer, PAIRS, "x", "sha").items
    batch = obj.collate(items, smol_tokenizer.pad_token_id)
    mine = obj.loss(tiny, batch)
    with torch.no_grad():
        avg = trl_get_batch_logps(_full_logits(tiny, batch), batch["labels"], average_log_prob=True)
    n = len(items)
    losses, rc, rr, ratio_mean, log_odds_mean = trl_odds_ratio_loss(avg[:n], avg[n:], beta)
    nll = -avg[:n]  # the ORPO paper's per-pair NLL of the chosen reply (TRL: one token-mean, prompt included)
    assert float(mine.stats["nll_loss"]) == pytest.approx(float(nll.sum()), rel=1e-5)
    assert float(mine.loss_sum.detach()) == pytest.approx(float(nll.sum() - losses.sum()), rel=1e-5)
    assert float(mine.stats["log_odds_ratio"]) / n == pytest.approx(float(ratio_mean), rel=1e-5)
    assert float(mine.stats["log_odds_chosen"]) / n == pytest.approx(float(log_odds_mean), rel=1e-5)
    assert float(mine.stats["rewards/margin"]) / n == pytest.approx(float((rc - rr).mean()), rel=1e-4)
    assert mine.loss_sum.requires_grad


# --- KTO's data: TRL's unpaired format, chat with a label, CSV; line-numbered errors ---

GOOD = [
    {"prompt": "What is 2+2?", "completion": "4", "label": True},
    {"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": "Hello"}],
     "label": False},
]
BAD = [  # (record, category)
    ({"prompt": "x", "completion": "y", "label": "true"}, "invalid_label"),
    ({"prompt": "x", "completion": "y", "label": 1}, "invalid_label"),
    ({"prompt": "x", "completion": "", "label": True}, "empty_content"),
    ({"messages": [{"role": "user", "content": "Hi"}], "label": True}, "not_ending_with_assistant"),
    ({"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}], "label": True},
     "prompt_not_ending_with_user"),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "a"}], "prompt": "p",
      "label": True}, "invalid_field"),
    ({"completion": "y", "label": False}, "missing_field"),
]


def test_unpaired_formats_and_errors_with_lines(tmp_path):
    chat = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}], "label": True}
    rows = GOOD + [chat] + [r for r, _ in BAD]
    path = tmp_path / "kto.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = validate_file(path, min_examples=1)
    assert report.format == "unpaired"
    assert report.lines("error") == [(4 + i, cat) for i, (_, cat) in enumerate(BAD)]
    string_label = next(p for p in report.problems if p.line == 4)
    assert "not a string 'true'" in string_label.message
    examples = load_examples(path, on_error="skip")
    assert [(e.completion, e.label) for e in examples] == [("4", True), ("Hello", False), ("Yo", True)]
    with pytest.raises(DataError, match=r"kto.jsonl:4: invalid_label"):
        load_examples(path)


def test_unpaired_csv_labels(tmp_path):
    path = tmp_path / "kto.csv"
    path.write_text('prompt,completion,label\nWhat is 2+2?,4,true\n"Hi",Hello,False\nx,y,maybe\n')
    report = validate_file(path, min_examples=1)
    assert report.lines("error") == [(4, "invalid_label")]
    assert [e.label for e in load_examples(path, on_error="skip")] == [True, False]
