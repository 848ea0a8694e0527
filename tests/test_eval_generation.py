"""Batched greedy generation and reference loss on a tiny random Llama: batching/padding must not
change the answers, and the masked loss must equal transformers' own loss on the same tokens."""

from __future__ import annotations

import pytest
from conftest import make_tiny_llama
from eval_helpers import one_torch_thread  # noqa: F401

from honing.data.conversation import Conversation, Message
from honing.data.render import render_conversation
from honing.evaluate.dataset import EvalItem
from honing.evaluate.generation import _batches, auto_max_new_tokens, generate, reference_loss, stop_token_ids


def _prompts():
    texts = ["hi", "what is the capital of france, in one word please?", "two plus two", "a much longer question " * 6]
    return [(Message("system", "Be brief."), Message("user", t)) for t in texts]


def test_batched_left_padded_generation_equals_one_at_a_time(smol_tokenizer):
    model = make_tiny_llama().eval()
    prompts = _prompts()
    together = generate(model, smol_tokenizer, prompts, max_new_tokens=6)
    alone = [generate(model, smol_tokenizer, [p], max_new_tokens=6).texts[0] for p in prompts]
    assert together.texts == alone
    assert together.prompt_tokens[0] < together.prompt_tokens[3]  # results come back in prompt order
    assert all(0 <= n <= 6 for n in together.new_tokens)
    assert together.latency_per_example > 0


def _force_next_token(model, token_id: int):
    """Make ``token_id`` win every argmax by adding a large bias to the output logits (a forward hook)."""
    import torch

    bias = torch.zeros(model.config.vocab_size)
    bias[token_id] = 100.0
    return model.lm_head.register_forward_hook(lambda _m, _inp, out: out + bias)


def test_generation_stops_at_end_of_turn(smol_tokenizer):
    im_end = smol_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in stop_token_ids(smol_tokenizer)
    model = make_tiny_llama().eval()
    hook = _force_next_token(model, im_end)
    g = generate(model, smol_tokenizer, _prompts()[:2], max_new_tokens=5)
    hook.remove()
    assert g.new_tokens == [0, 0] and g.texts == ["", ""]
    hello = smol_tokenizer("hello", add_special_tokens=False)["input_ids"][0]
    hook = _force_next_token(model, hello)
    g = generate(model, smol_tokenizer, _prompts()[:2], max_new_tokens=5)
    hook.remove()
    assert g.new_tokens == [5, 5] and g.texts[0] == "hello" * 5


def test_batches_respect_the_token_budget():
    lengths = [50, 40, 30, 20, 10]
    batches = list(_batches(list(range(5)), lengths, budget=100, max_batch=8))
    assert [i for b in batches for i in b] == [0, 1, 2, 3, 4]
    for b in batches:
        assert max(lengths[i] for i in b) * len(b) <= 100 or len(b) == 1


def test_reference_loss_equals_transformers_loss_on_the_answer(smol_tokenizer):
    import torch

    model = make_tiny_llama().eval()
    prompt = (Message("system", "Be brief."), Message("user", "Name a colour."))
    item = EvalItem(prompt, "Blue, like the sky.")
    rl = reference_loss(model, smol_tokenizer, [item])
    r = render_conversation(smol_tokenizer, Conversation(prompt + (Message("assistant", item.reference),)))
    ids = torch.tensor([r.input_ids])
    labels = torch.tensor([r.labels()])
    with torch.no_grad():
        expected = model(input_ids=ids, labels=labels).loss.item()
    assert rl.tokens == sum(r.loss_mask[1:])
    assert rl.loss == pytest.approx(expected, rel=1e-4)
    # Two items batched together (different lengths, padded) give the token-weighted mean of each.
    other = EvalItem(prompt, "Red.")
    both = reference_loss(model, smol_tokenizer, [item, other])
    single = reference_loss(model, smol_tokenizer, [other])
    weighted = (rl.loss * rl.tokens + single.loss * single.tokens) / (rl.tokens + single.tokens)
    assert both.loss == pytest.approx(weighted, rel=1e-4)


def test_auto_max_new_tokens_from_reference_lengths(smol_tokenizer):
    # Single-token answers: p95 = 1 -> ceil(1.5) + 8 + 1 = 11.
    assert auto_max_new_tokens(smol_tokenizer, ["os", "os", "os"]) == 11
    long = auto_max_new_tokens(smol_tokenizer, ["word " * 100])
    assert long > 150


def test_shared_prefix_cache_gives_the_same_answers_as_the_plain_path(smol_tokenizer):
    from honing.evaluate.generation import shared_prefix_length

    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert shared_prefix_length([[1], [2]]) == 0
    model = make_tiny_llama().eval()
    system = Message("system", "You classify short questions into one of ten categories, briefly and exactly.")
    prompts = [(system, Message("user", t)) for t in ("hi", "what is two plus two?", "name a colour " * 5, "ok")]
    from honing.data.render import render_prompt
    from honing.evaluate.generation import MIN_SHARED_PREFIX

    assert shared_prefix_length([render_prompt(smol_tokenizer, p) for p in prompts]) > MIN_SHARED_PREFIX + 10
    shared = generate(model, smol_tokenizer, prompts, max_new_tokens=6, batch_tokens=120)  # several batches
    plain = generate(model, smol_tokenizer, prompts, max_new_tokens=6, share_prefix=False)
    assert shared.texts == plain.texts
    assert shared.new_tokens == plain.new_tokens and shared.prompt_tokens == plain.prompt_tokens
