"""``auto`` hyperparameters, chosen for the data *and* the machine at hand. Each choice is printed with its
reason (``Hyperparameters.explain``).

Epochs follow OpenAI's published default rule (cookbook "Chat_finetuning_data_prep", the constants the
service documents): 3 epochs, but more for small datasets so the model sees at least ~100 examples in
total, and fewer for large ones so it sees at most ~25,000, always within [1, 25]. Early stopping on eval
loss and the forgetting budget end a run sooner when more passes stop paying.

Batch size starts from the service's documented behaviour (about 0.2% of the training examples, at most
256, a power of two) and departs from it where examples are short: a step then carries ~2,048 tokens
(per-step overheads dominate tiny steps), keeping at least 500 optimizer steps per run (fewer, larger steps
learned less: benchmarks/quality/).

Learning rate: the service exposes a multiplier, not a value; we pick the usual peak for each method
(LoRA 2e-4, full 1e-5 at batch 4) and scale it with the square root of the batch size, the rule that
keeps Adam's update noise roughly constant, clamped to a safe band.

Micro-batch: on CPU, a token budget per forward measured on the machine (a short probe of forward rates,
cached per process); on a GPU a 16k-token packed row. Eval cadence: up to 8 evals, fewer when an eval is
costly against the training compute. docs/training.md says where and why these depart from OpenAI's rules.
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
# Reinforcement (GRPO) nudges a model that already samples sensible answers: the same tenth, and one pass
# over the prompts by default (every step samples and grades group_size completions per prompt, so a step
# costs several SFT steps; OpenAI's RFT and TRL's GRPO examples train about an epoch).
RL_LR_FACTOR = 0.1
RL_EPOCHS = 1
RL_BATCH = 4
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


def openai_batch_size(n_examples: int) -> int:
    """OpenAI's rule: ~0.2% of the examples, rounded to the nearest power of two, clamped to [1, 256]."""
    raw = BATCH_FRACTION * max(1, n_examples)
    if raw <= 1:
        return 1
    return int(min(MAX_BATCH, 2 ** round(math.log2(raw))))


# Departure from OpenAI's batch rule: a step should carry enough tokens that its fixed costs (optimizer
# update, gradient clipping, per-op dispatch of each forward/backward) are small against its compute.
# OpenAI's 0.2% gives batch 2 for 1,200 examples: 1,620 steps of two ~60-token chats took ~30 min on 2 CPU
# cores, where batch 16-32 does the same epochs in a fraction of the steps. So: the largest power of two
# with at most TARGET_STEP_TOKENS tokens per step, never below OpenAI's value, and never so large that
# the run has fewer than MIN_STEPS updates. The floor was 48 at first. benchmarks/quality/ then measured three
# tasks on 300-example subsets (~100-130-token examples, 3 epochs), batch 16 / 4 / 1 (57 / 225 / 900 steps):
# unicode_category 0.400 / 0.560 / 0.560, signature_json 0.580 / 0.610 / 0.690, code_summary ROUGE-L
# 0.368 / 0.383 / 0.381, with batch 1 taking ~13% more wall time than batch 4. Once the per-step costs were
# gone (page-fault churn, the head's per-row copy), steps are cheap, and few large ones learn less. 500 puts
# those sets at batch 1; between 225 and 900 steps nothing was measured. Issue 23 tried cutting the passes
# instead (one pass of 300 steps at 3x the rate, replay every 4th step): x0.36 the time, but 12 points
# lower on unicode_category (0.450 against 0.570, paired CI -0.20 to -0.05): the three passes stay.
TARGET_STEP_TOKENS = 2048
MIN_STEPS = 500


