"""The one internal example type the rest of Honing uses.

Every input format (OpenAI chat, prompt/completion, Alpaca, ShareGPT, preference pairs, raw text) is
converted into one of four shapes:

* ``Conversation``: system/user/assistant messages; assistant messages may carry ``weight`` 0 or 1
  (0 = keep as context, do not train on it). Used for supervised fine-tuning.
* ``PreferencePair``: a prompt conversation plus a chosen and a rejected assistant reply (DPO).
* ``RawText``: plain domain text for continued pre-training (every token is trained).
* ``LabeledExample``: a prompt and one reply labelled desirable or undesirable (KTO's unpaired feedback).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = ("system", "user", "assistant")


@dataclass(frozen=True)
class Message:
    role: Role
    content: str
    # Only meaningful on assistant messages: 1 = train on it (default), 0 = context only.
    weight: int = 1

    def as_dict(self) -> dict:
        d = {"role": self.role, "content": self.content}
        if self.role == "assistant" and self.weight != 1:
            d["weight"] = self.weight
        return d


@dataclass(frozen=True)
class Conversation:
    messages: tuple[Message, ...]
    # 1-based line (JSONL/CSV row) the example came from, for error messages; None if built in code.
    line: int | None = field(default=None, compare=False)

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
