"""Faster versions of three operations of Llama-family decoder layers, with the same results.

* **RMSNorm**: transformers' ``LlamaRMSNorm`` runs ~8 elementwise kernels (two fp32 copies, pow, mean, add,
  rsqrt, mul, the cast back) and the weight multiply. torch's ``aten::_fused_rms_norm`` does the first part in
  one kernel and returns the same bits: its fp32 math and rounding are the norm's (the weight is still applied
  after the cast, as transformers does). On a 2-core EPYC (bf16, 760 x 576, one thread) 7.4 ms -> 1.9 ms per
  norm forward, and a decoder layer has two. Its backward has no CPU kernel, so a norm whose input or weight
  needs a gradient keeps the usual formula (``honing.train.fused_lora`` computes its own backward from
  ``rstd`` and uses :func:`rms_norm_with_rstd` in its forward).
* **Attention over short rows** (:func:`short_row_attention`): on CPU, SDPA's flash kernel costs more than the
  plain ``softmax(q k^T) v`` for short sequences in bf16, forward and backward (2-core EPYC, 9 heads of 64,
  interleaved: 0.3-0.75x the time at 40-128 tokens, even at ~192, slower from 256). The plain form keeps the
  ``[T, T]`` probabilities for the backward, so it is used only where they are small.
* **Attention in a packed row, one example at a time** (:func:`packed_attention`): transformers gives a row of
  packed examples a block-diagonal causal mask over the whole row, so attention computes (and masks away)
  every pair of tokens from different examples. Each example's own causal attention gives the same
  result for a fraction of the work: four 40-token chats and a 90-token replay example in one 248-token
  row score 14.5k of 61.5k pairs.
"""

from __future__ import annotations

import math
import types

import torch

# The plain attention path: bf16 on CPU, rows of at most this many tokens, and a score tensor (rows x heads
# x T x T) small enough to keep per layer for the backward. Measured crossover: ~192 tokens.
SHORT_ROW_TOKENS = 160
SHORT_ROW_MAX_SCORES = 4 * 1024 * 1024

PACKED_BY_EXAMPLE = True  # the lever for packed_attention (benchmarks/profile_step.py --undo packed-by-example)
FUSED_NORM = True  # the lever (benchmarks/profile_step.py --undo fused-norm)
_FUSED_NORM_WORKS: dict = {}  # (device type, dtype) -> bool: does aten::_fused_rms_norm run here?


def _fused_norm_available(x: torch.Tensor) -> bool:
    key = (x.device.type, x.dtype)
    if key not in _FUSED_NORM_WORKS:
        try:
            probe = torch.ones(2, 4, dtype=x.dtype, device=x.device)
            torch.ops.aten._fused_rms_norm(probe, [4], None, 1e-6)
            _FUSED_NORM_WORKS[key] = True
        except (AttributeError, NotImplementedError, RuntimeError):
            _FUSED_NORM_WORKS[key] = False
    return _FUSED_NORM_WORKS[key]


