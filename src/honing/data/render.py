"""Chat rendering: a conversation -> token ids + a loss mask over exactly the assistant turns.

Most chat templates have no ``{% generation %}`` markers, so the assistant spans are found by rendering
prefixes of the conversation with the model's own template (which transformers renders in a Jinja
sandbox):

* ``render(messages[:i], add_generation_prompt=True)`` ends where assistant turn ``i``'s content begins;
* ``render(messages[:i+1])`` ends after that turn's end-of-turn token (trailing whitespace excluded).

The text is then cut at those boundaries and each segment is tokenized on its own. Tokenizing segments
separately (rather than the whole string, then mapping offsets) makes the prompt tokens identical to
what ``apply_chat_template(..., add_generation_prompt=True)`` gives at inference, and makes the mask
exact: no token straddles a boundary. The end-of-turn token (``<|im_end|>``, ``<|eot_id|>``…) is inside
the trained span, so the fine-tuned model learns to stop.

A template without a system role (Gemma 2's raises on one): the system prompt is folded into the first
user turn as ``system + "\n\n" + user``, the rule Gemma 3's own template applies, the same way in
training and in prompts at inference (:func:`fold_system`).

Tool calling: a template that refers to ``tools`` gets them through ``apply_chat_template(tools=...)`` with
the calls and results as Hugging Face's message fields; any other template gets the fallback text format of
:mod:`honing.data.tools`. Either way only assistant turns (their text and their calls) are trained: the
tool schemas and the tool results are context.
"""

from __future__ import annotations

from dataclasses import dataclass

from honing.data.conversation import Conversation, LabeledExample, Message, PreferencePair, RawText
from honing.data.tools import template_messages

IGNORE_INDEX = -100


class TemplateError(ValueError):
    """The chat template cannot render this conversation in a prefix-consistent way."""


@dataclass
class RenderedExample:
    """Token ids and the per-token loss mask (True = the model is trained to predict this token)."""

    input_ids: list[int]
    loss_mask: list[bool]
    truncated: bool = False
    full_length: int = 0  # length before truncation

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def trained_tokens(self) -> int:
        return sum(self.loss_mask)

    def labels(self) -> list[int]:
        """Causal-LM labels (unshifted, as transformers expects): ignored where the mask is False."""
        return [t if m else IGNORE_INDEX for t, m in zip(self.input_ids, self.loss_mask)]


_SYSTEM_ROLE: dict[str, bool] = {}  # chat template text -> does it render a system message


def accepts_system_role(tokenizer) -> bool:
    """Whether the chat template renders a leading system message (Gemma 2's raises instead)."""
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else repr(tokenizer.chat_template)
    if template not in _SYSTEM_ROLE:
        probe = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
        from jinja2 import TemplateError as JinjaError  # what the template's raise_exception raises

        try:
            tokenizer.apply_chat_template(probe, tokenize=False)
            _SYSTEM_ROLE[template] = True
        except JinjaError:
            tokenizer.apply_chat_template(probe[1:], tokenize=False)  # a template broken otherwise still raises
            _SYSTEM_ROLE[template] = False
    return _SYSTEM_ROLE[template]


def fold_system(tokenizer, messages: list[dict]) -> list[dict]:
    """``messages`` as the template can render them: a leading system message folded into the first user
    turn (``system + "\n\n" + user``) when the template has no system role."""
    if not messages or messages[0]["role"] != "system" or accepts_system_role(tokenizer):
        return messages
    system, rest = messages[0], list(messages[1:])
    if rest and rest[0]["role"] == "user":
        rest[0] = {**rest[0], "content": f"{system['content']}\n\n{rest[0]['content']}"}
    else:
        rest.insert(0, {"role": "user", "content": system["content"]})
    return rest


def _closing_eos(tokenizer, dicts: list[dict], tool_arg) -> str:
    """The EOS that Phi-3's template appends to every rendering without a generation prompt (after the
    turn's own ``<|end|>``), else "". A conversation's prefix then is not a prefix of the whole, so each
    reply's span ends before it (its ``<|end|>`` is trained; the closing EOS is not)."""
    eos = tokenizer.eos_token
    if not eos or not dicts or dicts[0]["role"] == "assistant":
        return ""
    plain = _render(tokenizer, dicts[:1], add_generation_prompt=False, tools=tool_arg).rstrip()
    with_prompt = _render(tokenizer, dicts[:1], add_generation_prompt=True, tools=tool_arg)
    if plain.endswith(eos) and not with_prompt.startswith(plain) and with_prompt.startswith(plain[: -len(eos)]):
        return eos
    return ""


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool, tools: list[dict] | None = None) -> str:
    if not messages:
        return ""
    extra = {"tools": tools} if tools else {}
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                         **extra)


