"""The objectives ``hone train`` knows, by name: the one module that imports them all.

Each objective lives in its own module and builds on ``honing.train.objectives`` (the interface and SFT);
none imports this registry, so adding one is a new module plus one line here and its config section in
``honing.config``.
"""

from __future__ import annotations

from honing.errors import ConfigError
from honing.train.cpt import CPTObjective
from honing.train.grpo import GRPOObjective
from honing.train.kto import KTOObjective
from honing.train.objectives import Objective, SFTObjective
from honing.train.orpo import ORPOObjective
from honing.train.preference import DPOObjective, SimPOObjective

OBJECTIVES: dict[str, type[Objective]] = {
    "sft": SFTObjective,
    "dpo": DPOObjective,
    "simpo": SimPOObjective,
    "cpt": CPTObjective,
    "kto": KTOObjective,
    "orpo": ORPOObjective,
    "grpo": GRPOObjective,
}


def build_objective(config) -> Objective:
    """The objective ``config.objective`` names, built from the run's configuration."""
    try:
        cls = OBJECTIVES[config.objective]
    except KeyError:
        raise ConfigError(f"objective: unknown objective {config.objective!r} (known: {', '.join(OBJECTIVES)})") from None
    return cls(config)


__all__ = ["OBJECTIVES", "build_objective"]
