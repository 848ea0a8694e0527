"""``auto`` hyperparameters, chosen from the dataset size the way OpenAI's fine-tuning service does.

Epochs follow OpenAI's published default rule (cookbook "Chat_finetuning_data_prep", the constants the
service documents): 3 epochs, but more for small datasets so the model sees at least ~100 examples in
total, and fewer for large ones so it sees at most ~25,000, always within [1, 25].

Batch size follows the service's documented behaviour (about 0.2% of the training examples, at most
256), rounded to the nearest power of two so rows stay regular.

Learning rate: the service exposes a multiplier, not a value; we pick the usual peak for each method
(LoRA 2e-4, full 1e-5 at batch 4) and scale it with the square root of the batch size, the rule that
keeps Adam's update noise roughly constant, clamped to a safe band.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

TARGET_EPOCHS = 3
MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25_000
MIN_DEFAULT_EPOCHS = 1
MAX_DEFAULT_EPOCHS = 25

BATCH_FRACTION = 0.002
MAX_BATCH = 256

BASE_LR = {"lora": 2e-4, "qlora": 2e-4, "full": 1e-5}
LR_BAND = {"lora": (1e-4, 1e-3), "qlora": (1e-4, 1e-3), "full": (5e-6, 5e-5)}
# Preference tuning (DPO, SimPO) moves a model that already answers well by small log-ratio margins: the
# usual recipes (Zephyr, TRL's examples) train at about a tenth of the SFT rate or less.
PREFERENCE_LR_FACTOR = 0.1
LR_REFERENCE_BATCH = 4

MAX_MICRO_BATCH = 8


def auto_epochs(n_examples: int) -> int:
    """OpenAI's rule: 3 epochs, stretched so n*epochs >= 100, shrunk so n*epochs <= 25,000."""
    n = max(1, n_examples)
    if n * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_DEFAULT_EPOCHS, MIN_TARGET_EXAMPLES // n)
    if n * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(MIN_DEFAULT_EPOCHS, MAX_TARGET_EXAMPLES // n)
    return TARGET_EPOCHS


def auto_batch_size(n_examples: int) -> int:
    """~0.2% of the examples, rounded to the nearest power of two, clamped to [1, 256]."""
    raw = BATCH_FRACTION * max(1, n_examples)
    if raw <= 1:
        return 1
    return int(min(MAX_BATCH, 2 ** round(math.log2(raw))))


def auto_learning_rate(method: str, batch_size: int) -> float:
    """Method's base LR at batch 4, scaled by sqrt(batch/4), clamped to the method's band."""
    lo, hi = LR_BAND[method]
    lr = BASE_LR[method] * math.sqrt(batch_size / LR_REFERENCE_BATCH)
    return float(min(hi, max(lo, lr)))


# On CPU, tokens one forward pass should hold. Several examples in one forward (packed or padded) make
# sdpa compute every T x T attention block of the row and keep it for the backward: with ~500-token
# examples one example per forward is 1.9x faster and needs 0.37x the memory of four
# (docs/performance.md, "Levers"); with ~90-token examples, batching 8 is ~2x faster than one at a
# time (per-op overhead dominates). A token budget per forward serves both.
CPU_TOKENS_PER_FORWARD = 512


# On a GPU, one packed row of this many tokens per forward (varlen attention keeps each example to
# itself, so a long row costs no T x T mask): large enough to keep the tensor cores busy on 1B-8B
# models, small enough for their activations on a 24-80 GB card.
GPU_TOKENS_PER_FORWARD = 16_384
MAX_GPU_MICRO_BATCH = 256


def auto_micro_batch_size(batch_size: int, world_size: int, mean_tokens: float | None = None,
                          on_gpu: bool = False) -> int:
    """The largest divisor of the per-process batch (so accumulation is exact) within a token budget per
    forward: ``CPU_TOKENS_PER_FORWARD`` (and at most 8 examples) on CPU, ``GPU_TOKENS_PER_FORWARD`` on a
    GPU; at least 1."""
    per_rank = max(1, batch_size // world_size)
    budget, cap = (GPU_TOKENS_PER_FORWARD, MAX_GPU_MICRO_BATCH) if on_gpu else (CPU_TOKENS_PER_FORWARD, MAX_MICRO_BATCH)
    if mean_tokens:
        cap = max(1, min(cap, int(budget // mean_tokens)))
    return max(d for d in range(1, min(per_rank, cap) + 1) if per_rank % d == 0)


@dataclass(frozen=True)
class Hyperparameters:
    """The resolved values a run trains with; ``chosen`` lists which ones were ``auto``."""

    epochs: int
    batch_size: int  # examples per optimizer step, all processes and accumulation together
    micro_batch_size: int  # examples per forward pass per process
    grad_accumulation: int
    learning_rate: float
    steps_per_epoch: int
    total_steps: int
    eval_every: int
    save_every: int
    chosen: tuple[str, ...]

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        def mark(k: str) -> str:
            return " (auto)" if k in self.chosen else ""

        return (
            f"epochs={self.epochs}{mark('epochs')}  batch_size={self.batch_size}{mark('batch_size')}  "
            f"micro_batch_size={self.micro_batch_size}{mark('micro_batch_size')} x "
            f"accumulation={self.grad_accumulation}  learning_rate={self.learning_rate:.3g}"
            f"{mark('learning_rate')}  steps={self.total_steps} ({self.steps_per_epoch}/epoch"
            f"{'; max_steps ends the run first' if self.total_steps < self.epochs * self.steps_per_epoch else ''})  "
            f"eval_every={self.eval_every}{mark('eval_every')}  save_every={self.save_every}{mark('save_every')}"
        )


def resolve_hyperparameters(config, n_train: int, world_size: int = 1, mean_tokens: float | None = None,
                            on_gpu: bool = False) -> Hyperparameters:
    """Turn the config's ``auto`` values into numbers for ``n_train`` examples on ``world_size`` processes
    (``mean_tokens``: the training examples' mean length, for the CPU micro-batch budget)."""
    from honing.errors import ConfigError

    chosen = []
    epochs = config.epochs
    if epochs == "auto":
        epochs, _ = auto_epochs(n_train), chosen.append("epochs")
    batch = config.batch_size
    if batch == "auto":
        batch, _ = auto_batch_size(n_train), chosen.append("batch_size")
        # Every process needs at least one example per step.
        batch = max(batch, world_size)
    micro = config.micro_batch_size
    if micro == "auto":
        micro, _ = auto_micro_batch_size(batch, world_size, mean_tokens, on_gpu), chosen.append("micro_batch_size")
    if batch % (micro * world_size):
        raise ConfigError(
            f"batch_size ({batch}) must be a multiple of micro_batch_size ({micro}) x processes ({world_size})"
        )
    accumulation = batch // (micro * world_size)
    lr = config.learning_rate
    if lr == "auto":
        lr, _ = auto_learning_rate(config.method, batch), chosen.append("learning_rate")
        if getattr(config, "objective", "sft") in ("dpo", "simpo"):
            lr *= PREFERENCE_LR_FACTOR
    steps_per_epoch = math.ceil(n_train / batch)
    total = config.max_steps or epochs * steps_per_epoch
    eval_every = config.eval_every
    if eval_every == "auto":
        eval_every, _ = max(1, math.ceil(total / 8)), chosen.append("eval_every")
    save_every = config.save_every
    if save_every == "auto":
        save_every, _ = eval_every, chosen.append("save_every")
    return Hyperparameters(
        epochs=int(epochs), batch_size=int(batch), micro_batch_size=int(micro), grad_accumulation=int(accumulation),
        learning_rate=float(lr), steps_per_epoch=steps_per_epoch, total_steps=int(total),
        eval_every=int(eval_every), save_every=int(save_every), chosen=tuple(chosen),
    )
