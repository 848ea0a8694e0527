"""honing.models.fast_ops: the fused RMSNorm gives transformers' bits, the short-row attention gives
SDPA's values and gradients (padding, causal, GQA, additive masks), and a packed row's attention taken one
example at a time gives what the row's block-diagonal mask gives."""

import pytest
import torch
import torch.nn.functional as F

from honing.models import fast_ops
from honing.models.fast_ops import (
    SHORT_ROW_TOKENS,
    packed_attention,
    packed_example_lengths,
    rms_norm_with_rstd,
    short_row_attention,
    speed_up_norms,
    use_short_row_path,
)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fused_norm_returns_llama_norms_bits(dtype):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    torch.manual_seed(0)
    norm = LlamaRMSNorm(96, eps=1e-5).to(dtype)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = (torch.randn(3, 7, 96) * 4).to(dtype)
    expected = norm(x)
    rstd_expected = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-5)
    out, rstd = rms_norm_with_rstd(x, norm.weight, 1e-5)
    assert torch.equal(out, expected)
    assert torch.equal(rstd, rstd_expected)


def test_speed_up_norms_patches_llama_norms_only_and_keeps_every_output():
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    for m in model.modules():
        if hasattr(m, "variance_epsilon"):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
    ids = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        before = model(ids).logits
    assert speed_up_norms(model) == 2 * 2 + 1  # two per layer and the final norm
    assert speed_up_norms(model) == 5  # idempotent
    with torch.no_grad():
        after = model(ids).logits
    assert torch.equal(before, after)
    # A norm that needs a gradient runs the class's forward: training through it still works.
    model.train()
    model.model.norm.weight.requires_grad_(True)
    model(ids).logits.float().sum().backward()
    assert model.model.norm.weight.grad is not None and torch.isfinite(model.model.norm.weight.grad).all()
    gemma = torch.nn.Sequential(GemmaRMSNorm(32))
    assert speed_up_norms(gemma) == 0  # Gemma's (1 + weight) form is another formula


def _sdpa(q, k, v, mask, scale):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, scale=scale,
                                          enable_gqa=q.shape[1] != k.shape[1])


def _padded_causal_mask(lengths, t):
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    keys = torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]
    return (causal[None] & keys[:, None, :])[:, None]  # [rows, 1, T, T], right padding


