"""Reinforcement fine-tuning data: OpenAI's RFT format.

    {"messages": [{"role": "developer"|"system"|"user"|"assistant", "content": ...}, ..., {"role": "user", ...}],
     "<any other field>": ...}

The messages are the prompt and end with the user's turn (the model's answer is sampled during training,
not given); every other field of the row is the ``item`` the grader sees (``{{item.<field>}}``). OpenAI's
``developer`` role is rendered as ``system`` (the chat templates Honing trains know that role).

Every problem is reported with its line (file, line, category, message), all of them at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from honing.data.conversation import Message
from honing.data.formats import Problem, iter_records
from honing.errors import DataError

PROMPT_ROLES = {"developer": "system", "system": "system", "user": "user", "assistant": "assistant"}
MAX_REPORTED = 20  # problems listed in one error (the count says how many more)


@dataclass(frozen=True)
class PromptExample:
    """One RFT row: the prompt messages and the grader's ``item`` (the row without ``messages``)."""

    prompt: tuple[Message, ...]
    item: dict = field(compare=False)
    line: int | None = field(default=None, compare=False)

    @property
    def kind(self) -> str:
        return "rft"


def _content_text(content: Any) -> str | None:
    """A message's text: a string, or OpenAI's list of content parts of type text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") in ("text", "input_text")
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    return None


def parse_rft_row(line: int, value: Any) -> tuple[PromptExample | None, list[Problem]]:
    """The example of one record and every problem it has."""
    problems: list[Problem] = []

    def add(category: str, message: str) -> None:
        problems.append(Problem(line, category, message))

    if not isinstance(value, dict):
        add("not_an_object", f"a row must be a JSON object, not {type(value).__name__}")
        return None, problems
    messages = value.get("messages")
    if not isinstance(messages, list) or not messages:
        add("missing_messages", "no 'messages' list (RFT rows hold the prompt's messages, ending with the user's)")
        return None, problems
    prompt = []
    for i, m in enumerate(messages, start=1):
        role = m.get("role") if isinstance(m, dict) else None
        text = _content_text(m.get("content")) if isinstance(m, dict) else None
        if role not in PROMPT_ROLES:
            add("unknown_role", f"message {i} has role {role!r}; expected one of {', '.join(PROMPT_ROLES)}")
        elif text is None:
            add("missing_content", f"message {i} has no text content (a string, or a list of text parts)")
        else:
            prompt.append(Message(PROMPT_ROLES[role], text))
    if isinstance(messages[-1], dict) and messages[-1].get("role") != "user":
        add("prompt_not_ending_with_user", f"the last message is from {messages[-1].get('role')!r}: an RFT "
            "prompt ends with the user's turn (the answer is sampled during training)")
    item = {k: v for k, v in value.items() if k != "messages"}
    return (PromptExample(tuple(prompt), item, line) if not problems else None), problems


def missing_item_fields(examples: list[PromptExample], fields: set[str]) -> list[Problem]:
    """A problem for each row that lacks a top-level field the grader's templates reference."""
    out = []
    for ex in examples:
        missing = sorted(f for f in fields if f not in ex.item)
        if missing:
            out.append(Problem(ex.line, "missing_field", f"the grader references item field(s) "
                               f"{', '.join(repr(f) for f in missing)}, which this row does not have"))
    return out


def check_rft(path: str | os.PathLike, item_fields: set[str] | None = None) -> tuple[list[PromptExample], list[Problem]]:
    """(the good rows, every problem with its line) of an RFT file; ``item_fields``: the fields the grader's
    templates reference, which every row must have."""
    examples, problems = [], []
    for line, value in iter_records(path):
        if isinstance(value, Problem):
            problems.append(value)
            continue
        ex, found = parse_rft_row(line, value)
        problems += found
        if ex is not None:
            examples.append(ex)
    problems += missing_item_fields(examples, item_fields or set())
    return examples, sorted(problems, key=lambda p: (p.line is None, p.line or 0))


def read_rft(path: str | os.PathLike, item_fields: set[str] | None = None) -> list[PromptExample]:
    """Every row of an RFT file; raises DataError listing every problem with its line."""
    examples, problems = check_rft(path, item_fields)
    if problems:
        shown = "\n".join(f"  {path} line {p.line}: {p.category}: {p.message}" for p in problems[:MAX_REPORTED])
        more = f"\n  ... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
        raise DataError(f"{path}: {len(problems)} problem(s) in the RFT data:\n{shown}{more}")
    if not examples:
        raise DataError(f"{path}: no examples")
    return examples


__all__ = ["PromptExample", "check_rft", "missing_item_fields", "parse_rft_row", "read_rft"]
