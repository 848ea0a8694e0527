"""Packing: bin packing, packed collation, attention isolation, and packed == unpacked training."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
import torch.nn.functional as F
from conftest import TEST_DEVICE, make_tiny_llama

from honing.data.render import IGNORE_INDEX, RenderedExample
from honing.train.losses import causal_lm_loss_sum
from honing.train.packing import collate_packed, collate_padded, pack_collate, pack_rows, padding_fraction

VOCAB = 512  # small vocabulary: fast tiny models, still a real lm_head


def random_examples(n: int, seed: int, lo: int = 5, hi: int = 60, learnable: bool = False) -> list[RenderedExample]:
    """Chat-like examples: a prompt part (untrained) then a reply (trained), variable lengths.
    ``learnable``: the reply follows a fixed bigram rule, so held-out loss can fall with training."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(lo, hi)
        prompt = rng.randint(1, length - 1)
        ids = [rng.randrange(3, VOCAB) for _ in range(length)]
        if learnable:
            for i in range(prompt, length):
                ids[i] = 3 + (ids[i - 1] * 5 + 7) % 64
        out.append(RenderedExample(ids, [False] * prompt + [True] * (length - prompt)))
    return out


def tiny(seed: int = 0, attn: str = "sdpa"):
    model = make_tiny_llama(vocab_size=VOCAB, seed=seed)
    model.config._attn_implementation = attn
    return model.to(TEST_DEVICE)


def on_device(batch: dict) -> dict:
    """A collated batch moved to where the tiny models run (cpu, or cuda in the GPU check)."""
    return {k: v.to(TEST_DEVICE) for k, v in batch.items()}


# --- pack_rows -------------------------------------------------------------------------------------


def test_pack_rows_golden_best_fit_decreasing():
    # Decreasing: 7 opens row A (room 3); 5 opens row B (room 5); 4 -> B (room 1); 3 -> A (room 0);
    # 2 fits nowhere, opens row C (room 8); 1 -> best fit is B (room 1), not C.
    assert pack_rows([3, 7, 5, 2, 4, 1], max_tokens=10) == [[0, 1], [2, 4, 5], [3]]


def test_pack_rows_covers_every_index_once_within_budget():
    rng = random.Random(1)
    for trial in range(50):
        lengths = [rng.randint(1, 120) for _ in range(rng.randint(1, 40))]
        rows = pack_rows(lengths, max_tokens=100)
        flat = sorted(i for r in rows for i in r)
        assert flat == list(range(len(lengths))), trial
        for r in rows:
            assert sum(lengths[i] for i in r) <= 100 or len(r) == 1  # over-long examples sit alone
        assert pack_rows(lengths, 100) == rows  # deterministic
        # Never worse than one row per example, and at least the lower bound.
        assert len(rows) >= -(-sum(min(n, 100) for n in lengths) // 100) or any(n > 100 for n in lengths)


def test_pack_rows_rejects_bad_budget():
    with pytest.raises(ValueError, match="max_tokens"):
        pack_rows([1, 2], 0)


# --- collation -------------------------------------------------------------------------------------


def test_collate_packed_positions_restart_and_first_label_masked():
    a = RenderedExample([10, 11, 12], [True, True, True])
    b = RenderedExample([20, 21], [False, True])
    batch = collate_packed([a, b])
    assert batch["input_ids"].tolist() == [[10, 11, 12, 20, 21]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    # a's first token cannot be a target (nothing precedes it); b's first is untrained anyway.
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 11, 12, IGNORE_INDEX, 21]]
    assert "attention_mask" not in batch  # a mask would switch off transformers' boundary detection
    assert pack_collate([a, b], pad_id=0)["input_ids"].equal(batch["input_ids"])


def test_collate_padded_shapes_and_masks():
    a = RenderedExample([10, 11, 12], [False, True, True])
    b = RenderedExample([20], [True])
    batch = collate_padded([a, b], pad_id=2)
    assert batch["input_ids"].tolist() == [[10, 11, 12], [20, 2, 2]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 11, 12], [20, IGNORE_INDEX, IGNORE_INDEX]]


def test_padding_fraction():
    assert padding_fraction([10, 10], 2) == 0.0
    assert padding_fraction([10, 30], 2) == pytest.approx(1 - 40 / 60)