@pytest.mark.parametrize("mask_kind", ["padded", "causal", "additive"])
def test_short_row_attention_matches_sdpa_values_and_gradients(mask_kind):
    torch.manual_seed(0)
    rows, heads, kv_heads, t, d = 3, 6, 2, 17, 16
    q0 = torch.randn(rows, heads, t, d)
    k0, v0 = torch.randn(rows, kv_heads, t, d), torch.randn(rows, kv_heads, t, d)
    lengths = [17, 11, 5]
    mask = {"padded": _padded_causal_mask(lengths, t), "causal": None,
            "additive": torch.zeros(rows, 1, t, t).masked_fill(~_padded_causal_mask(lengths, t), -1e9)}[mask_kind]
    grad_out = torch.randn(rows, heads, t, d)
    results = []
    for fn in (_sdpa, short_row_attention):
        q, k, v = (x.clone().requires_grad_(True) for x in (q0, k0, v0))
        out = fn(q, k, v, mask, 0.25)
        # Only the real (unpadded) query positions count, as in a loss over trained tokens.
        keep = torch.ones(rows, 1, t, 1) if mask_kind == "causal" else (
            torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]).float()[:, None, :, None]
        (out * grad_out * keep).sum().backward()
        results.append((out * keep, q.grad, k.grad, v.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)


def test_short_row_attention_has_no_nan_for_a_query_with_every_key_masked():
    q = torch.randn(1, 2, 4, 8, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(1, 2, 4, 8, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(1, 2, 4, 8, dtype=torch.bfloat16, requires_grad=True)
    mask = torch.ones(1, 1, 4, 4, dtype=torch.bool).tril()
    mask[..., 0, :] = False  # a left-padded first position
    out = short_row_attention(q, k, v, mask, None)
    out[..., 1:, :].float().sum().backward()
    assert torch.isfinite(out).all() and all(torch.isfinite(x.grad).all() for x in (q, k, v))


def test_short_row_path_only_for_short_bf16_rows_on_cpu():
    def qk(t, dtype=torch.bfloat16, rows=2):
        return torch.empty(rows, 9, t, 64, dtype=dtype), torch.empty(rows, 3, t, 64, dtype=dtype)

    assert use_short_row_path(*qk(90))
    assert not use_short_row_path(*qk(SHORT_ROW_TOKENS + 1))
    assert not use_short_row_path(*qk(90, torch.float32))  # SDPA's kernel is the faster one in fp32
    assert not use_short_row_path(*qk(1))  # one query (generation): SDPA
    assert not use_short_row_path(*qk(160, rows=64))  # too many scores to keep for the backward


def _packed_mask(lengths):
    """What transformers builds for packed position ids: causal within each example, nothing across."""
    t = sum(lengths)
    example = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    same = example[:, None] == example[None, :]
    return (same & torch.ones(t, t, dtype=torch.bool).tril())[None, None]


def _positions(lengths):
    return torch.cat([torch.arange(n) for n in lengths])[None]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_attention_matches_the_block_diagonal_mask(dtype):
    torch.manual_seed(0)
    lengths = [40, 1, 37, 90, 200]  # one token alone; 200 takes SDPA in bf16, the others the short-row path
    t, heads, kv_heads, d = sum(lengths), 6, 2, 16
    q0, k0, v0 = torch.randn(1, heads, t, d), torch.randn(1, kv_heads, t, d), torch.randn(1, kv_heads, t, d)
    grad_out = torch.randn(1, heads, t, d)
    mask = _packed_mask(lengths)
    assert packed_example_lengths(_positions(lengths), mask) == lengths
    results = []
    for fn in (lambda q, k, v: _sdpa(q, k, v, mask, 0.25), lambda q, k, v: packed_attention(q, k, v, lengths, 0.25)):
        q, k, v = (x.to(dtype).requires_grad_(True) for x in (q0, k0, v0))
        out = fn(q, k, v)
        (out.float() * grad_out).sum().backward()
        results.append([x.float() for x in (out, q.grad, k.grad, v.grad)])
    tol = {"atol": 1e-5, "rtol": 1e-4} if dtype is torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, **tol)


def test_packed_lengths_only_for_a_packed_rows_own_mask():
    lengths = [5, 3, 4]
    pos, mask = _positions(lengths), _packed_mask(lengths)
    assert packed_example_lengths(pos, mask) == lengths
    causal = torch.ones(1, 1, 12, 12, dtype=torch.bool).tril()
    assert packed_example_lengths(pos, causal) is None  # the examples may see each other: keep the mask
    padded = _packed_mask(lengths).clone()
    padded[..., :, 11] = False  # a masked key inside an example
    assert packed_example_lengths(pos, padded) is None
    assert packed_example_lengths(torch.arange(12)[None], causal) is None  # one example: nothing to split
    assert packed_example_lengths(torch.tensor([[0, 1, 2, 4, 0, 1, 2, 3, 4, 0, 1, 2]]), mask) is None
    assert packed_example_lengths(pos.expand(2, -1), mask) is None  # rows of a batch: not a packed row
    assert packed_example_lengths(pos, mask.float()) is None  # additive masks: not derived by transformers
    assert packed_example_lengths(pos, None) is None


def test_packed_lengths_lever(monkeypatch):
    monkeypatch.setattr(fast_ops, "PACKED_BY_EXAMPLE", False)
    assert packed_example_lengths(_positions([3, 4]), _packed_mask([3, 4])) is None
