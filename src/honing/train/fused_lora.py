"""Fused LoRA decoder layers for Llama-family models: less memory and fewer kernels per training step.

Why: with PEFT's modules, autograd keeps every intermediate of a decoder layer for the backward pass -
the RMSNorm output next to its input, ``silu(gate)`` and ``silu(gate) * up`` next to ``gate`` and ``up``,
a dropout/scaling copy per adapter - and runs ~20 small elementwise kernels per layer in each direction.
Measured on SmolLM2-135M (one 900-token example, fp32, 2 CPU cores): ~1.2 GB of saved activations and a
third of the step outside matrix multiplies.

What: three ``torch.autograd.Function``\\ s replace the body of each eligible decoder layer during training:

* ``_NormProjections``: RMSNorm, then the q/k/v (or gate/up) projections that share its output, each
  ``x W^T + s (x A^T) B^T``. The adapters' ``A`` matrices are concatenated so the shared input meets them
  in one matmul. Saves only the layer input, the per-row ``rstd`` and the ``[N, r]`` adapter products: the
  normalized input is recomputed in the backward (a few elementwise ops).
* ``_AttnOutProjection``: the o projection, reading SDPA's output in the layout SDPA returns it and saved
  by SDPA anyway, so the ``[N, hidden]`` copy the usual transpose-reshape makes is not kept.
* ``_NormSwiGLU``: RMSNorm, gate/up, ``silu(gate) * up`` and the down projection in one function that
  saves ``gate`` and ``up`` only; ``silu`` and the product are recomputed in the backward. With
  ``recompute_mlp`` it keeps neither and recomputes gate/up too (activation_checkpointing: mlp).

The math is the same as PEFT's (``tests/test_fused_lora.py`` compares losses and every adapter gradient
with PEFT's modules, padded, packed and real-model cases). Adapter weights are PEFT's own parameters, so
saving, merging and loading adapters is unchanged.

When: training mode, gradients on, no KV cache, SDPA attention, LoRA without dropout or DoRA on a single
active adapter, frozen base weights. Anything else (eval, generation, ``disable_adapter()``, merged
adapters, other architectures) runs the model's original forward: the patch checks on every call.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F

from honing.models.fast_ops import (
    packed_attention,
    packed_example_lengths,
    rms_norm_with_rstd,
    short_row_attention,
    use_short_row_path,
)

# Decoder layers whose forward is exactly: x + attn(norm1(x)); h + mlp(norm2(h)), with RMSNorm
# (weight * x_hat), rotary q/k, SDPA and a SiLU-gated MLP. Qwen2 adds q/k/v biases (handled).
SUPPORTED_LAYERS = ("LlamaDecoderLayer", "MistralDecoderLayer", "Qwen2DecoderLayer")


@dataclass(frozen=True)
class _Proj:
    """One projection of a layer: frozen ``weight``/``bias`` plus an optional LoRA (A [r, in], B [out, r])."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    lora_a: torch.Tensor | None
    lora_b: torch.Tensor | None
    scaling: float

    @property
    def rank(self) -> int:
        return 0 if self.lora_a is None else self.lora_a.shape[0]


def _projection(module) -> _Proj | None:
    """Read a (possibly PEFT-wrapped) linear layer; None when it is something this path cannot reproduce."""
    if type(module) is torch.nn.Linear:
        if module.weight.requires_grad or (module.bias is not None and module.bias.requires_grad):
            return None  # trainable base weights: not a LoRA layer
        return _Proj(module.weight, module.bias, None, None, 0.0)
    base = getattr(module, "base_layer", None)
    if type(base) is not torch.nn.Linear or base.weight.requires_grad:
        return None
    if base.bias is not None and base.bias.requires_grad:
        return None
    if getattr(module, "disable_adapters", False) or getattr(module, "merged", False):
        return None
    active = list(getattr(module, "active_adapters", []))
    if len(active) != 1:
        return None
    name = active[0]
    if name not in module.lora_A:
        return _Proj(base.weight, base.bias, None, None, 0.0)  # this layer has no adapter of that name
    if module.use_dora.get(name, False):
        return None
    if type(module.lora_dropout[name]) is not torch.nn.Identity:
        return None  # dropout > 0: the fused functions do not draw dropout masks
    a, b = module.lora_A[name], module.lora_B[name]
    if type(a) is not torch.nn.Linear or type(b) is not torch.nn.Linear or a.bias is not None or b.bias is not None:
        return None
    return _Proj(base.weight, base.bias, a.weight, b.weight, float(module.scaling[name]))