def _encode(tokenizer, text: str) -> list[int]:
    if not text:
        return []
    # Templates already contain BOS/special tokens as text; do not add them again.
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def assistant_spans(tokenizer, messages: tuple[Message, ...] | list[Message],
                    tools: tuple[dict, ...] = ()) -> tuple[str, list[tuple[int, int]]]:
    """Render ``messages``; return the text and the character spans of trained assistant turns."""
    dicts, tool_arg = template_messages(tokenizer, messages, tools)
    dicts = fold_system(tokenizer, dicts)
    # The fallback format may add a system turn for the tool schemas (message i is then dicts[i + shift]);
    # folding the system prompt into the first user turn removes one.
    shift = len(dicts) - len(messages)
    full = _render(tokenizer, dicts, add_generation_prompt=False, tools=tool_arg)
    closing = _closing_eos(tokenizer, dicts, tool_arg)
    spans: list[tuple[int, int]] = []
    for i, msg in enumerate(messages):
        if msg.role != "assistant" or msg.weight == 0:
            continue
        before = _render(tokenizer, dicts[: i + shift], add_generation_prompt=True, tools=tool_arg)
        through = _render(tokenizer, dicts[: i + shift + 1], add_generation_prompt=False, tools=tool_arg).rstrip()
        if closing and through.endswith(closing):
            through = through[: -len(closing)].rstrip()
        if not full.startswith(before) or not full.startswith(through) or len(through) < len(before):
            raise TemplateError(
                f"the chat template does not render assistant turn {i + 1} as a prefix of the whole "
                "conversation, so its loss mask cannot be located; use a template with {% generation %} "
                "markers or a prefix-consistent one"
            )
        spans.append((len(before), len(through)))
    return full, spans


def render_conversation(tokenizer, conversation: Conversation, max_length: int | None = None) -> RenderedExample:
    """Token ids + loss mask for one conversation (assistant turns with weight 1 are trained)."""
    text, spans = assistant_spans(tokenizer, conversation.messages, conversation.tools)
    ids: list[int] = []
    mask: list[bool] = []
    cursor = 0
    for start, end in spans:
        seg = _encode(tokenizer, text[cursor:start])
        ids += seg
        mask += [False] * len(seg)
        seg = _encode(tokenizer, text[start:end])
        ids += seg
        mask += [True] * len(seg)
        cursor = end
    seg = _encode(tokenizer, text[cursor:])
    ids += seg
    mask += [False] * len(seg)
    return _truncate(ids, mask, max_length)


def render_prompt(tokenizer, messages: tuple[Message, ...] | list[Message], tools: tuple[dict, ...] = ()) -> list[int]:
    """Token ids of a prompt ending with the assistant header, exactly as training saw it (with ``tools``
    declared the same way)."""
    dicts, tool_arg = template_messages(tokenizer, messages, tuple(tools))
    dicts = fold_system(tokenizer, dicts)
    return _encode(tokenizer, _render(tokenizer, dicts, add_generation_prompt=True, tools=tool_arg))


def render_raw_text(tokenizer, item: RawText, max_length: int | None = None) -> RenderedExample:
    """Continued pre-training: every token is trained, and an EOS marks the document's end."""
    ids = _encode(tokenizer, item.text)
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return _truncate(ids, [True] * len(ids), max_length)


def render_preference(
    tokenizer, pair: PreferencePair, max_length: int | None = None
) -> tuple[RenderedExample, RenderedExample]:
    """(chosen, rejected) renderings sharing the same prompt; only the reply is in each mask."""
    chosen = Conversation(pair.prompt + (Message("assistant", pair.chosen),), line=pair.line, tools=pair.tools)
    rejected = Conversation(pair.prompt + (Message("assistant", pair.rejected),), line=pair.line, tools=pair.tools)
    return render_conversation(tokenizer, chosen, max_length), render_conversation(tokenizer, rejected, max_length)


def render_example(tokenizer, example, max_length: int | None = None) -> RenderedExample:
    """Render a Conversation or RawText (preference pairs have two renderings; see render_preference)."""
    if isinstance(example, Conversation):
        return render_conversation(tokenizer, example, max_length)
    if isinstance(example, RawText):
        return render_raw_text(tokenizer, example, max_length)
    if isinstance(example, LabeledExample):
        return render_conversation(tokenizer, example.conversation(), max_length)
    raise TypeError(f"cannot render {type(example).__name__} as a single sequence")


def _truncate(ids: list[int], mask: list[bool], max_length: int | None) -> RenderedExample:
    n = len(ids)
    if max_length is not None and n > max_length:
        return RenderedExample(ids[:max_length], mask[:max_length], truncated=True, full_length=n)
    return RenderedExample(ids, mask, truncated=False, full_length=n)


# Markers around trained text in `hone data validate --show` (chosen because chat templates never use them).
TRAINED_OPEN, TRAINED_CLOSE = "⟦", "⟧"


def marked_renderings(tokenizer, example) -> list[tuple[str, str]]:
    """``[(label, text)]``: the example rendered as training sees it, with every trained span between
    :data:`TRAINED_OPEN` and :data:`TRAINED_CLOSE` (the spans are exactly the loss mask's, since each
    segment is tokenized on its own). A preference pair gives its chosen and rejected renderings."""
    if isinstance(example, RawText):
        eos = tokenizer.eos_token or ""
        return [("text", f"{TRAINED_OPEN}{example.text}{eos}{TRAINED_CLOSE}")]
    if isinstance(example, PreferencePair):
        sides = [("chosen", example.chosen), ("rejected", example.rejected)]
        convs = [(side, Conversation(example.prompt + (Message("assistant", reply),), tools=example.tools))
                 for side, reply in sides]
    else:
        convs = [("conversation", example)]
    out = []
    for label, conv in convs:
        text, spans = assistant_spans(tokenizer, conv.messages, conv.tools)
        pieces, cursor = [], 0
        for start, end in spans:
            pieces += [text[cursor:start], TRAINED_OPEN, text[start:end], TRAINED_CLOSE]
            cursor = end
        out.append((label, "".join(pieces) + text[cursor:]))
    return out