def rms_norm_with_rstd(x: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(``weight * (x * rstd).to(x.dtype)``, ``rstd`` fp32 with a trailing 1) exactly as transformers'
    ``LlamaRMSNorm`` computes them, in one kernel where torch has it. Not differentiable through the fused
    kernel: call it without autograd (inside an autograd.Function's forward, or on tensors needing no grad)."""
    if FUSED_NORM and _fused_norm_available(x):
        normed, rstd = torch.ops.aten._fused_rms_norm(x, [x.shape[-1]], None, eps)
        return weight * normed, rstd.view(*x.shape[:-1], 1)
    rstd = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)
    return weight * (x.float() * rstd).to(x.dtype), rstd


def _llama_norm_code():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    code = LlamaRMSNorm.forward.__code__
    return code.co_code, code.co_names


def _fast_norm_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    if torch.is_grad_enabled() and (hidden_states.requires_grad or self.weight.requires_grad):
        return type(self).forward(self, hidden_states)
    return rms_norm_with_rstd(hidden_states, self.weight, self.variance_epsilon)[0]


def speed_up_norms(model) -> int:
    """Route the forward of every RMSNorm of ``model`` whose code is Llama's (Mistral, Qwen2/3 and Phi-3
    copy it; Gemma's ``1 + weight`` form is left alone) through the fused kernel when no gradient flows
    through it (evaluation, generation, the frozen layers below the adapters). Returns how many norms.
    Idempotent; the module's own forward stays the class's, so a norm that needs a gradient runs it."""
    try:
        llama = _llama_norm_code()
    except ImportError:
        return 0
    count = 0
    for module in model.modules():
        fwd = getattr(type(module), "forward", None)
        code = getattr(fwd, "__code__", None)
        if (code is None or not type(module).__name__.endswith("RMSNorm")
                or (code.co_code, code.co_names) != llama or not hasattr(module, "variance_epsilon")):
            continue
        if not isinstance(module.__dict__.get("forward"), types.MethodType):
            module.forward = types.MethodType(_fast_norm_forward, module)
        count += 1
    return count


def use_short_row_path(q: torch.Tensor, k: torch.Tensor) -> bool:
    """The plain attention is faster here (bf16 on CPU, short rows, scores small enough to keep)."""
    rows, heads, t_q, _ = q.shape
    t_k = k.shape[2]
    return (q.device.type == "cpu" and q.dtype == torch.bfloat16 and 1 < t_q and t_k <= SHORT_ROW_TOKENS
            and rows * heads * t_q * t_k <= SHORT_ROW_MAX_SCORES)


def short_row_attention(q, k, v, mask: torch.Tensor | None, scale: float | None) -> torch.Tensor:
    """``softmax(q k^T * scale + mask) v`` as SDPA computes it for ``mask`` (boolean: True = attend; additive
    float; None = causal), with grouped key/value heads repeated; the softmax in fp32 as transformers' eager
    attention does. Returns [rows, heads, T, d] like ``F.scaled_dot_product_attention``."""
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    scores = torch.matmul(q, k.transpose(-1, -2)) * (scale if scale is not None else 1 / math.sqrt(q.shape[-1]))
    if mask is None:
        t_q, t_k = q.shape[2], k.shape[2]
        mask = torch.ones(t_q, t_k, dtype=torch.bool, device=q.device).tril(t_k - t_q)
    if mask.dtype == torch.bool:
        # The lowest finite value, not -inf: a row with every key masked (a left-padded query) then gets
        # finite weights instead of NaN, which its zero gradient would still spread in the backward.
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    else:
        scores = scores + mask
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(probs, v)


_last_segments: tuple = (None, None, None)  # (position_ids, mask, lengths): the layers of one forward share them


def packed_example_lengths(position_ids: torch.Tensor | None, mask: torch.Tensor | None) -> list[int] | None:
    """The lengths of the examples packed in a one-row batch, when its attention mask is exactly their
    block-diagonal causal mask; else None. ``position_ids`` [1, T] restart at 0 at each example
    (``honing.train.packing``); ``mask`` [1, 1, T, T] is the boolean mask transformers derived from them.
    Checked, not assumed: positions count up by one inside each example, and the mask allows exactly as many
    pairs as the examples' causal triangles hold (a padding mask or a plain causal one allows other counts)."""
    global _last_segments
    if not PACKED_BY_EXAMPLE or position_ids is None or mask is None:
        return None
    if _last_segments[0] is position_ids and _last_segments[1] is mask:
        return _last_segments[2]
    lengths = _packed_lengths(position_ids, mask)
    _last_segments = (position_ids, mask, lengths)
    return lengths


def _packed_lengths(position_ids: torch.Tensor, mask: torch.Tensor) -> list[int] | None:
    if position_ids.dim() != 2 or position_ids.shape[0] != 1 or mask.dtype != torch.bool or mask.dim() != 4:
        return None
    seq = position_ids.shape[1]
    if mask.shape[:2] != (1, 1) or mask.shape[2] != seq or mask.shape[3] < seq:
        return None
    pos = position_ids[0]
    starts = (pos == 0).nonzero().flatten().tolist()
    if len(starts) < 2 or starts[0] != 0:
        return None
    steps = pos[1:] - pos[:-1]
    if int(((steps == 1) | (pos[1:] == 0)).sum()) != seq - 1:
        return None
    lengths = [end - start for start, end in zip(starts, starts[1:] + [seq])]
    if int(mask[0, 0, :, :seq].sum()) != sum(n * (n + 1) // 2 for n in lengths):
        return None
    return lengths


def packed_attention(q, k, v, lengths: list[int], scale: float | None) -> torch.Tensor:
    """Causal attention of each packed example on its own ([1, heads, T, d] in and out, ``lengths`` summing
    to T), through the short-row path or SDPA as an unpacked row of that length would go."""
    import torch.nn.functional as F

    grouped = q.shape[1] != k.shape[1]
    outs = []
    for qs, ks, vs in zip(q.split(lengths, dim=2), k.split(lengths, dim=2), v.split(lengths, dim=2)):
        if use_short_row_path(qs, ks):
            outs.append(short_row_attention(qs, ks, vs, None, scale))
        else:
            outs.append(F.scaled_dot_product_attention(qs, ks, vs, is_causal=qs.shape[2] > 1, scale=scale,
                                                       enable_gqa=grouped))
    return torch.cat(outs, dim=2)