def _flat(projs: list[_Proj]) -> list:
    """Tensors to hand to an autograd.Function, 4 per projection (None where absent)."""
    out = []
    for p in projs:
        out += [p.weight, p.bias, p.lora_a, p.lora_b]
    return out


def _unflat(tensors, scalings) -> list[_Proj]:
    return [_Proj(tensors[4 * i], tensors[4 * i + 1], tensors[4 * i + 2], tensors[4 * i + 3], s)
            for i, s in enumerate(scalings)]


# fp32 adapters on a bf16 base (Honing's bf16 LoRA on CPU): the adapter matmuls run in the base's dtype, with
# A and B cast once per call ([r, in] and [out, r]: small), as autocast does on a GPU. Adding in fp32 instead
# (PEFT's casts without autocast) converts every projection's [N, out] output and gradient to fp32 and back:
# 21% of a short-example step on a 2-core CPU went to those copies (benchmarks/profile_step.py).
LORA_MATH_IN_BASE_DTYPE = True


def _compute_view(projs: list[_Proj]) -> list[_Proj]:
    """The projections with their adapters in the base weights' dtype (no copy when they already are)."""
    if not LORA_MATH_IN_BASE_DTYPE:
        return projs
    return [p if not p.rank or p.lora_a.dtype == p.weight.dtype else
            _Proj(p.weight, p.bias, p.lora_a.to(p.weight.dtype), p.lora_b.to(p.weight.dtype), p.scaling)
            for p in projs]


def _in_param_dtype(lora_grads: list, projs: list[_Proj]) -> list:
    """Adapter gradients computed in the base's dtype, returned in the adapters' own (fp32) dtype."""
    return [(ga if ga is None else ga.to(p.lora_a.dtype), gb if gb is None else gb.to(p.lora_b.dtype))
            for (ga, gb), p in zip(lora_grads, projs)]


# ---------------------------------------------------------------- shared pieces of forward / backward

def _rms_norm(x, weight, eps: float):
    """(normalized x times weight, rstd [N, 1] fp32) exactly as transformers' LlamaRMSNorm computes it (one
    fused kernel where torch has one: honing.models.fast_ops)."""
    return rms_norm_with_rstd(x, weight, eps)


def _normalized(x, weight, rstd):
    """The norm's output from its input and saved rstd (the backward recomputes it instead of keeping it)."""
    return weight * (x.float() * rstd).to(x.dtype)


def _rms_norm_backward(grad_n, x, weight, rstd):
    """Gradient w.r.t. x of ``weight * x * rstd(x)`` (fp32 math, returned in x's dtype)."""
    g = (grad_n * weight).float()
    x_hat = x.float() * rstd
    return (rstd * (g - x_hat * (g * x_hat).mean(-1, keepdim=True))).to(x.dtype)


def _project(x, projs: list[_Proj], xa):
    """Each projection's ``x W^T + b + s (x A^T) B^T``; ``xa`` = x @ cat(A)^T, [N, sum of ranks].

    Adapters kept in a wider dtype than the base (fp32 LoRA on a bf16 model) add in their dtype and the
    sum is cast back, as PEFT does.
    """
    outs, col = [], 0
    for p in projs:
        y = F.linear(x, p.weight, p.bias)
        if p.rank:
            xa_p = xa[:, col : col + p.rank]
            if xa_p.dtype == y.dtype:
                y.addmm_(xa_p, p.lora_b.t(), alpha=p.scaling)
            else:
                y = y.to(xa_p.dtype).addmm_(xa_p, p.lora_b.t(), alpha=p.scaling).to(y.dtype)
            col += p.rank
        outs.append(y)
    return outs


def _lora_a_product(x, projs: list[_Proj]):
    """x @ cat(A)^T (in the adapters' dtype) for the projections that have an adapter: one matmul, or None."""
    a = [p.lora_a for p in projs if p.rank]
    if not a:
        return None
    return x.to(a[0].dtype) @ (a[0] if len(a) == 1 else torch.cat(a)).t()


