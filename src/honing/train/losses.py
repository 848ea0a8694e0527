"""Chunked causal-LM cross-entropy: the vocabulary x tokens logits never exist in full.

With a 49k-token vocabulary, full fp32 logits for a batch of 4 x 1,024 tokens take 0.8 GB, and the
usual path keeps several copies (logits, the fp32 upcast, softmax, their gradients). Here:

1. Labels are shifted (position t predicts token t+1) and only *trained* positions are kept, so prompt
   tokens (-100) cost no lm_head matmul at all.
2. The kept hidden states go through the lm_head ``chunk_tokens`` at a time, and each chunk's gradient
   is computed right there in the forward (``_LinearCrossEntropySum``, the fused linear cross-entropy of
   Liger-Kernel, in PyTorch): softmax in place, minus one at the target, times the head weight. Only
   the ``[n, hidden]`` gradient is kept; no logits survive the chunk. Peak logits memory:
   ``chunk_tokens x vocab x 4`` bytes (512 x 49,152 x 4 = 100 MB), whatever T is, and none of it is
   held while the decoder runs its backward. Measured on SmolLM2 (600 trained positions): x0.5 the time
   of log-softmax + NLL and their backward, and 236 MB less at the step's peak.
   With Gemma-2 style soft-capping the older path runs: chunks wrapped in ``torch.utils.checkpoint``
   (logits recomputed in the backward when there is more than one chunk).
3. Softmax runs in fp32 whatever the compute dtype (bf16 log-probabilities lose ~3 digits).

Getting hidden states without the model computing logits: ``causal_lm_loss_sum`` calls the model's
normal forward (so PEFT, DDP and autocast wrappers all see it) with ``logits_to_keep=1`` - the head runs
on one position per row - and captures the decoder's output with a forward hook.
"""

from __future__ import annotations

import functools

from honing.data.render import IGNORE_INDEX


def _chunk_nll_sum(hidden, weight, bias, targets, softcap: float | None):
    """Sum of -log p(target) for ``hidden`` [N, H] against ``weight`` [V, H]; fp32 scalar."""
    import torch
    import torch.nn.functional as F

    logits = F.linear(hidden, weight, bias).float()  # [N, V] - the only place logits exist
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, targets, reduction="sum")


@functools.cache
def _linear_cross_entropy_function():
    """The autograd.Function class, built on first use (this module imports without torch)."""
    import torch
    import torch.nn.functional as F

    class _LinearCrossEntropySum(torch.autograd.Function):
        """sum_i -log softmax(h_i W^T + b)[t_i] with every gradient computed chunk by chunk in the forward.

        d loss / d logits = softmax - onehot(target); from it, per chunk: dh = g W, dW += g^T h, db += sum g.
        The backward only scales the stored gradients by the incoming scalar.
        """

        @staticmethod
        def forward(ctx, h, weight, bias, targets, chunk_tokens: int, with_grads: bool):
            need_h = with_grads and ctx.needs_input_grad[0]
            need_w = with_grads and ctx.needs_input_grad[1]
            need_b = with_grads and bias is not None and ctx.needs_input_grad[2]
            grad_h = torch.empty_like(h) if need_h else None
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
            grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
            total = torch.zeros((), dtype=torch.float32, device=h.device)
            for s in range(0, h.shape[0], chunk_tokens):
                hs, ts = h[s : s + chunk_tokens], targets[s : s + chunk_tokens]
                logits = F.linear(hs, weight, bias).float()  # [c, V]: the only logits that exist
                target_logit = logits.gather(1, ts.unsqueeze(1)).squeeze(1)
                top = logits.amax(dim=1, keepdim=True)
                probs = logits.sub_(top).exp_()  # in place: the logits are not needed any more
                sums = probs.sum(dim=1, keepdim=True)
                total += (top.squeeze(1) + sums.log().squeeze(1) - target_logit).sum()
                if not (need_h or need_w or need_b):
                    continue
                g = probs.div_(sums)  # softmax, in place
                g[torch.arange(g.shape[0], device=g.device), ts] -= 1.0  # minus onehot: d loss / d logits
                if need_h:
                    torch.mm(g.to(weight.dtype), weight, out=grad_h[s : s + chunk_tokens])
                if need_w:
                    grad_w.addmm_(g.t(), hs.float())
                if need_b:
                    grad_b += g.sum(0)
                del g, probs
            ctx.save_for_backward(grad_h, grad_w, grad_b)
            ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
            return total

        @staticmethod
        def backward(ctx, grad_total):
            grad_h, grad_w, grad_b = ctx.saved_tensors
            w_dtype, b_dtype = ctx.dtypes
            return (
                None if grad_h is None else grad_h * grad_total.to(grad_h.dtype),
                None if grad_w is None else (grad_w * grad_total).to(w_dtype),
                None if grad_b is None else (grad_b * grad_total).to(b_dtype),
                None, None, None,
            )

    return _LinearCrossEntropySum


