"""The fused LoRA path (honing.train.fused_lora) computes what PEFT's modules compute, saves less, and
steps aside wherever it does not apply."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import TEST_DEVICE, make_tiny_llama

from honing.train.fused_lora import enable_fused_lora


def _peft(model, **lora):
    from peft import LoraConfig, get_peft_model

    kw = dict(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", init_lora_weights=False)  # noqa: C408
    kw.update(lora)
    torch.manual_seed(1)  # init_lora_weights=False: random A *and* B, so every gradient path is non-zero
    m = get_peft_model(model, LoraConfig(**kw))
    m.config.use_cache = False
    m.train()
    return m


def _pair(model, recompute_mlp=False, **lora):
    """(PEFT model, the same model with fused layers): identical weights."""
    reference = _peft(model, **lora)
    fused = copy.deepcopy(reference)
    assert enable_fused_lora(fused, recompute_mlp=recompute_mlp) == model.config.num_hidden_layers
    return reference, fused


def _loss_and_grads(model, **batch):
    model.zero_grad(set_to_none=True)
    loss = model(**batch, use_cache=False).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


def _assert_same(reference, fused, **batch):
    loss_r, grads_r = _loss_and_grads(reference, **batch)
    loss_f, grads_f = _loss_and_grads(fused, **batch)
    torch.testing.assert_close(loss_f, loss_r, rtol=1e-6, atol=1e-6)
    assert grads_r.keys() == grads_f.keys() and grads_r
    for name in grads_r:
        scale = float(grads_r[name].abs().max())
        assert scale > 0, name  # the comparison below would be vacuous
        # fp32 sums in another order: element errors are relative to the gradient's scale, not the element's
        torch.testing.assert_close(grads_f[name], grads_r[name], rtol=1e-4, atol=2e-5 * scale, msg=name)


def _tiny(vocab=128, layers=2):
    return make_tiny_llama(vocab_size=vocab, layers=layers).to(TEST_DEVICE)


def _batch(vocab=128, b=2, t=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (b, t), generator=g)  # drawn on the CPU: the same ids on every device
    return ids.to(TEST_DEVICE)


@pytest.mark.parametrize("lora", [{}, {"target_modules": ["q_proj", "v_proj"]}, {"use_rslora": True, "r": 8}],
                         ids=["all-linear", "q-v-only", "rslora"])
def test_loss_and_every_adapter_gradient_match_peft(lora):
    reference, fused = _pair(_tiny(), **lora)
    ids = _batch()
    _assert_same(reference, fused, input_ids=ids, labels=ids)


def test_padded_batch_with_attention_mask_matches_peft():
    reference, fused = _pair(_tiny())
    ids = _batch(b=3)
    mask = torch.ones_like(ids)
    mask[1, 17:] = 0
    mask[2, 9:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    _assert_same(reference, fused, input_ids=ids, attention_mask=mask, labels=labels)


def test_packed_rows_match_peft_and_keep_examples_apart():
    """Two examples in one row (position ids restart): the block-diagonal mask reaches the fused layers."""
    reference, fused = _pair(_tiny())
    a, b = _batch(b=1, t=15, seed=1), _batch(b=1, t=11, seed=2)
    ids = torch.cat([a, b], dim=1)
    pos = torch.cat([torch.arange(15), torch.arange(11)])[None].to(TEST_DEVICE)
    labels = ids.clone()
    labels[0, 15] = -100  # the second example's first token is not predicted from the first example
    _assert_same(reference, fused, input_ids=ids, position_ids=pos, labels=labels)
    # isolation: example b's logits are the same packed and alone
    with torch.no_grad():
        packed = fused(input_ids=ids, position_ids=pos, use_cache=False).logits[0, 15:]
        alone = fused(input_ids=b, use_cache=False).logits[0]
    torch.testing.assert_close(packed, alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_rows_take_attention_one_example_at_a_time(monkeypatch, dtype):
    """Three examples in one row: the fused layers attend within each example (fast_ops.packed_attention),
    with the loss and gradients of the whole row under its block-diagonal mask (the lever off)."""
    from honing.models import fast_ops

    calls = []
    original = fast_ops.packed_attention
    monkeypatch.setattr("honing.train.fused_lora.packed_attention",
                        lambda q, k, v, lengths, scale: calls.append(lengths) or original(q, k, v, lengths, scale))
    model = _tiny().to(dtype)
    by_example = _peft(model)
    whole_row = copy.deepcopy(by_example)
    enable_fused_lora(by_example)
    enable_fused_lora(whole_row)
    lengths = [15, 11, 20]
    ids = torch.cat([_batch(b=1, t=n, seed=i) for i, n in enumerate(lengths)], dim=1)
    pos = torch.cat([torch.arange(n) for n in lengths])[None].to(TEST_DEVICE)
    labels = ids.clone()
    labels[0, [15, 26]] = -100
    loss_a, grads_a = _loss_and_grads(by_example, input_ids=ids, position_ids=pos, labels=labels)
    assert calls and all(c == lengths for c in calls)
    monkeypatch.setattr(fast_ops, "PACKED_BY_EXAMPLE", False)
    calls.clear()
    loss_b, grads_b = _loss_and_grads(whole_row, input_ids=ids, position_ids=pos, labels=labels)
    assert not calls
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype is torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    torch.testing.assert_close(loss_a, loss_b, **tol)
    for name in grads_b:
        scale = float(grads_b[name].abs().max())
        assert scale > 0, name
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=tol["rtol"], atol=tol["atol"] * scale, msg=name)


def test_qwen2_with_qkv_bias_matches_peft():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    model = Qwen2ForCausalLM(config)
    assert model.model.layers[0].self_attn.q_proj.bias is not None
    reference, fused = _pair(model)
    ids = _batch()
    _assert_same(reference, fused, input_ids=ids, labels=ids)


def test_bf16_base_with_fp32_adapters_matches_peft():
    """Honing's bf16 mode keeps LoRA weights in fp32 on a bf16 model; the fused path follows PEFT's casts."""
    model = _tiny().to(torch.bfloat16)
    reference = _peft(model)
    for n, p in reference.named_parameters():
        if p.requires_grad:
            p.data = p.data.float()
    fused = copy.deepcopy(reference)
    assert enable_fused_lora(fused) == 2
    ids = _batch()
    loss_r, grads_r = _loss_and_grads(reference, input_ids=ids, labels=ids)
    loss_f, grads_f = _loss_and_grads(fused, input_ids=ids, labels=ids)
    torch.testing.assert_close(loss_f, loss_r, rtol=2e-2, atol=2e-2)
    for name in grads_r:
        # bf16 activations: same computation, different rounding points; compare directions and sizes
        cos = torch.nn.functional.cosine_similarity(grads_f[name].flatten(), grads_r[name].flatten(), dim=0)
        assert cos > 0.99, (name, float(cos))


def test_layers_fall_back_where_the_fused_path_does_not_apply():
    base = _tiny()
    ids = _batch()
    # dropout > 0 or DoRA: nothing is patched
    assert enable_fused_lora(_peft(copy.deepcopy(base), lora_dropout=0.1)) == 0
    assert enable_fused_lora(_peft(copy.deepcopy(base), use_dora=True)) == 0
    # eval mode, no_grad, generation with a KV cache, disabled adapter: the original forward runs
    reference, fused = _pair(copy.deepcopy(base))
    for m in (reference, fused):
        m.eval()
    with torch.no_grad():
        torch.testing.assert_close(fused(input_ids=ids).logits, reference(input_ids=ids).logits)
        out_r = reference.generate(input_ids=ids[:1, :5], max_new_tokens=6, do_sample=False, use_cache=True)
        out_f = fused.generate(input_ids=ids[:1, :5], max_new_tokens=6, do_sample=False, use_cache=True)
    assert torch.equal(out_r, out_f)
    fused.train()
    with fused.disable_adapter():
        disabled = fused(input_ids=ids, use_cache=False).logits
    with torch.no_grad():
        plain = base(input_ids=ids, use_cache=False).logits
    torch.testing.assert_close(disabled, plain, rtol=1e-5, atol=1e-5)


def test_enable_is_idempotent():
    _, fused = _pair(_tiny())
    assert enable_fused_lora(fused) == 2


def _saved_bytes(model, **batch) -> int:
    """Bytes of the distinct storages autograd keeps for the decoder's backward, parameters excluded."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.get_base_model().model(**batch, use_cache=False).last_hidden_state.sum()
    return sum(seen.values())


