"""Reference log-probs of the objectives that compare with the starting model (DPO, KTO) under full fine-tuning:
computed once with the starting weights, stored in the run directory, read back on resume. Each item's ``ref`` is
a pair of floats (DPO: chosen, rejected; KTO: the completion, a mismatched one)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from honing.rundir import REFERENCE_LOGPS
from honing.train.errors import TrainingError


def cached_reference(ctx, objective: str, fields: tuple[str, str], noun: str,
                     compute: Callable[[object], list[tuple[float, float]]],
                     fingerprint: Callable[[object], str]) -> None:
    """Fill ``item.ref`` of every train and eval item: from the run directory when present (a resume), else
    ``compute(rendered_set)`` now and written there atomically, each set with its ``fingerprint`` so a file made
    for other data is refused. ``fields`` names the pair's two tensors; ``noun`` what the items are."""
    path = Path(ctx.run_dir) / REFERENCE_LOGPS
    sets = {k: v for k, v in {"train": ctx.train_set, "eval": ctx.eval_set}.items() if v is not None}
    if path.is_file():
        _load(path, sets, fields, noun, fingerprint)
        ctx.log(f"{objective} reference: log-probs read from {path}")
        return
    if ctx.resumed:
        raise TrainingError(f"{path} is missing: the reference log-probs of this run cannot be recomputed from "
                            "trained weights; start the run again without resume")
    ctx.log(f"{objective} reference: computing the starting model's log-probs of "
            f"{sum(len(s) for s in sets.values())} {noun} once (stored in the run directory)")
    import torch

    tensors = {}
    for name, rendered in sets.items():
        values = compute(rendered)
        for it, pair in zip(rendered.items, values):
            it.ref = tuple(pair)
        for k, field in enumerate(fields):
            tensors[f"{name}.{field}"] = torch.tensor([v[k] for v in values], dtype=torch.float64)
    if ctx.runtime.dist.is_main:
        from safetensors.torch import save

        from honing.fileio import write_bytes_atomic

        meta = {f"{k}.fingerprint": fingerprint(v) for k, v in sets.items()}
        write_bytes_atomic(path, save(tensors, metadata=meta))


def _load(path: Path, sets: dict, fields: tuple[str, str], noun: str, fingerprint) -> None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        for name, rendered in sets.items():
            if meta.get(f"{name}.fingerprint") != fingerprint(rendered):
                raise TrainingError(f"{path}: stored reference log-probs were computed for other {name} {noun}")
            first, second = (f.get_tensor(f"{name}.{field}").tolist() for field in fields)
            for it, a, b in zip(rendered.items, first, second):
                it.ref = (a, b)
