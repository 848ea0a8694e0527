"""The loss mask covers exactly the assistant turns (with their end-of-turn token), proven token by
token on the default model's template and on Llama-3 and ChatML-with-default-system templates."""

from __future__ import annotations

import copy

import pytest

from honing.data.conversation import Conversation, Message, RawText
from honing.data.render import TemplateError, render_conversation, render_prompt, render_raw_text

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Plain ChatML without a default system prompt (Qwen/OpenHermes style) and with an
# explicit tokenizer-level BOS.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CONV = Conversation(
    (
        Message("system", "Answer in one word."),
        Message("user", "Capital of France?"),
        Message("assistant", "Paris"),
        Message("user", "And of Italy?"),
        Message("assistant", "Rome"),
    )
)


def _trained_text(tok, rendered):
    """Decode the trained tokens as contiguous runs."""
    runs, cur = [], []
    for t, m in zip(rendered.input_ids, rendered.loss_mask):
        if m:
            cur.append(t)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    if cur:
        runs.append(tok.decode(cur))
    return runs


def _with_template(tok, template, extra_special=()):
    t = copy.deepcopy(tok)
    if extra_special:
        t.add_special_tokens({"additional_special_tokens": list(extra_special)})
    t.chat_template = template
    return t


def test_default_template_mask_token_by_token(smol_tokenizer):
    tok = smol_tokenizer
    r = render_conversation(tok, CONV)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    pieces = [(tok.decode([t]), m) for t, m in zip(r.input_ids, r.loss_mask)]
    trained = [p for p, m in pieces if m]
    # Exactly: "Paris", <|im_end|>, "Rome", <|im_end|> (each answer is one token in this vocabulary)
    assert trained == ["Paris", "<|im_end|>", "Rome", "<|im_end|>"]
    # The end-of-turn token is trained right after each answer, and nothing after it on that line.
    idx = [i for i, (_, m) in enumerate(pieces) if m]
    assert r.input_ids[idx[1]] == im_end and r.input_ids[idx[3]] == im_end
    assert r.input_ids == tok.apply_chat_template(CONV.as_dicts(), tokenize=True, return_dict=True)["input_ids"]


def test_prompt_tokens_match_inference(smol_tokenizer):
    tok = smol_tokenizer
    r = render_conversation(tok, CONV)
    prompt = render_prompt(tok, CONV.messages[:-1])
    assert r.input_ids[: len(prompt)] == prompt
    assert not any(r.loss_mask[len(prompt) - 3 : len(prompt)])  # header is not trained
    assert r.loss_mask[len(prompt)]  # the first answer token is


def test_weight_zero_turn_not_trained(smol_tokenizer):
    msgs = list(CONV.messages)
    msgs[2] = Message("assistant", "Paris", weight=0)
    r = render_conversation(smol_tokenizer, Conversation(tuple(msgs)))
    assert _trained_text(smol_tokenizer, r) == ["Rome<|im_end|>"]


def test_default_system_prompt_is_context_only(smol_tokenizer):
    conv = Conversation((Message("user", "Hi"), Message("assistant", "Hello! How can I help?")))
    r = render_conversation(smol_tokenizer, conv)
    full = smol_tokenizer.decode(r.input_ids)
    assert "You are a helpful AI assistant named SmolLM" in full  # the template injected it
    assert _trained_text(smol_tokenizer, r) == ["Hello! How can I help?<|im_end|>"]


def test_llama3_template_mask(smol_tokenizer):
    tok = _with_template(smol_tokenizer, LLAMA3_TEMPLATE, ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"])
    r = render_conversation(tok, CONV)
    assert _trained_text(tok, r) == ["Paris<|eot_id|>", "Rome<|eot_id|>"]
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    trained_ids = [t for t, m in zip(r.input_ids, r.loss_mask) if m]
    assert trained_ids.count(eot) == 2 and trained_ids[-1] == eot
    # everything else (bos, headers, system, user turns) is untrained
    assert sum(r.loss_mask) == len(trained_ids) == len(tok("Paris", add_special_tokens=False)["input_ids"]) + len(
        tok("Rome", add_special_tokens=False)["input_ids"]) + 2


def test_chatml_template_mask_multi_turn(smol_tokenizer):
    tok = _with_template(smol_tokenizer, CHATML_TEMPLATE)
    conv = Conversation((Message("user", "a"), Message("assistant", "first answer"), Message("user", "b"),
                         Message("assistant", "second answer")))
    r = render_conversation(tok, conv)
    assert _trained_text(tok, r) == ["first answer<|im_end|>", "second answer<|im_end|>"]
    assert not r.loss_mask[0]


def test_truncation_reports(smol_tokenizer):
    r = render_conversation(smol_tokenizer, CONV, max_length=10)
    assert r.truncated and len(r) == 10 and r.full_length > 10


def test_raw_text_all_trained_with_eos(smol_tokenizer):
    r = render_raw_text(smol_tokenizer, RawText("Domain text about turbines."))
    assert all(r.loss_mask) and r.input_ids[-1] == smol_tokenizer.eos_token_id


def test_non_prefix_template_is_a_clear_error(smol_tokenizer):
    # A template that renders the last assistant turn differently from earlier ones breaks prefixes.
    weird = (
        "{% for message in messages %}{% if loop.last %}{{ '[LAST]' }}{% endif %}"
        "{{ message['role'] + ': ' + message['content'] + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    )
    tok = _with_template(smol_tokenizer, weird)
    with pytest.raises(TemplateError, match="assistant turn"):
        render_conversation(tok, CONV)