def test_real_model_matches_peft_and_saves_less(smol_tokenizer):
    """SmolLM2-135M, one 256-token example: same loss and adapter gradients, activation memory < 0.65x."""
    from honing.models.loading import load_model

    model, _, _ = load_model("smollm2-135m-instruct", dtype=torch.float32)
    model.model.layers = model.model.layers[:6]  # 6 of 30 real layers keep the test quick
    model.to(TEST_DEVICE)
    model.config.num_hidden_layers = 6
    reference, fused = _pair(model, r=8, lora_alpha=16)
    ids = _batch(vocab=49152, b=1, t=256, seed=3)
    labels = ids.clone()
    labels[:, :100] = -100
    _assert_same(reference, fused, input_ids=ids, labels=labels)
    ratio = _saved_bytes(fused, input_ids=ids) / _saved_bytes(reference, input_ids=ids)
    assert ratio < 0.62, ratio  # measured 0.59 (deterministic: same shapes every run)


def test_training_loop_takes_the_fused_path_and_trains_as_peft_does(tmp_path):
    """Same run, fused layers vs PEFT's modules: the loop's losses agree step by step."""
    from train_helpers import build_tiny_model_dir, write_arithmetic_chat

    from honing.config import build_config
    from honing.train import train

    build_tiny_model_dir(tmp_path / "tiny")
    write_arithmetic_chat(tmp_path / "train.jsonl", 24)
    lines: dict[bool, list[str]] = {True: [], False: []}
    losses = {}
    for fused in (True, False):
        cfg = build_config(values={
            "model": str(tmp_path / "tiny"), "data": str(tmp_path / "train.jsonl"), "out": str(tmp_path / f"run{fused}"),
            "batch_size": 4, "dtype": "fp32", "tensorboard": False, "seed": 0, "max_steps": 5,
            "learning_rate": 5e-3, "eval_every": 5, "lora": {"fused": fused}})
        losses[fused] = train(cfg, log=lines[fused].append).train_losses
    assert any("fused path on 2 of 2 decoder layers" in line for line in lines[True])
    assert any("PEFT's modules (lora.fused: false)" in line for line in lines[False])
    assert losses[True] == pytest.approx(losses[False], abs=1e-5)
    assert losses[True][4] < losses[True][0] - 0.2


