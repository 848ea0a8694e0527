"""Paired bootstrap confidence intervals over evaluation examples.

Approaches are scored on the same examples, so their difference is resampled *paired*: one set of
resampled example indices is applied to both score vectors. This is much tighter (and more honest)
than comparing two independent intervals. Seeded, so a report is reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    confidence: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "confidence": self.confidence}


def _indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) example indices drawn with replacement."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def mean_ci(scores: Sequence[float], resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> Interval:
    """Percentile bootstrap interval of the mean of per-example scores."""
    x = np.asarray(scores, dtype=float)
    if x.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"), confidence)
    means = x[_indices(x.size, resamples, seed)].mean(axis=1)
    alpha = (1 - confidence) / 2
    return Interval(float(x.mean()), float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha)), confidence)


def paired_difference_ci(
    a: Sequence[float], b: Sequence[float], resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> Interval:
    """Interval of mean(a) - mean(b) where a[i] and b[i] score the same example i."""
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if xa.shape != xb.shape:
        raise ValueError(f"paired scores differ in length: {xa.size} vs {xb.size}")
    return mean_ci(xa - xb, resamples=resamples, confidence=confidence, seed=seed)
