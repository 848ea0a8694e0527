"""Reading evaluation/training conversations, and splitting them into (prompt, reference).

Uses ``honing.data.formats.read_examples``, so every input format training accepts can be evaluated
(OpenAI chat, prompt/completion, Alpaca, ShareGPT; JSONL/JSON/CSV/Parquet).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from honing.data.conversation import Conversation, Message, ToolCall
from honing.data.formats import read_examples
from honing.data.tools import fallback_messages
from honing.errors import DataError


@dataclass(frozen=True)
class EvalItem:
    """One evaluation example: the prompt turns before the evaluated assistant turn, and that turn.

    ``reference`` is the turn as text: its content, and its tool calls written in the fallback format
    (``honing.data.tools``), what a model without a tools-aware template is trained to write.
    ``reference_message`` keeps the turn itself (few-shot shows it as a turn with ``tool_calls``);
    ``tools`` are the conversation's tool definitions, given to the model with the prompt.
    """

    prompt: tuple[Message, ...]
    reference: str
    line: int | None = None
    reference_message: Message | None = None
    tools: tuple[dict, ...] = field(default=(), hash=False)

    @property
    def answer(self) -> Message:
        """The reference assistant turn (with its tool calls)."""
        return self.reference_message or Message("assistant", self.reference)

    @property
    def reference_calls(self) -> tuple[ToolCall, ...]:
        return self.answer.tool_calls

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


def uses_tools(conversations: list[Conversation]) -> bool:
    """Tool-calling data: some conversation declares tools or has an assistant turn that calls one."""
    return any(c.tools or any(m.tool_calls for m in c.messages) for c in conversations)


def _evaluated_turn(c: Conversation, at_last_call: bool) -> int:
    """Index of the assistant turn to evaluate: the final one, or with ``at_last_call`` the last turn that
    calls tools (an OpenAI function-calling example ends with the text answer to the tool results; the
    call is what a tool-call metric measures), when there is one."""
    if at_last_call:
        calls = [i for i, m in enumerate(c.messages) if m.role == "assistant" and m.tool_calls]
        if calls:
            return calls[-1]
    if not c.messages or c.messages[-1].role != "assistant":
        raise ValueError("conversation does not end with an assistant message")
    return len(c.messages) - 1


def to_eval_items(conversations: list[Conversation], path: str | Path = "<data>",
                  at_last_call: bool = False) -> list[EvalItem]:
    items = []
    for c in conversations:
        try:
            i = _evaluated_turn(c, at_last_call)
        except ValueError as e:
            where = f"{path}:{c.line}" if c.line else str(path)
            raise DataError(f"{where}: cannot evaluate this example: {e}") from e
        turn = c.messages[i]
        text = fallback_messages([turn], ())[0]["content"] if turn.tool_calls else turn.content
        items.append(EvalItem(tuple(c.messages[:i]), text, c.line, turn, c.tools))
    if not items:
        raise DataError(f"{path}: no chat examples ending with an assistant turn to evaluate")
    return items


def read_eval_items(path: str | Path, at_last_call: bool = False) -> list[EvalItem]:
    return to_eval_items(read_conversations(path), path, at_last_call)


# A dataset may say what its evaluation measures in a file beside its data (the shipped examples do):
# ``{"metric": "classification" | "json" | "text" | "tool_call", "schema": "schema.json"}``, the schema path relative
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