def _projections_backward(grads, x, xa, projs: list[_Proj], need_x: bool):
    """(grad of the shared input x or None, per-projection (grad_A, grad_B) or (None, None)).

    grads[i] is the gradient of projection i's output (None = unused). For y = x W^T + s (x A^T) B^T:
    dx = g W + s (g B) A;  dA = s (g B)^T x;  dB = s g^T (x A^T).
    """
    grad_x = None
    lora_grads, col = [], 0
    for p, g in zip(projs, grads):
        if g is None:
            lora_grads.append((None, None))
            col += p.rank
            continue
        if need_x:
            grad_x = g @ p.weight if grad_x is None else grad_x.addmm_(g, p.weight)
        if not p.rank:
            lora_grads.append((None, None))
            continue
        g_lora = g.to(p.lora_b.dtype)
        gb = (g_lora @ p.lora_b).mul_(p.scaling)  # [N, r], scaling folded in once
        if need_x:
            if gb.dtype == grad_x.dtype:
                grad_x.addmm_(gb, p.lora_a)
            else:
                grad_x.add_((gb @ p.lora_a).to(grad_x.dtype))
        grad_a = gb.t() @ x.to(gb.dtype)
        grad_b = (g_lora.t() @ xa[:, col : col + p.rank]).mul_(p.scaling)
        lora_grads.append((grad_a, grad_b))
        col += p.rank
    return grad_x, lora_grads


def _weight_grads(lora_grads, needs) -> list:
    """Gradients in the order of ``_flat``: nothing for the frozen weight/bias, A and B where asked."""
    out = []
    for i, (ga, gb) in enumerate(lora_grads):
        out += [None, None, ga if needs[4 * i + 2] else None, gb if needs[4 * i + 3] else None]
    return out


# ---------------------------------------------------------------- the three functions

class _NormProjections(torch.autograd.Function):
    """outputs_i = proj_i(RMSNorm(x)); saves x, rstd and the [N, r] adapter products only."""

    @staticmethod
    def forward(ctx, x, norm_weight, eps, scalings, *tensors):
        projs = _compute_view(_unflat(tensors, scalings))
        n, rstd = _rms_norm(x, norm_weight, eps)
        xa = _lora_a_product(n, projs)
        outs = _project(n, projs, xa)
        ctx.scalings = scalings
        ctx.save_for_backward(x, norm_weight, rstd, xa, *tensors)
        return tuple(outs)

    @staticmethod
    def backward(ctx, *grads):
        x, norm_weight, rstd, xa, *tensors = ctx.saved_tensors
        projs = _unflat(tensors, ctx.scalings)
        n = _normalized(x, norm_weight, rstd)
        need_x = ctx.needs_input_grad[0]
        grad_n, lora_grads = _projections_backward(grads, n, xa, _compute_view(projs), need_x)
        grad_x = _rms_norm_backward(grad_n, x, norm_weight, rstd) if need_x and grad_n is not None else None
        lora_grads = _in_param_dtype(lora_grads, projs)
        return (grad_x, None, None, None, *_weight_grads(lora_grads, ctx.needs_input_grad[4:]))


class _AttnOutProjection(torch.autograd.Function):
    """o_proj over SDPA's output [B, heads, T, d] (kept by SDPA already) -> [B*T, hidden]."""

    @staticmethod
    def forward(ctx, attn, scaling, *tensors):
        (proj,) = _compute_view(_unflat(tensors, (scaling,)))
        b, h, t, d = attn.shape
        x = attn.transpose(1, 2).reshape(b * t, h * d)
        xa = _lora_a_product(x, [proj])
        (y,) = _project(x, [proj], xa)
        ctx.scaling = scaling
        ctx.save_for_backward(attn, xa, *tensors)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        attn, xa, *tensors = ctx.saved_tensors
        (proj,) = _unflat(tensors, (ctx.scaling,))
        b, h, t, d = attn.shape
        x = attn.transpose(1, 2).reshape(b * t, h * d)
        need_x = ctx.needs_input_grad[0]
        grad_x, lora_grads = _projections_backward([grad_y], x, xa, _compute_view([proj]), need_x)
        lora_grads = _in_param_dtype(lora_grads, [proj])
        grad_attn = grad_x.view(b, t, h, d).transpose(1, 2) if need_x else None
        return (grad_attn, None, *_weight_grads(lora_grads, ctx.needs_input_grad[2:]))


