"""Token statistics of a dataset and an estimate of how long training on it takes on this machine."""

from __future__ import annotations

import json
import os
import struct
from array import array
from pathlib import Path

import numpy as np

from honing.data.render import RenderedExample

# Tokens per second (prompt + answer, forward + backward + AdamW step) of Honing's own trainer on the
# embedded default model (SmolLM2-135M), LoRA r=16 on every linear layer, fp32, on the development
# machine's CPU (2-core AMD EPYC, AVX2/FMA only: no avx512_bf16, no AMX): 123, 135 and 140 tokens/s in
# three rounds of benchmarks/bench.py (docs/performance.md, benchmarks/results/cpu.json; chats of 86-897
# tokens, batch 4). The median is the figure. An earlier figure, 68 tokens/s, was a bare PEFT model on one
# thread of a loaded machine. Recipes that adapt only the top layers (lora.top_layers) run faster; the
# trainer's own measured throughput is the better number once a run exists; GPUs are far faster.
TRAIN_TOKENS_PER_SECOND = 135.0
# Parameter count the figure above was measured with; other models scale it by their parameter count
# (training compute is about 6 x parameters x tokens).
REFERENCE_PARAMETERS = 134_515_008


def count_parameters(model_dir: str | os.PathLike) -> int | None:
    """Parameters in a HF model directory, from the safetensors headers only (no weights are read)."""
    total = 0
    files = sorted(Path(model_dir).glob("*.safetensors"))
    for f in files:
        try:
            with open(f, "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(n))
        except (OSError, ValueError, struct.error):
            return None
        for name, meta in header.items():
            if name != "__metadata__":
                total += int(np.prod(meta["shape"])) if meta["shape"] else 1
    return total or None


def estimate_training_seconds(tokens: int, parameters: int | None = None,
                              tokens_per_second: float = TRAIN_TOKENS_PER_SECOND) -> float:
    """Seconds to train on ``tokens`` processed tokens (prompt + answer, all epochs) on this machine."""
    scale = (parameters / REFERENCE_PARAMETERS) if parameters else 1.0
    return tokens * scale / tokens_per_second


def _summary(values: array) -> dict:
    if not values:
        return {"min": 0, "median": 0, "p95": 0, "max": 0, "mean": 0.0, "total": 0}
    a = np.frombuffer(values, dtype=np.int64) if values.itemsize == 8 else np.asarray(values)
    return {"min": int(a.min()), "median": float(np.median(a)), "p95": float(np.percentile(a, 95)),
            "max": int(a.max()), "mean": round(float(a.mean()), 2), "total": int(a.sum())}


class TokenStats:
    """Accumulates per-example token counts (8 bytes per example and series, so 1M examples ~ 24 MB).

    A preference pair counts as one example whose length is its longer reply's rendering and whose
    processed/trained tokens are both renderings' (DPO runs the model on both).
    """

    def __init__(self, max_length: int):
        self.max_length = max_length
        self.lengths = array("q")  # full tokens per example, before truncation
        self.trained = array("q")  # trained (loss-mask) tokens per example, after truncation
        self.processed = array("q")  # tokens the model runs on per example, after truncation
        self.truncated = 0

    def add(self, renderings: list[RenderedExample]) -> None:
        self.lengths.append(max(r.full_length for r in renderings))
        self.trained.append(sum(r.trained_tokens for r in renderings))
        self.processed.append(sum(len(r) for r in renderings))
        self.truncated += any(r.truncated for r in renderings)

    def __len__(self) -> int:
        return len(self.lengths)

    def summary(self, epochs: int, parameters: int | None = None,
                tokens_per_second: float = TRAIN_TOKENS_PER_SECOND) -> dict:
        """Token statistics; ``*_all_epochs`` multiply by ``epochs``; the time estimate is in seconds."""
        processed = int(sum(self.processed)) * epochs
        return {
            "tokens_per_example": _summary(self.lengths),
            "trained_tokens_per_example": _summary(self.trained),
            "max_length": self.max_length,
            "truncated_examples": self.truncated,
            "epochs": epochs,
            "trained_tokens_all_epochs": int(sum(self.trained)) * epochs,
            "processed_tokens_all_epochs": processed,
            "tokens_per_second_assumed": tokens_per_second * (REFERENCE_PARAMETERS / parameters
                                                              if parameters else 1.0),
            "estimated_training_seconds": round(estimate_training_seconds(processed, parameters,
                                                                          tokens_per_second), 1),
        }
