"""Chunked cross-entropy == plain cross-entropy over full logits, in value and gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_llama

from honing.data.render import IGNORE_INDEX
from honing.train.losses import causal_lm_loss_sum, chunked_cross_entropy_sum


def reference(hidden, weight, labels, softcap=None):
    logits = (hidden @ weight.T).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    shift = labels[:, 1:]
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, weight.shape[0]), shift.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")
    return loss, int((shift != IGNORE_INDEX).sum())


def case(seed=0, b=3, t=37, h=16, v=101):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, t, h, generator=g, requires_grad=True)
    weight = torch.randn(v, h, generator=g, requires_grad=True)
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[torch.rand(b, t, generator=g) < 0.4] = IGNORE_INDEX  # untrained prompt tokens
    return hidden, weight, labels


@pytest.mark.parametrize("chunk", [1, 7, 1024])
@pytest.mark.parametrize("softcap", [None, 5.0])
def test_chunked_equals_full_value_and_gradients(chunk, softcap):
    hidden, weight, labels = case()
    want, n_want = reference(hidden, weight, labels, softcap)
    gh_want, gw_want = torch.autograd.grad(want, (hidden, weight))
    got, n = chunked_cross_entropy_sum(hidden, weight, labels, chunk_tokens=chunk, softcap=softcap)
    gh, gw = torch.autograd.grad(got, (hidden, weight))
    assert n == n_want > 0
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(gh, gh_want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gw, gw_want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("checkpoint_chunks", [True, False])
def test_checkpointing_on_or_off_gives_the_same_gradients(checkpoint_chunks):
    hidden, weight, labels = case(seed=6)
    want, _ = reference(hidden, weight, labels)
    g_want = torch.autograd.grad(want, (hidden, weight))
    got, _ = chunked_cross_entropy_sum(hidden, weight, labels, chunk_tokens=9, checkpoint_chunks=checkpoint_chunks)
    g_got = torch.autograd.grad(got, (hidden, weight))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_untrained_positions_get_no_gradient_and_cost_nothing():
    hidden, weight, labels = case(seed=1)
    labels[:, :] = IGNORE_INDEX
    labels[0, 5] = 3  # the only target: predicted from position 4 of row 0
    loss, n = chunked_cross_entropy_sum(hidden, weight, labels, chunk_tokens=4)
    (gh,) = torch.autograd.grad(loss, hidden)
    assert n == 1
    nz = gh.abs().sum(-1).nonzero().tolist()
    assert nz == [[0, 4]]


def test_no_trained_tokens_gives_zero_with_a_graph():
    hidden, weight, labels = case(seed=2)
    labels[:] = IGNORE_INDEX
    loss, n = chunked_cross_entropy_sum(hidden, weight, labels)
    assert n == 0 and float(loss.detach()) == 0.0
    loss.backward()  # must not raise: the training loop calls backward on every micro-batch
    assert float(hidden.grad.abs().sum()) == 0.0


def test_bf16_hidden_still_sums_in_fp32():
    hidden, weight, labels = case(seed=3)
    want, _ = reference(hidden.detach().bfloat16().float(), weight.detach().bfloat16().float(), labels)
    got, _ = chunked_cross_entropy_sum(hidden.detach().bfloat16(), weight.detach().bfloat16(), labels, chunk_tokens=8)
    assert got.dtype == torch.float32
    # Logits are computed by a bf16 matmul (rounded to bf16), log-softmax in fp32.
    torch.testing.assert_close(got, want, rtol=2e-2, atol=0.0)


def test_causal_lm_loss_sum_matches_transformers_loss_with_peft_and_gradients():
    """Through a real (tiny, seeded) Llama wrapped by PEFT LoRA: our sum / n equals transformers' own
    mean loss, and the LoRA gradients agree."""
    from peft import LoraConfig, get_peft_model

    model = make_tiny_llama(vocab_size=300, seed=4)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    g = torch.Generator().manual_seed(5)
    input_ids = torch.randint(3, 300, (2, 24), generator=g)
    labels = input_ids.clone()
    labels[:, :9] = IGNORE_INDEX
    inputs = {"input_ids": input_ids, "position_ids": torch.arange(24).expand(2, -1)}
    params = [p for p in model.parameters() if p.requires_grad]

    want = model(**inputs, labels=labels, use_cache=False).loss
    g_want = torch.autograd.grad(want, params)
    loss_sum, n = causal_lm_loss_sum(model, inputs, labels, chunk_tokens=5)
    got = loss_sum / n
    g_got = torch.autograd.grad(got, params)
    assert n == 2 * (24 - 9)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_rejects_bad_chunk_size():
    hidden, weight, labels = case()
    with pytest.raises(ValueError, match="chunk_tokens"):
        chunked_cross_entropy_sum(hidden, weight, labels, chunk_tokens=0)


def test_bias_gradient_and_a_scaled_upstream_gradient():
    """The fused path stores d(sum)/d(inputs) in the forward; the backward must scale them by the incoming
    gradient (here the loop's 1/n) and cover a head bias."""
    hidden, weight, labels = case(seed=7)
    bias = torch.randn(weight.shape[0], requires_grad=True)
    logits = (hidden @ weight.T + bias).float()[:, :-1]
    want = F.cross_entropy(logits.reshape(-1, weight.shape[0]), labels[:, 1:].reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum") / 13.0
    g_want = torch.autograd.grad(want, (hidden, weight, bias))
    got, _ = chunked_cross_entropy_sum(hidden, weight, labels, chunk_tokens=6, lm_head_bias=bias)
    g_got = torch.autograd.grad(got / 13.0, (hidden, weight, bias))
    torch.testing.assert_close(got / 13.0, want, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_no_grad_gives_the_same_value_without_a_graph():
    hidden, weight, labels = case(seed=8)
    with_grad, _ = chunked_cross_entropy_sum(hidden, weight, labels, chunk_tokens=10)
    with torch.no_grad():
        without, _ = chunked_cross_entropy_sum(hidden, weight, labels, chunk_tokens=10)
    assert without.grad_fn is None
    torch.testing.assert_close(without, with_grad.detach())


def test_loaded_models_feed_the_head_one_gemm(tiny_llama_dir):
    """transformers slices hidden_states[:, -1:, :] for the head (logits_to_keep). torch's matmul ran such a
    3-D input as expand + bmm, copying the whole head weight first, when the slice was non-contiguous (several
    rows) or one row that requires grad (a one-example micro-batch: batch 1, the replay example): 0.3 s per bf16
    forward on CPU. load_model gives the head a 2-D input; the logits keep their shape and values."""
    from honing.models.loading import flat_head_input, load_model

    model, _tok, _ = load_model(tiny_llama_dir)
    seen = []
    head = model.get_output_embeddings()
    head.register_forward_pre_hook(lambda _m, args: seen.append(args[0].dim()))
    ids = torch.randint(0, 1000, (3, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        last = model(input_ids=ids, logits_to_keep=1).logits
        full = model(input_ids=ids).logits
    assert seen == [2, 2] and last.shape == (3, 1, full.shape[-1])
    torch.testing.assert_close(last[:, 0], full[:, -1])
    model.train()
    for p in model.parameters():  # as under LoRA: a frozen head, gradients flowing into its input
        p.requires_grad_(False)
    model.model.layers[0].mlp.down_proj.weight.requires_grad_(True)
    for rows in (1, 3):
        with torch.profiler.profile() as prof:
            model(input_ids=ids[:rows], logits_to_keep=1).logits.sum().backward()
        assert not [e for e in prof.events() if e.name == "aten::bmm"], rows
    flat_head_input(model)  # idempotent: one hook each, not two
    assert len(head._forward_pre_hooks) == 2 and len(head._forward_hooks) == 1  # ours + this test's recorder
