"""Training objectives: what a run optimizes, as components the one loop calls.

An objective owns everything that differs between ways of training (the loop owns everything that does
not): how examples are rendered into items, how a micro-batch is collated, the loss of a micro-batch as
a *sum* over its normalizer units (trained tokens for SFT, pairs for preference tuning), the statistics
it logs, the eval metric that picks the best checkpoint, and any one-time setup (e.g. reference
log-probabilities). The loop divides the summed loss by the normalizer of the whole optimizer step
across accumulation and processes, so batch 4 x accumulation 1 and 2 processes x batch 2 give the same
gradient, whatever the objective.

A new objective subclasses :class:`Objective` in its own module and is listed in
``honing.train.registry.OBJECTIVES`` (the one module that imports every objective; objectives never import
the registry or each other's modules, so there is no circle).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from honing.data.render import IGNORE_INDEX
from honing.train.batching import make_collate
from honing.train.dataset import read_examples, render_set
from honing.train.losses import causal_lm_loss_sum, causal_lm_loss_sums


@dataclass
class LossOutput:
    """One micro-batch's loss. ``loss_sum``: 0-dim tensor with grad, summed over the micro-batch's
    normalizer units. ``stats``: detached sums over the same units (e.g. ``rewards/chosen``); the loop sums
    them over the step and processes and divides by the step's normalizer before logging. ``replay_sum``: the
    replay rows' loss sum (with grad) when the batch came from ``collate_with_replay``; ``loss_sum`` is then
    the task rows' alone."""

    loss_sum: object
    stats: dict = field(default_factory=dict)
    replay_sum: object = None


@dataclass
class SetupContext:
    """What ``Objective.setup`` may use, once, before the first optimizer step."""

    model: object  # the unwrapped trainable model
    tokenizer: object
    run_dir: object
    train_set: object
    eval_set: object | None
    runtime: object
    config: object
    resumed: bool
    log: object


class Objective:
    """The base: subclasses implement ``render_set``, ``normalizer`` and ``loss`` at least."""

    name = "base"
    eval_metric = "eval_loss"  # the logged metric that picks the best checkpoint
    eval_higher_is_better = False  # a loss: lower is better (a reward: higher)
    progress_metric, progress_label = "train_loss", "loss"  # what the progress bar shows of each step
    packing_supported = True  # may items of a micro-batch share one packed row
    # May a step's replay items share a task micro-batch's forward (``collate_with_replay``)? Only where the
    # loss is a sum over rows that the two label sets split exactly (token cross-entropy): a preference or
    # reinforcement loss couples rows (pairs, groups) and takes no replay chats anyway.
    folds_replay = False

    def __init__(self, config):
        self.config = config

    def read_examples(self, path, data_format: str = "auto") -> list:
        """The examples of a data file (default: every format ``honing.data.formats`` reads)."""
        return read_examples(path, data_format)

    def render_set(self, tokenizer, examples: list, path: str, sha256: str):
        """A ``honing.train.dataset.RenderedSet`` of this objective's items."""
        raise NotImplementedError

    def collate(self, items: list, pad_id: int) -> dict:
        return make_collate(self.config.packing and self.packing_supported, pad_id)(items)

    def collate_with_replay(self, items: list, replay: list, pad_id: int) -> dict:
        """One batch of ``items`` and then ``replay`` whose ``loss`` returns the two loss sums apart (only where
        ``folds_replay``)."""
        raise NotImplementedError(f"objective {self.name} trains replay items in a forward of their own")

    def normalizer(self, item) -> int:
        """Units ``item`` adds to the step's normalizer (known before the forward)."""
        raise NotImplementedError

    def tokens(self, item) -> int:
        """Tokens ``item`` puts through the model (throughput, token budgets)."""
        return len(item)

    def trained_tokens(self, item) -> int:
        """Loss-bearing tokens of ``item`` (the trained-token count and rate users see); the normalizer's
        units where those are tokens (SFT, CPT), the completion tokens of both replies for a pair."""
        return self.normalizer(item)

    def loss(self, model, batch: dict) -> LossOutput:
        raise NotImplementedError

    def setup(self, ctx: SetupContext) -> None:
        """One-time work before training (default: none)."""

    def prepare_step(self, step: int, batches: list[list]) -> tuple[list[list], dict]:
        """This process's micro-batches of the step, before any normalizer is counted: an objective that
        generates its training data on the fly (GRPO's sampled completions) turns them into what its
        ``collate``/``loss`` take. Returns (micro-batches, statistics as {name: (sum, count)}), the
        statistics summed over processes and logged as sum / count. Default: unchanged, none."""
        return batches, {}

    def evaluate(self, items: list) -> dict | None:
        """Eval metrics computed by the objective itself (e.g. a validation reward); None: the loop's
        default, the objective's loss over the eval set."""
        return None

    def close(self) -> None:
        """Release what ``setup`` started (e.g. sandboxed grader processes); called when the run ends."""


def token_cross_entropy_sum(model, batch: dict):
    """(sum of next-token cross-entropy over positions whose unshifted label is not -100, their count).

    The chunked loss (``honing.train.losses``) never builds the full fp32 [tokens, vocab] logits."""
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return causal_lm_loss_sum(model, inputs, labels)


class SFTObjective(Objective):
    """Supervised fine-tuning: cross-entropy on the assistant tokens (the render's loss mask)."""

    name = "sft"
    folds_replay = True

    def render_set(self, tokenizer, examples, path, sha256):
        return render_set(tokenizer, examples, self.config.max_length, path, sha256, self.name)

    def normalizer(self, item) -> int:
        return sum(item.loss_mask[1:])

    def collate_with_replay(self, items: list, replay: list, pad_id: int) -> dict:
        """``items`` and ``replay`` collated as one micro-batch (padded rows or one packed row, as the run's
        ``collate``), with the trained positions split in two: ``labels`` keeps the task's, ``replay_labels``
        the replay's (-100 elsewhere in each). Replay items come last: padded, their rows; packed, the row's
        tail (whose first token is never a target: ``honing.train.packing``)."""
        import torch

        batch = self.collate(list(items) + list(replay), pad_id)
        labels = batch["labels"]
        is_replay = torch.zeros(labels.shape, dtype=torch.bool)
        if "attention_mask" in batch:  # padded: one row per item
            is_replay[len(items):] = True
        else:  # packed: [1, T], the items' tokens in order
            is_replay[:, sum(len(it) for it in items):] = True
        batch["labels"] = labels.masked_fill(is_replay, IGNORE_INDEX)
        batch["replay_labels"] = labels.masked_fill(~is_replay, IGNORE_INDEX)
        return batch

    def loss(self, model, batch):
        if "replay_labels" in batch:
            inputs = {k: v for k, v in batch.items() if k not in ("labels", "replay_labels")}
            (task, _), (replay, _) = causal_lm_loss_sums(model, inputs, [batch["labels"], batch["replay_labels"]])
            return LossOutput(task, replay_sum=replay)
        loss_sum, _n = token_cross_entropy_sum(model, batch)
        return LossOutput(loss_sum)


__all__ = [
    "IGNORE_INDEX",
    "LossOutput",
    "Objective",
    "SFTObjective",
    "SetupContext",
    "token_cross_entropy_sum",
]