class _NormSwiGLU(torch.autograd.Function):
    """down(silu(gate(n)) * up(n)) with n = RMSNorm(x); saves x, rstd, gate, up and adapter products."""

    @staticmethod
    def forward(ctx, x, norm_weight, eps, scalings, recompute: bool, *tensors):
        gate_p, up_p, down_p = _compute_view(_unflat(tensors, scalings))
        n, rstd = _rms_norm(x, norm_weight, eps)
        na = _lora_a_product(n, [gate_p, up_p])
        gate, up = _project(n, [gate_p, up_p], na)
        p = F.silu(gate).mul_(up)
        pa = _lora_a_product(p, [down_p])
        (out,) = _project(p, [down_p], pa)
        del p
        ctx.scalings, ctx.recompute = scalings, recompute
        if recompute:  # keep 2 x intermediate floats per token less; pay the gate/up matmuls again
            gate = up = None
        ctx.save_for_backward(x, norm_weight, rstd, na, gate, up, pa, *tensors)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, norm_weight, rstd, na, gate, up, pa, *tensors = ctx.saved_tensors
        params = _unflat(tensors, ctx.scalings)
        gate_p, up_p, down_p = _compute_view(params)
        n = _normalized(x, norm_weight, rstd)
        if ctx.recompute:
            gate, up = _project(n, [gate_p, up_p], na)
        sig = torch.sigmoid(gate)
        silu = gate * sig
        p = silu * up
        grad_p, down_grads = _projections_backward([grad_out], p, pa, [down_p], True)
        del p
        grad_up = grad_p * silu
        del silu
        # d silu(g)/dg = sig * (1 + g * (1 - sig)), computed in place on `sig`
        grad_gate = grad_p.mul_(up).mul_(sig.mul_(1 + gate * (1 - sig)))
        del sig
        need_x = ctx.needs_input_grad[0]
        grad_n, gu_grads = _projections_backward([grad_gate, grad_up], n, na, [gate_p, up_p], need_x)
        grad_x = _rms_norm_backward(grad_n, x, norm_weight, rstd) if need_x else None
        lora_grads = _in_param_dtype(gu_grads + down_grads, params)
        return (grad_x, None, None, None, None, *_weight_grads(lora_grads, ctx.needs_input_grad[5:]))


# ---------------------------------------------------------------- the layer forward and the patch

def _layer_projections(layer):
    """(q, k, v, o, gate, up, down) as _Proj, or None when any of them cannot take the fused path."""
    attn, mlp = layer.self_attn, layer.mlp
    mods = [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj]
    projs = [_projection(m) for m in mods]
    return None if any(p is None for p in projs) else projs


def _fused_applies(layer, past_key_values, use_cache) -> bool:
    return (layer.training and torch.is_grad_enabled() and past_key_values is None and not use_cache
            and layer.self_attn.config._attn_implementation == "sdpa")


def _fused_layer_forward(layer, original, hidden_states, attention_mask=None, position_ids=None,
                         past_key_values=None, use_cache=False, position_embeddings=None, **kwargs):
    # Newer transformers pass the KV cache as ``cache`` (and warn when ``past_key_values`` comes too).
    cache = kwargs.get("cache", past_key_values)
    projs = _layer_projections(layer) if _fused_applies(layer, cache, use_cache) else None
    if projs is None or position_embeddings is None:
        if past_key_values is not None:
            kwargs["past_key_values"] = past_key_values
        return original(hidden_states, attention_mask=attention_mask, position_ids=position_ids,
                        use_cache=use_cache, position_embeddings=position_embeddings, **kwargs)
    body = partial(_fused_layer_body, layer, projs, attention_mask=attention_mask,
                   position_embeddings=position_embeddings, position_ids=position_ids)
    if getattr(layer, "gradient_checkpointing", False):
        # transformers 5 checkpoints inside the class's forward, which this path replaces: do it here,
        # with the function the model was configured with (model.gradient_checkpointing_enable).
        return layer._gradient_checkpointing_func(body, hidden_states)
    return body(hidden_states)


