"""Training: ``train(config) -> RunResult`` turns a base model and a dataset into a fine-tuned model
in a run directory. Importing this package starts nothing (torch is imported on first use)."""

from honing.config import TrainConfig, build_config
from honing.train.errors import TrainingError
from honing.train.loop import RunResult, train

__all__ = ["RunResult", "TrainConfig", "TrainingError", "build_config", "train"]
