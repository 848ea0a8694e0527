"""Ollama packaging: a ``Modelfile`` beside the GGUF file(s).

Ollama does not run Jinja chat templates; its ``TEMPLATE`` is a Go template. The model's template is
translated by recognising its family from what it renders (ChatML: SmolLM2, Qwen2.5, Qwen3; Llama 3 and
3.1+; Mistral's ``[INST]``; Gemma 2/3; Phi-3), emitting that family's Go template, and then *checking* the
translation: both render probe conversations (with and without a system message, several turns) and must
give the same prompt string, or the export stops instead of shipping a model that chats differently.

The reference is the prompt Honing trains and serves under (:func:`honing.data.render.fold_system`
applied, then the Jinja template): for a template without a system role (Gemma 2) the system prompt is
folded into the first user turn, and the Go template folds it the same way. A default system prompt the
Jinja template inserts on its own (SmolLM2's, Qwen2.5's "You are Qwen...") becomes the Modelfile's
``SYSTEM``, which Ollama inserts the same way; a system prompt shared by all the training examples takes
its place, because that is the prompt the model was fine-tuned under. Text the template writes into the
system turn around the system prompt (Llama 3.1+'s "Cutting Knowledge Date ... Today Date ...") is
written into the Go template as rendered on the export day: a Go template cannot format today's date the
way Llama's template does. A BOS the Jinja template writes itself goes into the Go template too unless
llama.cpp adds one (``add_bos``).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from honing.errors import HoningError, ModelError
from honing.export.gotemplate import render_ollama_chat

CHATML = ("{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
          "<|im_start|>assistant\n")
LLAMA3 = ("{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>"
          "{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n")
# Llama 3.1+: a system turn always, the template's own text (PREAMBLE) before the system prompt.
LLAMA31 = ("<|start_header_id|>system<|end_header_id|>\n\nPREAMBLE{{ .System }}<|eot_id|>\n"
           "{{- range .Messages }}{{ if ne .Role \"system\" }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n"
           "{{ .Content }}<|eot_id|>{{ end }}{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n")
# Mistral (v0.3, Nemo): the system prompt goes before the *last* user message only.
MISTRAL = ("{{- range $i, $_ := .Messages }}\n"
           "{{- if eq .Role \"user\" }}[INST]{{ if and $.System (eq (len (slice $.Messages $i)) 1) }}{{ $.System }}\n\n"
           "{{ end }}{{ .Content }}[/INST]\n"
           "{{- else if eq .Role \"assistant\" }}{{ .Content }}EOS\n"
           "{{- end }}\n{{- end }}")
# Gemma: no system role; the system prompt opens the first user turn (message 1 after the system message).
GEMMA = ("{{- range $i, $_ := .Messages }}\n"
         "{{- if eq .Role \"user\" }}<start_of_turn>user\n{{ if and $.System (eq $i 1) }}{{ $.System }}\n\n{{ end }}"
         "{{ .Content }}<end_of_turn>\n"
         "{{ else if eq .Role \"assistant\" }}<start_of_turn>model\n{{ .Content }}<end_of_turn>\n"
         "{{ end }}\n{{- end }}<start_of_turn>model\n")
# Phi-3: an empty system message is left out.
PHI3 = ("{{- range .Messages }}\n"
        "{{- if or (eq .Role \"user\") (eq .Role \"assistant\") (and (eq .Role \"system\") .Content) }}"
        "<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}\n{{- end }}<|assistant|>\n")


@dataclass(frozen=True)
class OllamaChat:
    family: str
    template: str  # Go template for the Modelfile
    default_system: str | None  # what the Jinja template inserts when a chat has no system message
    stops: tuple[str, ...]
    frozen_system_text: bool = False  # the template's own system-turn text (a date) is as of the export


@dataclass(frozen=True)
class ChatFamily:
    name: str
    marker: str  # what the family's rendering of a one-user-turn chat contains
    candidates: Callable[[str, str, object], list[OllamaChat]]  # (first rendering, lead, tokenizer) -> tries


def _system_block(pattern: str, first: str) -> str | None:
    found = re.search(pattern, first, re.DOTALL)
    return found.group(1) if found else None


def _chatml(first, lead, tok):
    default = _system_block(r"<\|im_start\|>system\n(.*?)<\|im_end\|>\n", first)
    return [OllamaChat("chatml", lead + CHATML, default, ("<|im_start|>", "<|im_end|>"))]


def _llama3(first, lead, tok):
    stops = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
    block = _system_block(r"<\|start_header_id\|>system<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>", first)
    tries = [OllamaChat("llama3", lead + LLAMA3, block, stops)]
    if block is not None and "{{" not in block:  # Llama 3.1+: the block's text precedes any system prompt
        tries.append(OllamaChat("llama3", lead + LLAMA31.replace("PREAMBLE", block), None, stops, True))
    return tries


def _mistral(first, lead, tok):
    eos = tok.eos_token or "</s>"
    return [OllamaChat("mistral", lead + MISTRAL.replace("EOS", eos), None, ("[INST]", "[/INST]", eos))]


def _gemma(first, lead, tok):
    return [OllamaChat("gemma", lead + GEMMA, None, ("<start_of_turn>", "<end_of_turn>"))]


def _phi3(first, lead, tok):
    return [OllamaChat("phi3", lead + PHI3, None, ("<|end|>", "<|user|>", "<|assistant|>", "<|endoftext|>"))]


FAMILIES = (
    ChatFamily("chatml", "<|im_start|>user\n", _chatml),
    ChatFamily("llama3", "<|start_header_id|>user<|end_header_id|>\n\n", _llama3),
    ChatFamily("mistral", "[INST]", _mistral),
    ChatFamily("gemma", "<start_of_turn>user\n", _gemma),
    ChatFamily("phi3", "<|user|>\n", _phi3),
)

# Conversations every translation must render identically (contents without edge whitespace: Llama 3's
# and Gemma's Jinja templates trim contents, Go templates do not).
PROBES = (
    [{"role": "user", "content": "Hi there"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?\nExplain."}],
    [{"role": "user", "content": "first"}, {"role": "assistant", "content": "one"},
     {"role": "user", "content": "second"}, {"role": "assistant", "content": "two"},
     {"role": "user", "content": "third, with ünïcode ✓ and `code()`"}],
    [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hello"}],
)


def writes_bos(tokenizer) -> bool:
    """Whether the chat template writes the BOS token itself (Llama 3, Mistral, Gemma do; ChatML, Phi-3 not)."""
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    return bool(tokenizer.bos_token) and "bos_token" in template


def jinja_prompt(tokenizer, messages: list[dict], add_bos: bool) -> str:
    """The prompt Honing trains and serves under (a system prompt folded into the first user turn when the
    template has no system role), as it reaches llama.cpp's tokenizer: a leading BOS the template writes is
    dropped when llama.cpp adds one itself (``add_bos``)."""
    from honing.data.render import fold_system

    text = tokenizer.apply_chat_template(fold_system(tokenizer, list(messages)), tokenize=False,
                                         add_generation_prompt=True)
    bos = tokenizer.bos_token
    if add_bos and writes_bos(tokenizer) and text.startswith(bos):
        text = text[len(bos):]
    return text


def translate_chat_template(tokenizer, add_bos: bool) -> OllamaChat:
    """The Go template (and default SYSTEM) that renders what the tokenizer's chat template renders."""
    if not tokenizer.chat_template:
        raise ModelError("the model has no chat template to translate for Ollama")
    first = jinja_prompt(tokenizer, list(PROBES[0]), add_bos)
    lead = tokenizer.bos_token if writes_bos(tokenizer) and not add_bos else ""
    families = [f for f in FAMILIES if f.marker in first]
    if not families:
        raise ModelError("Ollama export: the model's chat template is none of the families Honing can translate "
                         f"to a Go template ({', '.join(f.name for f in FAMILIES)}); it renders a user turn as "
                         f"{first[:120]!r}")
    mismatches = []
    for family in families:
        for chat in family.candidates(first, lead, tokenizer):
            mismatch = first_mismatch(tokenizer, chat, add_bos)
            if mismatch is None:
                return chat
            mismatches.append(mismatch)
    raise ModelError(f"the model's chat template looks like {families[0].name} but renders differently from "
                     f"Ollama's {families[0].name} template on a probe conversation: {mismatches[0]}")


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