def _fused_layer_body(layer, projs, hidden_states, attention_mask, position_embeddings, position_ids=None):
    q_p, k_p, v_p, o_p, gate_p, up_p, down_p = projs
    attn = layer.self_attn
    bsz, seq, hidden = hidden_states.shape
    x = hidden_states.reshape(bsz * seq, hidden)

    ln1, ln2 = layer.input_layernorm, layer.post_attention_layernorm
    q, k, v = _NormProjections.apply(x, ln1.weight, ln1.variance_epsilon, (q_p.scaling, k_p.scaling, v_p.scaling),
                                     *_flat([q_p, k_p, v_p]))
    hd = attn.head_dim
    q = q.view(bsz, seq, -1, hd).transpose(1, 2)
    k = k.view(bsz, seq, -1, hd).transpose(1, 2)
    v = v.view(bsz, seq, -1, hd).transpose(1, 2)
    cos, sin = position_embeddings
    q, k = sys.modules[type(attn).__module__].apply_rotary_pos_emb(q, k, cos, sin)
    # The mask logic of transformers' sdpa_attention_forward: causal flag when there is no mask.
    mask = attention_mask[:, :, :, :seq] if attention_mask is not None else None
    grouped = q.shape[1] != k.shape[1]
    packed = packed_example_lengths(position_ids, attention_mask) if bsz == 1 else None
    if packed is not None:
        out = packed_attention(q, k, v, packed, attn.scaling)
    elif use_short_row_path(q, k):
        out = short_row_attention(q, k, v, mask, attn.scaling)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and seq > 1,
                                             scale=attn.scaling, enable_gqa=grouped)
    h = x + _AttnOutProjection.apply(out, o_p.scaling, *_flat([o_p]))
    h = h + _NormSwiGLU.apply(h, ln2.weight, ln2.variance_epsilon, (gate_p.scaling, up_p.scaling, down_p.scaling),
                              getattr(layer, "_honing_recompute_mlp", False), *_flat([gate_p, up_p, down_p]))
    return h.view(bsz, seq, hidden)


def _eligible_layer(layer) -> bool:
    # The MRO, not the class name: FSDP2's fully_shard swaps a layer's class for a subclass named
    # FSDP<Original>, and the patch must keep engaging on sharded layers.
    if not any(c.__name__ in SUPPORTED_LAYERS for c in type(layer).__mro__):
        return False
    attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    if attn is None or mlp is None or any(hasattr(attn, n) for n in ("q_norm", "k_norm")):
        return False
    config = attn.config
    if getattr(config, "hidden_act", None) != "silu" or getattr(config, "attention_dropout", 0.0):
        return False
    norms = (getattr(layer, "input_layernorm", None), getattr(layer, "post_attention_layernorm", None))
    if any(not type(n).__name__.endswith("RMSNorm") or n.weight.requires_grad for n in norms):
        return False  # a trainable norm weight would need its own gradient
    return _layer_projections(layer) is not None


def enable_fused_lora(model, recompute_mlp: bool = False) -> int:
    """Route eligible decoder layers of ``model`` (PEFT-wrapped or not) through the fused path.

    recompute_mlp: do not keep the MLP's gate/up outputs for the backward (the largest saved tensors:
    2 x 1,536 of ~5,800 floats per token and layer on SmolLM2); recompute them there with two matmuls.
    Returns how many layers were patched (0: the model keeps its own forward everywhere). Idempotent.
    Layers check eligibility again on every call and fall back to their original forward.
    """
    import types

    patched = 0
    for module in model.modules():
        if not _eligible_layer(module):
            continue
        module._honing_recompute_mlp = recompute_mlp
        if getattr(module, "_honing_fused", False):
            patched += 1
            continue
        original = module.forward

        def forward(self, *args, _original=original, **kwargs):
            return _fused_layer_forward(self, _original, *args, **kwargs)

        module.forward = types.MethodType(forward, module)
        module._honing_fused = True
        patched += 1
    return patched