# --- attention isolation ---------------------------------------------------------------------------


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_no_attention_crosses_an_example_boundary(attn):
    """Perturb every token of example A: example B's logits in the same packed row must not move, and
    must equal B's logits computed alone. Control: the same row with an all-ones attention_mask (which
    disables boundary detection) does leak, so this test can fail."""
    model = tiny(attn=attn).eval()
    a, b = random_examples(2, seed=3, lo=20, hi=40)
    a2 = RenderedExample([(t * 7 + 1) % VOCAB for t in a.input_ids], a.loss_mask)
    with torch.no_grad():
        row = on_device(collate_packed([a, b]))
        row2 = on_device(collate_packed([a2, b]))
        out = model(input_ids=row["input_ids"], position_ids=row["position_ids"], use_cache=False).logits[0, len(a):]
        out2 = model(input_ids=row2["input_ids"], position_ids=row2["position_ids"], use_cache=False).logits[0, len(a):]
        alone = model(input_ids=torch.tensor([b.input_ids], device=TEST_DEVICE)).logits[0]
        leaky = model(input_ids=row2["input_ids"], position_ids=row2["position_ids"],
                      attention_mask=torch.ones_like(row2["input_ids"])).logits[0, len(a):]
        leaky_ref = model(input_ids=row["input_ids"], position_ids=row["position_ids"],
                          attention_mask=torch.ones_like(row["input_ids"])).logits[0, len(a):]
    torch.testing.assert_close(out, out2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, alone, atol=1e-4, rtol=1e-4)
    assert (leaky - leaky_ref).abs().max() > 1e-3  # the control: a full causal mask lets A leak into B


# --- packed == unpacked -----------------------------------------------------------------------------


def per_example_losses_unpacked(model, examples):
    out = []
    for ex in examples:
        batch = on_device(collate_padded([ex], pad_id=2))
        logits = model(input_ids=batch["input_ids"]).logits[0, :-1].float()
        out.append(F.cross_entropy(logits, batch["labels"][0, 1:], ignore_index=IGNORE_INDEX, reduction="sum"))
    return torch.stack(out)


def test_packed_and_unpacked_give_the_same_per_example_losses():
    model = tiny(seed=1).eval()
    examples = random_examples(6, seed=4)
    with torch.no_grad():
        ref = per_example_losses_unpacked(model, examples)
        row = on_device(collate_packed(examples))
        logits = model(input_ids=row["input_ids"], position_ids=row["position_ids"], use_cache=False).logits[0, :-1].float()
        token_nll = F.cross_entropy(logits, row["labels"][0, 1:], ignore_index=IGNORE_INDEX, reduction="none")
        bounds = [0]
        for ex in examples:
            bounds.append(bounds[-1] + len(ex))
        # Token t+1's NLL sits at index t after the shift; example i owns targets bounds[i]+1 .. bounds[i+1]-1.
        packed = torch.stack([token_nll[s : e - 1].sum() for s, e in itertools.pairwise(bounds)])
    torch.testing.assert_close(packed, ref, atol=1e-4, rtol=1e-5)
    # And the production loss over the packed row equals the sum of the unpacked ones.
    with torch.no_grad():
        total, n = causal_lm_loss_sum(model, {k: v for k, v in row.items() if k != "labels"}, row["labels"],
                                      chunk_tokens=16)
    assert n == sum(sum(ex.loss_mask[1:]) for ex in examples)
    torch.testing.assert_close(total, ref.sum(), atol=1e-3, rtol=1e-5)


def test_speed_costs_no_quality_packed_vs_padded_training():
    """Same examples, same steps: the packed + chunked-loss path and the padded + full-logits path
    reach the same eval loss (gradients agree to float rounding), and both actually learned."""
    train = random_examples(32, seed=5, learnable=True)
    held_out = random_examples(8, seed=6, learnable=True)

    def eval_loss(model):
        with torch.no_grad():
            return float(per_example_losses_unpacked(model, held_out).sum()) / sum(
                sum(e.loss_mask[1:]) for e in held_out)

    def run(packed: bool) -> tuple[float, float]:
        model = tiny(seed=2)
        start = eval_loss(model)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        for step in range(12):
            items = train[(step * 4) % len(train):][:4]
            if packed:
                row = on_device(collate_packed(items))
                s, n = causal_lm_loss_sum(model, {k: v for k, v in row.items() if k != "labels"}, row["labels"],
                                          chunk_tokens=32)
            else:
                batch = on_device(collate_padded(items, pad_id=2))
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                shift = batch["labels"][:, 1:]
                s = F.cross_entropy(logits[:, :-1].float().reshape(-1, VOCAB), shift.reshape(-1),
                                    ignore_index=IGNORE_INDEX, reduction="sum")
                n = int((shift != IGNORE_INDEX).sum())
            (s / n).backward()
            opt.step()
            opt.zero_grad()
        return start, eval_loss(model)

    start_p, end_p = run(packed=True)
    start_u, end_u = run(packed=False)
    assert start_p == pytest.approx(start_u)
    assert end_p < start_p - 0.1  # it trained
    assert end_p == pytest.approx(end_u, rel=2e-3)