def chunked_cross_entropy_sum(hidden, lm_head_weight, labels, chunk_tokens: int = 512, lm_head_bias=None,
                              softcap: float | None = None, checkpoint_chunks: bool | None = None):
    """(sum of next-token NLL over trained positions: fp32 0-dim tensor, number of trained positions: int).

    hidden: [B, T, H] final hidden states (after the last norm), any float dtype.
    lm_head_weight: [V, H] (bias: [V] or None). labels: [B, T] unshifted token ids, -100 = not trained.
    chunk_tokens: trained positions per lm_head chunk (bounds logits memory to chunk_tokens x V).
    softcap: Gemma-2 style final logit soft-capping (``config.final_logit_softcapping``), None = off.
    checkpoint_chunks: (soft-capped heads only) recompute each chunk's logits in the backward; None (default)
    = only when there is more than one chunk (see the module docstring).
    Equal to ``F.cross_entropy(full_logits[:, :-1].float(), labels[:, 1:], reduction="sum")`` in value and
    gradient (tests/test_losses.py).
    """
    import torch
    from torch.utils.checkpoint import checkpoint

    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    hid = hidden.shape[-1]
    targets = labels[:, 1:].reshape(-1)
    keep = (targets != IGNORE_INDEX).nonzero().squeeze(-1)
    n = int(keep.numel())
    if n == 0:
        # Keep the graph connected (DDP, backward() on the result) at zero cost.
        return hidden.sum() * 0.0, 0
    h = hidden[:, :-1, :].reshape(-1, hid).index_select(0, keep)  # [n, H]
    t = targets.index_select(0, keep)
    if not softcap:
        with_grads = torch.is_grad_enabled() and (
            h.requires_grad or lm_head_weight.requires_grad or (lm_head_bias is not None and lm_head_bias.requires_grad))
        return _linear_cross_entropy_function().apply(h, lm_head_weight, lm_head_bias, t, chunk_tokens, with_grads), n
    if checkpoint_chunks is None:
        checkpoint_chunks = n > chunk_tokens
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for s in range(0, n, chunk_tokens):
        hs, ts = h[s : s + chunk_tokens], t[s : s + chunk_tokens]
        if checkpoint_chunks and torch.is_grad_enabled() and (hs.requires_grad or lm_head_weight.requires_grad):
            part = checkpoint(_chunk_nll_sum, hs, lm_head_weight, lm_head_bias, ts, softcap, use_reentrant=False)
        else:
            part = _chunk_nll_sum(hs, lm_head_weight, lm_head_bias, ts, softcap)
        total = total + part
    return total, n


def _unwrap(model):
    """The transformers PreTrainedModel inside DDP / PEFT wrappers."""
    inner = getattr(model, "module", model)  # DDP, FSDP1
    get_base = getattr(inner, "get_base_model", None)  # PeftModel
    return get_base() if callable(get_base) else inner


def _plain_head(core):
    """(lm_head module, decoder module) when the head is a plain Linear we can chunk, else None."""
    import torch

    head = core.get_output_embeddings() if hasattr(core, "get_output_embeddings") else None
    decoder = core.get_decoder() if hasattr(core, "get_decoder") else None
    if type(head) is not torch.nn.Linear or decoder is None or decoder is core:
        return None  # e.g. a LoRA-wrapped lm_head: its adapter must run, so use the model's own logits
    if getattr(core.config, "logit_scale", None) not in (None, 1, 1.0):
        return None  # heads that rescale logits (Cohere) are not reproduced here
    return head, decoder


def causal_lm_loss_sum(model, inputs: dict, labels, chunk_tokens: int = 512, checkpoint_chunks: bool | None = None):
    """(loss_sum: fp32 0-dim tensor with grad, n_trained: int) for one micro-batch.

    model: a causal LM (plain, PEFT-wrapped or DDP-wrapped). inputs: the batch without labels
    (``input_ids`` [B, T], ``position_ids``, optionally ``attention_mask``). labels: [B, T] unshifted,
    -100 = not trained. The caller divides by the step's trained tokens.
    Falls back to full logits (trained positions only) when the head cannot be chunked.
    """
    return causal_lm_loss_sums(model, inputs, [labels], chunk_tokens, checkpoint_chunks)[0]


def causal_lm_loss_sums(model, inputs: dict, label_sets: list, chunk_tokens: int = 512,
                        checkpoint_chunks: bool | None = None) -> list:
    """``causal_lm_loss_sum`` for several label tensors over one forward: [(loss_sum, n_trained)] in the
    order of ``label_sets``. Each is a [B, T] tensor marking its own trained positions (-100 elsewhere), so
    one forward gives separate sums (e.g. the task's rows and the replay rows of a step, weighted apart by
    the caller); the decoder runs once, the head once per set, over that set's trained positions only."""
    import torch.nn.functional as F

    core = _unwrap(model)
    found = _plain_head(core)
    if found is None:
        logits = model(**inputs, use_cache=False).logits[:, :-1].float()
        logits = logits.reshape(-1, logits.size(-1))
        out = []
        for labels in label_sets:
            shift = labels[:, 1:]
            loss = F.cross_entropy(logits, shift.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")
            out.append((loss, int((shift != IGNORE_INDEX).sum())))
        return out
    hidden = decoder_hidden_states(model, inputs, found[1])
    softcap = getattr(core.config, "final_logit_softcapping", None)
    head = found[0]
    return [chunked_cross_entropy_sum(hidden, head.weight, labels, chunk_tokens, head.bias, softcap, checkpoint_chunks)
            for labels in label_sets]


def decoder_hidden_states(model, inputs: dict, decoder):
    """The decoder's final hidden states [B, T, H] from the model's normal forward (so PEFT, DDP/FSDP and
    autocast wrappers all see it), with the head run on one position per row only (``logits_to_keep=1``)."""
    captured = {}

    def grab(_module, _args, output):
        captured["hidden"] = output[0] if isinstance(output, tuple) else output.last_hidden_state

    handle = decoder.register_forward_hook(grab)
    try:
        model(**inputs, use_cache=False, logits_to_keep=1)
    finally:
        handle.remove()
    return captured["hidden"]
