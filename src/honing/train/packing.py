"""Packing: several examples in one row, with attention kept inside each example.

Padding a batch to its longest example wastes compute on pad tokens (on variable-length chat data
about 40% of a padded batch of 4 is padding). Packing concatenates the examples of a micro-batch into
one row ``[1, T]`` with ``T = sum(lengths)``, so every token computed is a real one.

Attention isolation comes from ``position_ids`` alone: they restart at 0 at the start of each example,
and with ``attention_mask=None`` transformers (>= 4.5x, checked on 5.23) derives the example boundaries
from those restarts (``transformers.masking_utils.find_packed_sequence_indices``) and builds a
block-diagonal causal mask for sdpa/eager, or uses varlen kernels for flash attention. Passing an
``attention_mask`` switches that detection OFF, so a packed batch must never carry one.
``tests/test_packing.py`` checks the isolation directly (perturb example A, example B's logits do not
move).

The loss side needs one more guard: the label of an example's first token would be predicted from the
previous example's last token, so ``collate_packed`` marks it -100 (in an unpacked row the causal shift
drops it anyway, so packed and unpacked train on exactly the same targets).
"""

from __future__ import annotations

from honing.data.render import IGNORE_INDEX, RenderedExample


def pack_rows(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Best-fit-decreasing bin packing of example indices into rows of at most ``max_tokens`` tokens.

    ``lengths[i]`` is example i's token count. Returns rows of indices (each row's indices in ascending
    order, rows ordered by their first index) - deterministic for equal inputs. An example longer than
    ``max_tokens`` gets a row of its own (rendering already truncated it to ``max_length``).
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[int] = []  # tokens left in each row
    for i in order:
        n = lengths[i]
        # Best fit: the row with the least room that still holds the example (ties: the earliest row).
        best = -1
        for r, room in enumerate(free):
            if room >= n and (best < 0 or room < free[best]):
                best = r
        if best < 0:
            rows.append([i])
            free.append(max(max_tokens - n, 0))
        else:
            rows[best].append(i)
            free[best] -= n
    rows = [sorted(r) for r in rows]
    rows.sort(key=lambda r: r[0])
    return rows


def collate_packed(examples: list[RenderedExample]) -> dict:
    """One packed row from ``examples`` (concatenated in the given order).

    Returns int64 tensors, all ``[1, T]`` with ``T = sum(len(e))``:
    ``input_ids``; ``labels`` (the unshifted token id where the loss mask is True, else -100; the
    first token of every example is -100, see the module docstring); ``position_ids`` restarting at 0 for
    each example. No ``attention_mask`` on purpose (it would disable the boundary detection).
    """
    import torch

    if not examples:
        raise ValueError("collate_packed needs at least one example")
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for ex in examples:
        if len(ex) == 0:
            continue
        ids += ex.input_ids
        lab = ex.labels()
        lab[0] = IGNORE_INDEX  # never predicted from the previous example's last token
        labels += lab
        positions += range(len(ex))
    if not ids:
        raise ValueError("collate_packed got only empty examples")
    return {
        "input_ids": torch.tensor([ids], dtype=torch.long),
        "labels": torch.tensor([labels], dtype=torch.long),
        "position_ids": torch.tensor([positions], dtype=torch.long),
    }


def collate_padded(examples: list[RenderedExample], pad_id: int) -> dict:
    """Right-padded ``[B, L]`` batch (``L`` = longest example): ``input_ids``, ``labels`` (-100 on
    padding and untrained tokens), ``attention_mask`` (1 = real token) and ``position_ids``."""
    import torch

    if not examples:
        raise ValueError("collate_padded needs at least one example")
    width = max(len(e) for e in examples)
    b = len(examples)
    input_ids = torch.full((b, width), pad_id, dtype=torch.long)
    labels = torch.full((b, width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((b, width), dtype=torch.long)
    for i, ex in enumerate(examples):
        n = len(ex)
        if n == 0:
            continue
        input_ids[i, :n] = torch.tensor(ex.input_ids)
        labels[i, :n] = torch.tensor(ex.labels())
        attention[i, :n] = 1
    position_ids = torch.arange(width).unsqueeze(0).expand(b, -1).contiguous()
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention, "position_ids": position_ids}


def pack_collate(examples: list[RenderedExample], pad_id: int | None = None) -> dict:
    """The training loop's collate for ``packing: true``: all of a micro-batch's examples in one row.

    ``pad_id`` is accepted for symmetry with the padded collate and unused: a packed row has no padding.
    Memory of a forward grows with ``T = sum(lengths)``, so the loop's micro-batch size is the knob that
    bounds it.
    """
    del pad_id
    return collate_packed(examples)


def padding_fraction(lengths: list[int], batch_size: int) -> float:
    """Share of a padded run's tokens that would be padding (batches of ``batch_size`` in order)."""
    total = padded = 0
    for s in range(0, len(lengths), batch_size):
        chunk = lengths[s : s + batch_size]
        total += sum(chunk)
        padded += max(chunk) * len(chunk)
    return 0.0 if padded == 0 else 1.0 - total / padded