def test_activation_checkpointing_recomputes_fused_layers_with_the_same_gradients():
    """transformers 5 checkpoints inside the class's forward, which the fused path replaces; the fused
    path must checkpoint too (a silent no-op here once cost the memory it promises)."""
    reference, fused = _pair(_tiny(layers=3))
    ids = _batch()
    before = _saved_bytes(fused, input_ids=ids)
    fused.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    after = _saved_bytes(fused, input_ids=ids)
    assert after < 0.3 * before, (after, before)
    _assert_same(reference, fused, input_ids=ids, labels=ids)


def test_mlp_recompute_keeps_the_gradients_and_halves_what_is_saved():
    reference, fused = _pair(_tiny(layers=3))
    ids = _batch()
    keep = _saved_bytes(fused, input_ids=ids)
    enable_fused_lora(fused, recompute_mlp=True)
    recompute = _saved_bytes(fused, input_ids=ids)
    # tiny shapes: hidden 64, MLP 128, so gate+up are 256 of ~600 saved floats per token and layer
    assert recompute < 0.7 * keep, (recompute, keep)
    _assert_same(reference, fused, input_ids=ids, labels=ids)


def test_checkpointing_setting_accepts_booleans():
    from honing.config import build_config

    base = {"data": "x.jsonl"}
    assert build_config(values={**base, "activation_checkpointing": True}).activation_checkpointing == "layers"
    assert build_config(values=base, overrides=["activation_checkpointing=false"]).activation_checkpointing == "off"
    assert build_config(values=base, overrides=["activation_checkpointing=mlp"]).activation_checkpointing == "mlp"
