"""Forgetting: did fine-tuning cost general ability?

Two probes outside any training domain, both shipped in ``honing/resources`` (see its README):

* perplexity on a general-text sample (``general_text.txt``, ~2,900 words of everyday prose);
* accuracy on a small general question set (``general_qa.jsonl``, 40 questions with short known
  answers), counted right when the normalized answer appears as whole words in the reply.

A drop is flagged when perplexity rises by more than ``PPL_RISE`` (relative) or QA accuracy falls by
more than ``QA_DROP`` (absolute).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources

from honing.data.conversation import Message
from honing.evaluate.generation import generate, text_perplexity
from honing.evaluate.metrics import normalize_answer

PPL_RISE = 0.20  # flag: perplexity up more than 20 %
QA_DROP = 0.10  # flag: accuracy down more than 10 points
QA_SYSTEM = "Answer the question briefly."
QA_MAX_NEW_TOKENS = 24


def general_text() -> str:
    return resources.files("honing").joinpath("resources", "general_text.txt").read_text(encoding="utf-8")


def general_questions() -> list[dict]:
    text = resources.files("honing").joinpath("resources", "general_qa.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def answer_contained(reply: str, answer: str) -> float:
    """1.0 when the normalized answer occurs as whole words in the normalized reply."""
    a = normalize_answer(answer)
    return float(bool(a) and re.search(rf"(?<!\S){re.escape(a)}(?!\S)", normalize_answer(reply)) is not None)


@dataclass
class GeneralAbility:
    """One model's general-ability probe: perplexity (per token, e^loss) and QA accuracy in [0, 1]."""

    perplexity: float
    qa_accuracy: float
    qa_correct: list[float]
    qa_replies: list[str]

    def to_dict(self) -> dict:
        return {"perplexity": self.perplexity, "qa_accuracy": self.qa_accuracy}


def general_ability(model, tokenizer) -> GeneralAbility:
    ppl = text_perplexity(model, tokenizer, general_text()).perplexity
    qs = general_questions()
    prompts = [(Message("system", QA_SYSTEM), Message("user", q["question"])) for q in qs]
    replies = generate(model, tokenizer, prompts, QA_MAX_NEW_TOKENS).texts
    correct = [answer_contained(r, q["answer"]) for r, q in zip(replies, qs)]
    return GeneralAbility(ppl, sum(correct) / len(correct), correct, replies)


# The in-training probe: a fixed slice of the general text, in windows spread over the whole passage so
# several of its topics are represented. 512 tokens are one forward of ~0.5 s for a 135M model on 2 CPU
# cores: cheap enough to run at every eval.
PROBE_TOKENS = 512
PROBE_WINDOW = 128


class TextProbe:
    """General-text perplexity on a small fixed slice of ``general_text.txt``, for use during training.

    The ratio to the value before training tracks the evaluation's perplexity check (which reads the whole
    text): a model whose probe ratio stays under ``1 + PPL_RISE`` rarely gets flagged for perplexity.
    """

    def __init__(self, tokenizer, tokens: int = PROBE_TOKENS, window: int = PROBE_WINDOW):
        ids = tokenizer(general_text(), add_special_tokens=False)["input_ids"]
        n_windows = max(1, min(tokens // window, len(ids) // window))
        stride = max(window, len(ids) // n_windows)
        self.windows = [ids[i * stride: i * stride + window] for i in range(n_windows)]

    def perplexity(self, model) -> float:
        """e^(mean next-token loss) over the probe's windows; ``model`` in eval mode, any device."""
        import math

        import torch
        import torch.nn.functional as F

        device = next(model.parameters()).device
        ids = torch.tensor(self.windows, dtype=torch.long, device=device)
        with torch.no_grad():
            logits = model(input_ids=ids).logits[:, :-1].float()
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        return math.exp(float(loss))


def forgetting_verdict(before: GeneralAbility, after: GeneralAbility) -> dict:
    """Numbers before/after and whether the change crosses a threshold (``flagged``, with reasons)."""
    rise = after.perplexity / before.perplexity - 1 if before.perplexity > 0 else 0.0
    drop = before.qa_accuracy - after.qa_accuracy
    reasons = []
    if rise > PPL_RISE:
        reasons.append(f"general-text perplexity up {rise:+.0%} (threshold {PPL_RISE:.0%})")
    if drop > QA_DROP:
        reasons.append(f"general QA accuracy down {drop * 100:.1f} points (threshold {QA_DROP * 100:.0f})")
    return {
        "before": before.to_dict(),
        "after": after.to_dict(),
        "perplexity_change": rise,
        "qa_accuracy_change": -drop,
        "thresholds": {"perplexity_rise": PPL_RISE, "qa_accuracy_drop": QA_DROP},
        "flagged": bool(reasons),
        "reasons": reasons,
    }
