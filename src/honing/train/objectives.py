"""Training objectives. The loop only needs ``loss(model, batch) -> (loss_sum, n_tokens)``: the loss
summed over trained tokens (not averaged), so the loop can divide by the trained tokens of the whole
optimizer step across accumulation and processes. A new objective (DPO next) plugs in by implementing
the same two methods and being listed in ``OBJECTIVES``.
"""

from __future__ import annotations

from typing import Protocol

from honing.data.render import IGNORE_INDEX


class Objective(Protocol):
    name: str

    def loss(self, model, batch: dict):
        """(loss_sum: 0-dim float32 tensor with grad, n_tokens: int) for one micro-batch."""
        ...

    def trained_tokens(self, item) -> int:
        """Tokens ``item`` contributes to n_tokens (for the global normalizer, known before the forward)."""
        ...


def token_cross_entropy_sum(model, batch: dict):
    """Sum of next-token cross-entropy over positions whose (unshifted) label is not -100.

    Uses the performance engineer's chunked loss (``honing.train.losses``) when present: it never builds
    the full fp32 [tokens, vocab] logits. Fallback: logits from the model, upcast to fp32, plain CE.
    """
    import torch.nn.functional as F

    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    try:
        from honing.train.losses import causal_lm_loss_sum  # type: ignore[attr-defined]
    except ImportError:
        causal_lm_loss_sum = None
    if causal_lm_loss_sum is not None:
        return causal_lm_loss_sum(model, inputs, labels)
    logits = model(**inputs, use_cache=False).logits  # [B, T, V]
    shift_logits = logits[:, :-1, :].float()  # position t predicts token t+1
    shift_labels = labels[:, 1:]
    loss_sum = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX, reduction="sum",
    )
    return loss_sum, int((shift_labels != IGNORE_INDEX).sum())


class SFTObjective:
    """Supervised fine-tuning: cross-entropy on the assistant tokens (the render's loss mask)."""

    name = "sft"

    def loss(self, model, batch: dict):
        return token_cross_entropy_sum(model, batch)

    def trained_tokens(self, item) -> int:
        return sum(item.loss_mask[1:])


OBJECTIVES = {"sft": SFTObjective}
