"""Ollama packaging: a ``Modelfile`` beside the GGUF file(s).

Ollama does not run Jinja chat templates; its ``TEMPLATE`` is a Go template. The model's template is
translated by recognising its family from what it renders (ChatML: SmolLM2, Qwen2; Llama 3), emitting
that family's Go template, and then *checking* the translation: both templates render probe
conversations (with and without a system message, several turns) and must give the same prompt string,
or the export stops instead of shipping a model that chats differently. A default system prompt the
Jinja template inserts on its own (SmolLM2: "You are a helpful AI assistant named SmolLM...") becomes
the Modelfile's ``SYSTEM``, which Ollama inserts the same way; a system prompt shared by all the
training examples takes its place, because that is the prompt the model was fine-tuned under.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from honing.errors import HoningError, ModelError
from honing.export.gotemplate import render_ollama_chat


@dataclass(frozen=True)
class ChatFamily:
    name: str
    user_turn: str  # how the family renders a user turn with content {c}
    system_block: str  # regex capturing a system turn's content
    go_template: str
    stops: tuple[str, ...]


FAMILIES = (
    ChatFamily(
        "chatml",
        "<|im_start|>user\n{c}<|im_end|>\n",
        r"<\|im_start\|>system\n(.*?)<\|im_end\|>\n",
        "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n",
        ("<|im_start|>", "<|im_end|>"),
    ),
    ChatFamily(
        "llama3",
        "<|start_header_id|>user<|end_header_id|>\n\n{c}<|eot_id|>",
        r"<\|start_header_id\|>system<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>",
        "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>"
        "{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n",
        ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    ),
)

# Conversations every translation must render identically (contents without edge whitespace: Llama 3's
# Jinja template trims contents, Go templates do not).
PROBES = (
    [{"role": "user", "content": "Hi there"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?\nExplain."}],
    [{"role": "user", "content": "first"}, {"role": "assistant", "content": "one"},
     {"role": "user", "content": "second"}, {"role": "assistant", "content": "two"},
     {"role": "user", "content": "third, with ünïcode ✓ and `code()`"}],
)


@dataclass(frozen=True)
class OllamaChat:
    family: str
    template: str  # Go template for the Modelfile
    default_system: str | None  # what the Jinja template inserts when a chat has no system message
    stops: tuple[str, ...]


def jinja_prompt(tokenizer, messages: list[dict], add_bos: bool) -> str:
    """The prompt text the model's own template gives, as it reaches llama.cpp's tokenizer: a leading
    BOS the template writes is dropped when llama.cpp adds one itself (``add_bos``)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    bos = tokenizer.bos_token
    if add_bos and bos and text.startswith(bos):
        text = text[len(bos):]
    return text


def translate_chat_template(tokenizer, add_bos: bool) -> OllamaChat:
    """The Go template (and default SYSTEM) that renders what the tokenizer's chat template renders."""
    if not tokenizer.chat_template:
        raise ModelError("the model has no chat template to translate for Ollama")
    first = jinja_prompt(tokenizer, list(PROBES[0]), add_bos)
    for family in FAMILIES:
        if family.user_turn.format(c=PROBES[0][0]["content"]) not in first:
            continue
        found = re.search(family.system_block, first, re.DOTALL)
        default_system = found.group(1) if found else None
        chat = OllamaChat(family.name, family.go_template, default_system, family.stops)
        mismatch = first_mismatch(tokenizer, chat, add_bos)
        if mismatch is None:
            return chat
        raise ModelError(f"the model's chat template looks like {family.name} but renders differently from "
                         f"Ollama's {family.name} template on a probe conversation: {mismatch}")
    raise ModelError("Ollama export: the model's chat template is neither ChatML nor Llama 3, the families "
                     f"Honing can translate to a Go template; it renders a user turn as {first[:120]!r}")


def first_mismatch(tokenizer, chat: OllamaChat, add_bos: bool, probes=PROBES) -> str | None:
    for messages in probes:
        want = jinja_prompt(tokenizer, list(messages), add_bos)
        got = render_ollama_chat(chat.template, list(messages), chat.default_system)
        if got != want:
            return f"Jinja {want!r} vs Go {got!r}"
    return None


def training_system_prompt(run) -> str | None:
    """The system message every training example starts with, or ``None`` (none, or they differ)."""
    from honing.train.dataset import read_examples

    record = run.record()
    path = ((record.get("dataset") or {}).get("train") or {}).get("path") or (record.get("config") or {}).get("data")
    if not path:
        return None
    try:
        examples = read_examples(path, (record.get("config") or {}).get("data_format", "auto"))
    except (HoningError, OSError, ValueError):  # the data moved or changed since training: the default stands
        return None
    systems = Counter()
    for ex in examples:
        messages = getattr(ex, "messages", None) or getattr(ex, "prompt", None) or ()  # chat | preference pair
        if isinstance(messages, str):
            return None  # raw text (continued pre-training): no chat, no system prompt
        systems[messages[0].content if messages and messages[0].role == "system" else None] += 1
    if len(systems) == 1:
        return next(iter(systems))
    return None


def _quote(text: str) -> str:
    if '"""' in text:
        raise ModelError('Ollama export: a template or system prompt contains """, which a Modelfile cannot quote')
    return f'"""{text}"""'


def modelfile(chat: OllamaChat, gguf_name: str, adapter_name: str | None, system: str | None, note: str) -> str:
    lines = [f"# {note}", f"FROM ./{gguf_name}"]
    if adapter_name:
        lines.append(f"ADAPTER ./{adapter_name}")
    lines.append(f"TEMPLATE {_quote(chat.template)}")
    if system:
        lines.append(f"SYSTEM {_quote(system)}")
    lines += [f'PARAMETER stop "{s}"' for s in chat.stops]
    return "\n".join(lines) + "\n"
