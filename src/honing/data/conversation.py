"""The one internal example type the rest of Honing uses.

Every input format (OpenAI chat, prompt/completion, Alpaca, ShareGPT, preference pairs, raw text) is
converted into one of four shapes:

* ``Conversation``: system/user/assistant/tool messages; assistant messages may carry ``weight`` 0 or 1
  (0 = keep as context, do not train on it) and ``tool_calls``; ``tool`` messages answer one call by its
  id. The conversation may declare ``tools`` (OpenAI's function schemas). Used for supervised fine-tuning.
* ``PreferencePair``: a prompt conversation plus a chosen and a rejected assistant reply (DPO).
* ``RawText``: plain domain text for continued pre-training (every token is trained).
* ``LabeledExample``: a prompt and one reply labelled desirable or undesirable (KTO's unpaired feedback).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]
ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class ToolCall:
    """One function call made by an assistant turn. ``arguments`` is JSON text, as OpenAI's files carry it."""

    id: str
    name: str
    arguments: str

    def parsed_arguments(self) -> Any:
        return json.loads(self.arguments)

    def as_dict(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True)
class Message:
    role: Role
    content: str
    # Only meaningful on assistant messages: 1 = train on it (default), 0 = context only.
    weight: int = 1
    # Assistant messages: the functions it calls (its content may then be empty).
    tool_calls: tuple[ToolCall, ...] = ()
    # Tool messages: the id of the call whose result this is.
    tool_call_id: str | None = None

    def as_dict(self) -> dict:
        d: dict = {"role": self.role}
        if self.content or not self.tool_calls:
            d["content"] = self.content
        if self.tool_calls:
            d["tool_calls"] = [c.as_dict() for c in self.tool_calls]
        if self.tool_call_id is not None:
            d["tool_call_id"] = self.tool_call_id
        if self.role == "assistant" and self.weight != 1:
            d["weight"] = self.weight
        return d

    def trained_text(self) -> str:
        """What the model learns to write for this turn: its content and its calls (for duplicate and
        repeated-answer checks; rendering is :mod:`honing.data.render`'s business)."""
        calls = [json.dumps({"name": c.name, "arguments": c.arguments}, ensure_ascii=False) for c in self.tool_calls]
        return "\n".join([self.content] * bool(self.content) + calls)


def tool_name(tool: dict) -> str:
    """The function name of a tool in OpenAI's shape ``{"type": "function", "function": {"name", ...}}``."""
    return tool["function"]["name"]


@dataclass(frozen=True)
class Conversation:
    messages: tuple[Message, ...]
    # 1-based line (JSONL/CSV row) the example came from, for error messages; None if built in code.
    line: int | None = field(default=None, compare=False)
    # OpenAI tool definitions ({"type": "function", "function": {name, description, parameters}}); dicts
    # are not hashable, so they stay out of the hash (equality still compares them).
    tools: tuple[dict, ...] = field(default=(), hash=False)
    parallel_tool_calls: bool | None = None

    @property
    def kind(self) -> str:
        return "chat"

    def prompt_and_reference(self) -> tuple[tuple[Message, ...], str]:
        """Split for evaluation: everything before the final assistant turn, and that turn's text."""
        if not self.messages or self.messages[-1].role != "assistant":
            raise ValueError("conversation does not end with an assistant message")
        return self.messages[:-1], self.messages[-1].content

    def as_dicts(self) -> list[dict]:
        return [m.as_dict() for m in self.messages]


@dataclass(frozen=True)
class PreferencePair:
    prompt: tuple[Message, ...]
    chosen: str
    rejected: str
    line: int | None = field(default=None, compare=False)
    tools: tuple[dict, ...] = field(default=(), hash=False)  # OpenAI DPO's input.tools

    @property
    def kind(self) -> str:
        return "preference"


@dataclass(frozen=True)
class RawText:
    text: str
    line: int | None = field(default=None, compare=False)

    @property
    def kind(self) -> str:
        return "text"


@dataclass(frozen=True)
class LabeledExample:
    """One prompt and one assistant completion labelled desirable (``label`` True, a thumbs up) or not: the
    unpaired feedback KTO learns from (no second reply to compare with)."""

    prompt: tuple[Message, ...]
    completion: str
    label: bool
    line: int | None = field(default=None, compare=False)

    @property
    def kind(self) -> str:
        return "unpaired"

    def conversation(self) -> Conversation:
        """The prompt followed by the completion as the assistant's reply (how it is rendered)."""
        return Conversation(self.prompt + (Message("assistant", self.completion),), line=self.line)


Example = Conversation | PreferencePair | RawText | LabeledExample


def chat(*turns: tuple[str, str], line: int | None = None) -> Conversation:
    """Convenience for code and tests: ``chat(("user", "hi"), ("assistant", "hello"))``."""
    return Conversation(tuple(Message(role, content) for role, content in turns), line=line)  # type: ignore[arg-type]
