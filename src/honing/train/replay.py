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

    def __init__(self, items: list, fraction: float, examples_per_step: int, seed: int, source: str):
        self.items = items
        self.fraction = fraction
        self.k = max(1, min(examples_per_step, len(items)))
        self.seed = seed
        self.source = source

    def __len__(self) -> int:
        return len(self.items)

    def for_step(self, step: int, rank: int = 0, world: int = 1) -> list:
        """This process's replay items for optimizer step ``step`` (0-based): consecutive slices of a
        seeded permutation per pass over the replay set, so every replay example comes round in turn."""
        n, per_step = len(self.items), self.k * world
        start = (step * per_step + rank * self.k)
        out = []
        for pos in range(start, start + self.k):
            cycle, within = divmod(pos, n)
            order = list(range(n))
            random.Random(self.seed * 7_919 + cycle).shuffle(order)
            out.append(self.items[order[within]])
        return out

    def describe(self) -> str:
        return (f"replay: {self.fraction:.0%} of each step's loss on general instructions ({self.k} of "
                f"{len(self)} examples per step from {self.source}), against forgetting")


def build_replay(config, objective, tokenizer) -> ReplaySet | None:
    """The run's replay set, or None when ``replay.fraction`` is 0."""
    from honing.errors import ConfigError
    from honing.train.dataset import file_sha256, read_examples

    rc = config.replay
    if not rc.fraction:
        return None
    if objective.name != "sft":
        raise ConfigError(f"replay.fraction: replay mixes chat examples into supervised training; objective "
                          f"{objective.name!r} does not take them (set replay.fraction: 0)")
    path = Path(rc.data) if rc.data else shipped_path()
    examples = read_examples(path, "auto")
    rendered = objective.render_set(tokenizer, examples, str(path), file_sha256(path))
    items = [it for it in rendered.items if objective.normalizer(it) > 0]
    if not items:
        raise ConfigError(f"replay.data: {path} has no example with a trained (assistant) token")
    return ReplaySet(items, rc.fraction, rc.examples_per_step, config.seed,
                     "the shipped general set" if not rc.data else str(path))