def auto_batch_size(n_examples: int, mean_tokens: float | None = None, epochs: int = TARGET_EPOCHS) -> int:
    """Examples per optimizer step: OpenAI's rule, raised to ~``TARGET_STEP_TOKENS`` tokens per step for short
    examples while keeping at least ``MIN_STEPS`` steps (``mean_tokens``: mean example length)."""
    base = openai_batch_size(n_examples)
    if not mean_tokens:
        return base
    by_tokens = 2 ** max(0, math.floor(math.log2(max(1.0, TARGET_STEP_TOKENS / mean_tokens))))
    by_steps = 2 ** max(0, math.floor(math.log2(max(1.0, n_examples * epochs / MIN_STEPS))))
    return int(min(MAX_BATCH, max(base, min(by_tokens, by_steps))))


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
                          on_gpu: bool = False, cpu_budget: int | None = None) -> int:
    """The largest divisor of the per-process batch (so accumulation is exact) within a token budget per
    forward: ``cpu_budget`` (measured, see :func:`measure_cpu_token_budget`; default
    ``CPU_TOKENS_PER_FORWARD``) and at most 8 examples on CPU, ``GPU_TOKENS_PER_FORWARD`` on a GPU; at least 1."""
    per_rank = max(1, batch_size // world_size)
    cpu = cpu_budget or CPU_TOKENS_PER_FORWARD
    budget, cap = (GPU_TOKENS_PER_FORWARD, MAX_GPU_MICRO_BATCH) if on_gpu else (cpu, MAX_MICRO_BATCH)
    if mean_tokens:
        cap = max(1, min(cap, int(budget // mean_tokens)))
    return max(d for d in range(1, min(per_rank, cap) + 1) if per_rank % d == 0)


# The CPU probe: forward passes (no gradient) of rows of the data's mean length, 1, 4 and 16 rows at a
# time. The budget is the smallest of those whose tokens/s is within PROBE_TOLERANCE of the best: where
# per-op overhead dominates (short rows) batching pays and the budget grows; where attention's T x T cost
# dominates (long rows) it does not and the budget stays at one row. A larger size is measured only while the
# last one paid (faster by more than the tolerance): its forward is the probe's memory peak (16 x 512 rows of
# the embedded model add ~0.6 GB of RSS over 4 x 512), spent for nothing where batching does not pay.
# Cached per process, and per machine (honing.machine) when the caller names the model's weights
# (``model_key``): the probe is seconds of a run's start, the same on every run of that model here.
PROBE_ROWS = (1, 4, 16)
PROBE_TOLERANCE = 0.9
PROBE_REPEATS = 2  # timed forwards per size; the fastest counts
_probe_cache: dict = {}


def measure_cpu_token_budget(model, mean_tokens: float, model_key: dict | None = None) -> tuple[int, str]:
    """(tokens per forward, the measurement in words) for ``model`` on this machine's CPU. ``model_key``:
    what identifies the model's weights and compute dtype (a run's base identity); with it the result is
    measured once per machine (the words then say when they come from that cache)."""
    import torch

    length = max(8, min(1024, round(mean_tokens)))
    key = (getattr(model.config, "_name_or_path", ""), getattr(model.config, "hidden_size", 0),
           getattr(model.config, "num_hidden_layers", 0), length, torch.get_num_threads())
    if key in _probe_cache:
        return _probe_cache[key]
    if model_key is None:
        _probe_cache[key] = _probe_forward_rates(model, length)
        return _probe_cache[key]
    from honing import machine

    dtype = str(next(model.parameters()).dtype)
    # Kept only when measured on a quiet machine: forward rates under contention are the other jobs' (the
    # bf16 race's verdict is clear-cut enough to keep either way).
    (budget, words), cached = machine.measured_once(
        "cpu_token_budget", {"model": model_key, "dtype": dtype, "length": length, "threads": key[-1]},
        lambda: list(_probe_forward_rates(model, length)), decisive=lambda _v: machine.quiet_enough())
    _probe_cache[key] = (int(budget), words + (" (measured once on this machine, cached)" if cached else ""))
    return _probe_cache[key]


def _fastest_forward(model, ids, repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` forwards: another process's turn on the cores only adds time, so
    the minimum is the least disturbed (the result is kept for the machine, see honing.machine)."""
    import time

    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(input_ids=ids, logits_to_keep=1)
        best = min(best, time.perf_counter() - t0)
    return best


def _probe_forward_rates(model, length: int) -> tuple[int, str]:
    import torch

    vocab = getattr(model.config, "vocab_size", 1000)
    gen = torch.Generator().manual_seed(0)
    rates = {}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for rows in PROBE_ROWS:
            ids = torch.randint(0, vocab, (rows, length), generator=gen)
            # logits_to_keep=1: the decoder's rate, without [rows, length, vocab] logits that training never
            # builds (its loss runs the head in chunks) and that made the probe the run's memory peak.
            model(input_ids=ids[:1, :8], logits_to_keep=1)  # warm the kernels for this shape class
            rate = rows * length / max(_fastest_forward(model, ids, PROBE_REPEATS), 1e-9)
            paid = not rates or rate * PROBE_TOLERANCE > max(rates.values())
            rates[rows] = rate
            if not paid:
                break
    model.train(was_training)
    best = max(rates.values())
    rows = min(r for r, v in rates.items() if v >= PROBE_TOLERANCE * best)
    words = ", ".join(f"{r}x{length}: {v:,.0f} tok/s" for r, v in rates.items())
    return rows * length, f"measured forward rates {words}"


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
    reasons: tuple[tuple[str, str], ...] = ()  # (key, why) for every auto choice, in order

    def as_dict(self) -> dict:
        return asdict(self)

    def explain(self) -> list[str]:
        """One line per ``auto`` choice: the value and the reason for it."""
        return [f"  {key} = {getattr(self, key) if key != 'learning_rate' else f'{self.learning_rate:.3g}'}: {why}"
                for key, why in self.reasons]

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


# Eval cadence: up to MAX_EVALS evals a run (enough points for early stopping and the loss curve), fewer
# when each is costly, so that evaluation (a forward over the eval set plus the forgetting probe; about a
# third of a training step's cost per token) stays within EVAL_SHARE of the training compute; at least 2.
MAX_EVALS, MIN_EVALS, EVAL_SHARE, FORWARD_COST = 8, 2, 0.10, 1 / 3


def auto_eval_every(total_steps: int, step_tokens: float, eval_tokens: float | None) -> tuple[int, str]:
    """(eval_every, why) for a run of ``total_steps`` steps of ``step_tokens`` tokens each."""
    if not eval_tokens:
        return max(1, math.ceil(total_steps / MAX_EVALS)), f"~{MAX_EVALS} evals per run"
    affordable = EVAL_SHARE * total_steps * step_tokens / (eval_tokens * FORWARD_COST)
    n = int(min(MAX_EVALS, max(MIN_EVALS, affordable)))
    return max(1, math.ceil(total_steps / n)), (
        f"{n} evals per run ({eval_tokens:,.0f} eval tokens each; evaluation kept within ~{EVAL_SHARE:.0%} of "
        f"the training compute, {MIN_EVALS}-{MAX_EVALS} evals)")


def resolve_hyperparameters(config, n_train: int, world_size: int = 1, mean_tokens: float | None = None,
                            on_gpu: bool = False, measure_budget=None, eval_tokens: float | None = None,
                            recorded: dict | None = None) -> Hyperparameters:
    """Turn the config's ``auto`` values into numbers for ``n_train`` examples on ``world_size`` processes.

    ``mean_tokens``: the training examples' mean length (batch size, micro-batch budget); ``measure_budget``:
    a callable returning (CPU tokens per forward, how it was measured), called only when the micro-batch
    is auto on CPU with one process (processes must agree on it, and timings differ between them);
    ``eval_tokens``: tokens one eval reads (eval cadence); ``recorded``: the hyperparameters of the run being
    resumed (its measured micro-batch is reused, so the resumed steps sum their losses the same way)."""
    from honing.errors import ConfigError

    reasons: list[tuple[str, str]] = []
    epochs = config.epochs
    if epochs == "auto" and getattr(config, "objective", "sft") == "grpo":
        epochs = RL_EPOCHS
        reasons.append(("epochs", ("one pass over the prompts (reinforcement: each step samples and grades a group "
                                  "of completions per prompt)")))
    elif epochs == "auto":
        epochs = auto_epochs(n_train)
        reasons.append(("epochs", (f"OpenAI's rule for {n_train} examples (3; at least ~{MIN_TARGET_EXAMPLES} and "
                                  f"at most ~{MAX_TARGET_EXAMPLES:,} examples seen); early stopping and the best "
                                  "checkpoint guard against too many")))
    batch = config.batch_size
    if batch == "auto" and getattr(config, "objective", "sft") == "grpo":
        batch = max(min(RL_BATCH, n_train), world_size)
        reasons.append(("batch_size", (f"{batch} prompts per step, each sampled {config.grpo.group_size} times "
                                      "(reinforcement: the group, not the batch, carries the signal)")))
    elif batch == "auto":
        base = openai_batch_size(n_train)
        # Every process needs at least one example per step.
        batch = max(auto_batch_size(n_train, mean_tokens, int(epochs)), world_size)
        why = f"OpenAI's 0.2% rule gives {base}"
        if batch > base and mean_tokens:
            why += (f"; raised to ~{TARGET_STEP_TOKENS} tokens per step ({mean_tokens:.0f}-token examples), "
                    f"keeping at least {MIN_STEPS} steps (fewer, larger steps learned less)")
        reasons.append(("batch_size", why))
    micro = config.micro_batch_size
    if micro == "auto":
        if recorded and recorded.get("batch_size") == batch and recorded.get("micro_batch_size"):
            micro = int(recorded["micro_batch_size"])
            why = f"{micro} examples per forward, as in the run being resumed"
        else:
            budget, how = None, ""
            if not on_gpu and mean_tokens and measure_budget is not None and world_size == 1:
                budget, how = measure_budget()
            micro = auto_micro_batch_size(batch, world_size, mean_tokens, on_gpu, budget)
            if on_gpu:
                why = f"one packed row of up to {GPU_TOKENS_PER_FORWARD:,} tokens per forward"
            else:
                why = (f"{budget or CPU_TOKENS_PER_FORWARD} tokens per forward on this CPU "
                       f"({how or 'default budget'}), at most {MAX_MICRO_BATCH} examples, a divisor of the batch")
        reasons.append(("micro_batch_size", why))
    if batch % (micro * world_size):
        raise ConfigError(
            f"batch_size ({batch}) must be a multiple of micro_batch_size ({micro}) x processes ({world_size})"
        )
    accumulation = batch // (micro * world_size)
    lr = config.learning_rate
    if lr == "auto":
        lr = auto_learning_rate(config.method, batch)
        why = (f"{config.method} base {BASE_LR.get(config.method, 0):.0e} at batch {LR_REFERENCE_BATCH}, x "
               f"sqrt(batch/{LR_REFERENCE_BATCH}), within [{LR_BAND[config.method][0]:.0e}, {LR_BAND[config.method][1]:.0e}]")
        if getattr(config, "objective", "sft") in ("dpo", "simpo", "kto"):
            lr *= PREFERENCE_LR_FACTOR
            why += f", x{PREFERENCE_LR_FACTOR} for preference tuning"
        elif getattr(config, "objective", "sft") == "grpo":
            lr *= RL_LR_FACTOR
            why += f", x{RL_LR_FACTOR} for reinforcement"
        reasons.append(("learning_rate", why))
    steps_per_epoch = math.ceil(n_train / batch)
    total = config.max_steps or epochs * steps_per_epoch
    eval_every = config.eval_every
    if eval_every == "auto":
        eval_every, why = auto_eval_every(int(total), batch * (mean_tokens or 0) or batch, eval_tokens)
        reasons.append(("eval_every", why))
    save_every = config.save_every
    if save_every == "auto":
        save_every = eval_every
        reasons.append(("save_every", "at every eval (the best checkpoint is always on disk)"))
    return Hyperparameters(
        epochs=int(epochs), batch_size=int(batch), micro_batch_size=int(micro), grad_accumulation=int(accumulation),
        learning_rate=float(lr), steps_per_epoch=steps_per_epoch, total_steps=int(total),
        eval_every=int(eval_every), save_every=int(save_every), chosen=tuple(k for k, _ in reasons),
        reasons=tuple(reasons),
    )
