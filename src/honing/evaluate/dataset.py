"""Reading evaluation/training conversations, and splitting them into (prompt, reference).

Uses ``honing.data.formats.read_examples``, so every input format training accepts can be evaluated
(OpenAI chat, prompt/completion, Alpaca, ShareGPT; JSONL/JSON/CSV/Parquet).
"""

from __future__ import annotations

import json
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


# A dataset may say what its evaluation measures in a file beside its data (the shipped examples do):
# ``{"metric": "classification" | "json" | "text", "schema": "schema.json"}``, the schema path relative
# to that file. Auto-detection cannot know, e.g., that 24 distinct answers are labels, not free text.
TASK_DECLARATION = "hone_eval.json"


def read_task_declaration(data_path: str | Path) -> tuple[dict, Path | None]:
    """``({"metric": ..., "schema": Path | None}, declaration path)`` from ``hone_eval.json`` beside
    ``data_path``, or ``({}, None)`` when there is none."""
    path = Path(data_path).parent / TASK_DECLARATION
    if not path.is_file():
        return {}, None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot read the task declaration ({e})") from e
    if not isinstance(raw, dict) or not isinstance(raw.get("metric"), str):
        raise DataError(f"{path}: expected an object with a \"metric\" string (and optionally \"schema\")")
    declared: dict = {"metric": raw["metric"], "schema": None}
    if raw.get("schema") is not None:
        if not isinstance(raw["schema"], str):
            raise DataError(f"{path}: \"schema\" must be a file name relative to {path.parent}")
        declared["schema"] = path.parent / raw["schema"]
    return declared, path
