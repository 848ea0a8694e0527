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
