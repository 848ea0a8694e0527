"""Replay: a small share of general instruction data mixed into supervised training, against forgetting.

Fine-tuning a small model on one narrow task (e.g. "answer with a module name") also teaches it to answer
*everything* that way: the demo lost 50 points of general QA accuracy. Rehearsing general requests while
training keeps the old behaviour in the gradient. Honing ships ``resources/general_replay.jsonl``: prompts
written for Honing, answered by the embedded default model itself (self-distillation rehearsal;
``scripts/build_replay.py``), disjoint from the forgetting probes so the probes stay honest.

How it enters a step: ``fraction`` is the replay's share of the step's *loss*, not of its examples. A task
answer can be one token and a replay answer fifty, so mixing by example count (and normalising by all
trained tokens) would let replay dominate the gradient; instead the step minimises
``(1 - fraction) x task loss + fraction x replay loss``, each the mean over its own trained tokens.
``examples`` replay examples per process per step, chosen by a seeded permutation that is a pure function
of (seed, step, rank): a resumed run replays exactly what the uninterrupted one would.

``every`` = k replays on steps 0, k, 2k, ... only, with the replay term weighted k x ``fraction`` while the
task keeps 1 - fraction on every step: over k steps the mix is the same, and k - 1 of every k steps skip the
replay forward (which a short-example step pays in full: it runs alone).
"""

from __future__ import annotations

import random
from importlib import resources
from pathlib import Path

SHIPPED = "general_replay.jsonl"


def shipped_path() -> Path:
    return Path(str(resources.files("honing").joinpath("resources", SHIPPED)))


class ReplaySet:
    """Rendered replay items and the per-step choice of them."""

    def __init__(self, items: list, fraction: float, examples_per_step: int, seed: int, source: str,
                 every: int = 1):
        self.items = items
        self.fraction = fraction
        self.k = max(1, min(examples_per_step, len(items)))
        self.seed = seed
        self.source = source
        self.every = every

    @property
    def task_share(self) -> float:
        """The task loss's weight on every step (with or without a replay batch)."""
        return 1.0 - self.fraction

    @property
    def replay_weight(self) -> float:
        """The replay loss's weight on a replay step: every x fraction, so the mix over ``every`` steps holds."""
        return self.fraction * self.every

    def __len__(self) -> int:
        return len(self.items)

    def for_step(self, step: int, rank: int = 0, world: int = 1) -> list:
        """This process's replay items for optimizer step ``step`` (0-based; none off the ``every`` cadence):
        consecutive slices of a seeded permutation per pass over the replay set, so every replay example comes
        round in turn."""
        if step % self.every:
            return []
        n, per_step = len(self.items), self.k * world
        start = (step // self.every * per_step + rank * self.k)
        out = []
        for pos in range(start, start + self.k):
            cycle, within = divmod(pos, n)
            order = list(range(n))
            random.Random(self.seed * 7_919 + cycle).shuffle(order)
            out.append(self.items[order[within]])
        return out

    def describe(self) -> str:
        cadence = "per step" if self.every == 1 else f"every {self.every} steps, weighted x{self.every}"
        return (f"replay: {self.fraction:.0%} of each step's loss on general instructions ({self.k} of "
                f"{len(self)} examples {cadence} from {self.source}), against forgetting")


AUTO_FRACTION = 0.2  # measured: keeps the demo and unicode_category unflagged (benchmarks/quality/)


def resolve_fraction(config, objective_name: str) -> tuple[float, str | None]:
    """(fraction, why) for ``replay.fraction``; ``why`` is None where the user set it.

    ``auto`` replays only where the replay answers are the model's own: the shipped set holds the embedded
    default model's answers (self-distillation rehearsal), which would pull another model towards a 135M
    model's replies; with ``replay.data`` the user vouches for theirs. Preference and raw-text objectives
    take no chats."""
    from honing.models import DEFAULT_MODEL

    rc = config.replay
    if rc.fraction != "auto":
        return float(rc.fraction), None
    if objective_name != "sft":
        return 0.0, None  # preference pairs and raw text take no chats: nothing to say
    if rc.data is None and config.model != DEFAULT_MODEL:
        return 0.0, (f"off (the shipped replay set holds {DEFAULT_MODEL}'s own answers, not this model's; "
                     "set replay.data to chats your model answered to rehearse them)")
    return AUTO_FRACTION, "on"


def build_replay(config, objective, tokenizer) -> tuple[ReplaySet | None, str | None]:
    """The run's replay set (None when the fraction resolves to 0) and, for ``auto``, why it is on or off.
    A set fraction with another objective than sft never gets here: the config refuses it."""
    from honing.errors import ConfigError
    from honing.train.dataset import file_sha256, read_examples

    rc = config.replay
    fraction, why = resolve_fraction(config, objective.name)
    if not fraction:
        return None, (f"replay: {why}" if why else None)
    path = Path(rc.data) if rc.data else shipped_path()
    examples = read_examples(path, "auto")
    rendered = objective.render_set(tokenizer, examples, str(path), file_sha256(path))
    items = [it for it in rendered.items if objective.normalizer(it) > 0]
    if not items:
        raise ConfigError(f"replay.data: {path} has no example with a trained (assistant) token")
    replay = ReplaySet(items, fraction, rc.examples_per_step, config.seed,
                       "the shipped general set" if not rc.data else str(path), every=rc.every)
    return replay, replay.describe() + (" (replay.fraction auto)" if why else "")
