"""Data order and batches.

The order is a pure function of (seed, epoch), so a resumed run sees exactly the batches the
interrupted one would have: global step ``s`` is batch ``s % steps_per_epoch`` of epoch
``s // steps_per_epoch``. A global batch of B examples is cut into ``accumulation`` micro-batches per
process; process r takes its own shard of each micro-batch, so one process and N processes see the same
examples in every optimizer step.

A batch is a dict of tensors: ``input_ids`` [B, T], ``labels`` [B, T] (unshifted, -100 = not trained),
``position_ids`` [B, T] and, when padded, ``attention_mask`` [B, T].
"""

from __future__ import annotations

import random


def epoch_permutation(n: int, seed: int, epoch: int) -> list[int]:
    """The example order of one epoch (seeded; independent of any global RNG)."""
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def step_indices(n: int, batch_size: int, seed: int, step: int) -> tuple[int, list[int]]:
    """(epoch, example indices) of global optimizer step ``step`` (0-based). The last batch of an epoch
    may be smaller: no example is dropped."""
    steps_per_epoch = -(-n // batch_size)
    epoch, within = divmod(step, steps_per_epoch)
    order = epoch_permutation(n, seed, epoch)
    return epoch, order[within * batch_size : (within + 1) * batch_size]


def micro_batches(indices: list[int], accumulation: int, micro_batch_size: int, rank: int, world: int) -> list[list[int]]:
    """This process's ``accumulation`` micro-batches of one global batch (some may be empty at an
    epoch's end; the loop still runs them so every process does the same number of backward passes)."""
    out = []
    for j in range(accumulation):
        start = (j * world + rank) * micro_batch_size
        out.append(indices[start : start + micro_batch_size])
    return out


def make_collate(packing: bool, pad_id: int):
    """The collate function for a run: packed rows (``honing.train.packing``) or right-padded batches."""
    from honing.train.packing import collate_padded, pack_collate

    if packing:
        return lambda items: pack_collate(items, pad_id)
    return lambda items: collate_padded(items, pad_id)
