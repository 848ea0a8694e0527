"""Reading evaluation/training conversations, and splitting them into (prompt, reference).

Uses ``honing.data.formats.read_examples``, so every input format training accepts can be evaluated
(OpenAI chat, prompt/completion, Alpaca, ShareGPT; JSONL/JSON/CSV/Parquet).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from honing.data.conversation import Conversation, Message
from honing.data.formats import read_examples
from honing.errors import DataError


@dataclass(frozen=True)
class EvalItem:
    """One evaluation example: the prompt turns before the final assistant turn, and that turn."""

    prompt: tuple[Message, ...]
    reference: str
    line: int | None = None

    @property
    def query(self) -> str:
        """The text used to look up few-shot examples and documents: the last user message."""
        for m in reversed(self.prompt):
            if m.role == "user":
                return m.content
        return self.prompt[-1].content if self.prompt else ""


def read_conversations(path: str | Path) -> list[Conversation]:
    """All chat examples in ``path`` (other example kinds, e.g. raw text, are skipped)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file not found: {p}")
    return [e for e in read_examples(p) if isinstance(e, Conversation)]


def to_eval_items(conversations: list[Conversation], path: str | Path = "<data>") -> list[EvalItem]:
    items = []
    for c in conversations:
        try:
            prompt, ref = c.prompt_and_reference()
        except ValueError as e:
            where = f"{path}:{c.line}" if c.line else str(path)
            raise DataError(f"{where}: cannot evaluate this example: {e}") from e
        items.append(EvalItem(tuple(prompt), ref, c.line))
    if not items:
        raise DataError(f"{path}: no chat examples ending with an assistant turn to evaluate")
    return items


def read_eval_items(path: str | Path) -> list[EvalItem]:
    return to_eval_items(read_conversations(path), path)
