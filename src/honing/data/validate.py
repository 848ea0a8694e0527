"""`hone data validate`: every problem of a training file, each with its line and category, plus statistics.

One streaming pass: records are read with :mod:`honing.data.formats` (exactly as the trainer reads
them), each is checked, fingerprinted for duplicates (16 bytes per example) and, given a tokenizer,
rendered with the model's chat template to count tokens. Memory is bounded by the number of examples,
never by the file's size; stored problems are capped per category (the counts stay exact).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from honing.data.conversation import Conversation, Example, LabeledExample, PreferencePair, RawText
from honing.data.curate import DuplicateFinder, RepeatedAnswers, prompt_key, trained_answers
from honing.data.formats import CATEGORIES, Problem, RecordParser, container_of, iter_records
from honing.data.render import TemplateError, render_conversation, render_preference, render_raw_text
from honing.data.stats import TRAIN_TOKENS_PER_SECOND, TokenStats

DEFAULT_MAX_LENGTH = 2048
DEFAULT_EPOCHS = 3
# Fine-tuning on fewer examples rarely changes behaviour reliably (OpenAI's minimum is 10 as well).
MIN_EXAMPLES = 10
# A trained answer with fewer non-space characters than this is flagged (e.g. "ok", "yes").
SHORT_ANSWER_CHARS = 5
# Problems kept per category; beyond it only the count grows (a 100 MB file of bad lines stays bounded).
MAX_PROBLEMS_PER_CATEGORY = 1000


@dataclass
class Report:
    """The outcome of validating one file (``problems`` sorted by line; whole-file problems last)."""

    path: str
    format: str | None = None
    unit: str = "line"  # "row" for Parquet
    problems: list[Problem] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)  # category -> exact number, including unstored ones
    stats: dict = field(default_factory=dict)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def error_count(self) -> int:
        return sum(n for c, n in self.counts.items() if CATEGORIES[c][0] == "error")

    @property
    def warning_count(self) -> int:
        return sum(n for c, n in self.counts.items() if CATEGORIES[c][0] == "warning")

    @property
    def ok(self) -> bool:
        return self.error_count == 0

    def add(self, problem: Problem) -> None:
        self.counts[problem.category] += 1
        if self.counts[problem.category] <= MAX_PROBLEMS_PER_CATEGORY:
            self.problems.append(problem)

    def lines(self, severity: str | None = None) -> list[tuple[int | None, str]]:
        """``[(line, category)]``: the compact form tests and scripts compare against."""
        return [(p.line, p.category) for p in self.problems if severity is None or p.severity == severity]

    def to_json(self) -> dict:
        return {
            "path": self.path,
            "format": self.format,
            "unit": self.unit,
            "ok": self.ok,
            "errors": self.error_count,
            "warnings": self.warning_count,
            "counts": dict(sorted(self.counts.items())),
            "problems": [p.as_dict() for p in self.problems],
            "problems_truncated": {c: n - MAX_PROBLEMS_PER_CATEGORY for c, n in self.counts.items()
                                   if n > MAX_PROBLEMS_PER_CATEGORY},
            "stats": self.stats,
        }


def _render(tokenizer, example: Example, max_length: int):
    if isinstance(example, Conversation):
        return [render_conversation(tokenizer, example, max_length)]
    if isinstance(example, PreferencePair):
        return list(render_preference(tokenizer, example, max_length))
    if isinstance(example, LabeledExample):
        return [render_conversation(tokenizer, example.conversation(), max_length)]
    return [render_raw_text(tokenizer, example, max_length)]


def _too_long(example: Example, renderings: list, max_length: int) -> str | None:
    """The too_long message, or None. For a preference pair it names the side(s) that would be cut."""
    if isinstance(example, PreferencePair):
        sides = [f"{side} side {r.full_length} tokens" for side, r in zip(("chosen", "rejected"), renderings)
                 if r.full_length > max_length]
        if sides:
            return (f"the {' and the '.join(sides)} (prompt + reply with the chat template) are over the max length "
                    f"{max_length}; the reply's end would be cut off")
        return None
    full = max(r.full_length for r in renderings)
    if full > max_length:
        return f"{full} tokens with the chat template, over the max length {max_length} (the end would be cut off)"
    return None


def validate_file(
    path: str | os.PathLike,
    format: str = "auto",
    tokenizer=None,
    max_length: int = DEFAULT_MAX_LENGTH,
    epochs: int = DEFAULT_EPOCHS,
    eval_path: str | os.PathLike | None = None,
    min_examples: int = MIN_EXAMPLES,
    parameters: int | None = None,
    tokens_per_second: float = TRAIN_TOKENS_PER_SECOND,
) -> Report:
    """Validate ``path``; never raises for bad content (DataError only for an unreadable file).

    ``tokenizer``: the model's tokenizer (with its chat template); without one, token statistics and the
    ``too_long`` check are skipped. ``parameters``: the model's size, to scale the time estimate.
    ``eval_path``: an evaluation file, checked too, and for prompts that also appear in ``path``.
    """
    report = Report(path=str(path), unit="row" if container_of(path) == "parquet" else "line")
    parser = RecordParser(format)
    duplicates = DuplicateFinder()
    answers = RepeatedAnswers()
    tokens = TokenStats(max_length) if tokenizer is not None else None
    train_prompts: dict[bytes, int] | None = {} if eval_path is not None else None
    kinds: Counter = Counter()
    without_system: list[int] = []  # first lines of conversations lacking a system message (capped)
    n_without_system = n_conversations = 0
    records = 0

    for line, value in iter_records(path):
        if not (isinstance(value, Problem) and value.category == "blank_line"):
            records += 1
        example, problems = parser.parse(line, value)
        for p in problems:
            report.add(p)
        if example is None:
            continue
        kinds[example.kind] += 1
        hit = duplicates.check(example, line)
        if hit is not None:
            category, first = hit
            report.add(Problem(line, category, f"same as line {first}" if category == "duplicate" else
                               f"same as line {first} apart from case, spacing or punctuation"))
        if isinstance(example, Conversation):
            n_conversations += 1
            if not any(m.role == "system" for m in example.messages):
                n_without_system += 1
                if len(without_system) < MAX_PROBLEMS_PER_CATEGORY:
                    without_system.append(line)
        for answer in trained_answers(example):
            if len("".join(answer.split())) < SHORT_ANSWER_CHARS:
                report.add(Problem(line, "short_answer", f"the trained answer {answer.strip()[:20]!r} is very short"))
                break
        answers.add(example, line)
        if train_prompts is not None and not isinstance(example, RawText):
            train_prompts.setdefault(prompt_key(example), line)
        if tokens is not None:
            try:
                renderings = _render(tokenizer, example, max_length)
            except TemplateError as e:
                report.add(Problem(line, "template_error", str(e)))
                continue
            except Exception as e:  # noqa: BLE001 - a template raising on odd content must not stop validation
                report.add(Problem(line, "template_error", f"{type(e).__name__}: {e}"))
                continue
            tokens.add(renderings)
            too_long = _too_long(example, renderings, max_length)
            if too_long:
                report.add(Problem(line, "too_long", too_long))

    n_examples = sum(kinds.values())
    if n_examples < min_examples:
        what = "preference pair(s)" if kinds and set(kinds) == {"preference"} else "example(s)"
        report.add(Problem(None, "too_few_examples", f"{n_examples} valid {what}; fine-tuning needs at "
                                                     f"least {min_examples}"))
    labels = answers.label_set_size(n_examples)
    if labels is not None:
        # A classification task: one-word answers from a fixed set are the point, not a smell.
        report.problems = [p for p in report.problems if p.category != "short_answer"]
        report.counts.pop("short_answer", None)
    for first, count, preview in answers.repeated(n_examples):
        report.add(Problem(first, "repeated_answer", f"the same answer {preview!r} is trained on {count} different "
                                                     f"prompts (first at line {first}): a canned reply the model "
                                                     "will learn to give to everything"))
    top = answers.dominant(n_examples)
    if top is not None:
        first, count, preview = top
        report.add(Problem(None, "dominant_answer", f"the answer {preview!r} is {100 * count / n_examples:.0f}% of the "
                                                    f"examples ({count} of {n_examples}, first at line {first}): a "
                                                    "model can reach that accuracy by always giving it; balance "
                                                    "the labels or weigh the evaluation"))
    # Only formats that can carry a system message are told to add one.
    can_have_system = parser.format in ("chat", "sharegpt", "vertex")
    if not can_have_system:
        pass
    elif n_conversations and n_without_system == n_conversations:
        report.add(Problem(None, "no_system_message", f"none of the {n_conversations} conversations has a system "
                                                      "message (fine if you will not use one at inference)"))
    elif n_without_system:
        for line in without_system:
            report.add(Problem(line, "no_system_message", "no system message, unlike other conversations"))

    report.format = parser.format
    report.stats = {"records": records, "examples": n_examples, "examples_by_kind": dict(kinds),
                    "answer_labels": labels}
    if tokens is not None:
        report.stats.update(tokens.summary(epochs, parameters, tokens_per_second))
    if eval_path is not None:
        _check_eval(report, Path(eval_path), format, train_prompts or {})
    report.problems.sort(key=lambda p: (p.file is not None, p.line is None, p.line or 0))
    return report


def _check_eval(report: Report, eval_path: Path, format: str, train_prompts: dict[bytes, int]) -> None:
    """Structural problems of the eval file, and eval examples whose prompt also appears in training."""
    parser = RecordParser(format)
    where = str(eval_path)
    n = 0
    for line, value in iter_records(eval_path):
        example, problems = parser.parse(line, value)
        for p in problems:
            report.add(Problem(p.line, p.category, p.message, file=where))
        if example is None or isinstance(example, RawText):
            continue
        n += 1
        first = train_prompts.get(prompt_key(example))
        if first is not None:
            report.add(Problem(line, "eval_leak", f"this eval prompt also appears in the training file at line "
                                                  f"{first}; the eval would measure memorization", file=where))
    report.stats["eval_examples"] = n
