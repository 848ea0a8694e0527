"""Curation: exact and normalized duplicates, answers that repeat, and train/eval leakage.

Everything here keeps a fixed-size digest per example (16 bytes of BLAKE2b) rather than the text, so a
whole file can be checked in one streaming pass with memory proportional to the number of examples, not
their size.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from honing.data.conversation import Conversation, Example, LabeledExample, Message, PreferencePair, RawText

DIGEST_BYTES = 16
_WORD = re.compile(r"\w+")


def digest(text: str) -> bytes:
    """A 16-byte fingerprint of ``text`` (surrogates are passed through so this never raises)."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=DIGEST_BYTES).digest()


def normalize(text: str) -> str:
    """Case-folded, punctuation removed, whitespace collapsed: "Hello,  World!" -> "hello world"."""
    # One findall over the words is about twice as fast as substituting the punctuation away.
    return " ".join(_WORD.findall(text.casefold()))


def _message_fields(m: Message, *extra) -> list:
    # Tool calls and result ids only when present, so plain conversations keep their fingerprints.
    calls = [[c.id, c.name, c.arguments] for c in m.tool_calls] if m.tool_calls or m.tool_call_id else []
    return [m.role, m.content, *extra] + ([calls, m.tool_call_id] if calls or m.tool_call_id else [])


def _fields(example: Example) -> list:
    if isinstance(example, LabeledExample):
        return [[[m.role, m.content] for m in example.prompt], example.completion, example.label]
    tools = [list(example.tools)] if not isinstance(example, RawText) and example.tools else []
    if isinstance(example, Conversation):
        return [_message_fields(m, m.weight) for m in example.messages] + tools
    if isinstance(example, PreferencePair):
        return [[_message_fields(m) for m in example.prompt], example.chosen, example.rejected] + tools
    return [example.text]


def exact_key(example: Example) -> bytes:
    """Fingerprint of the example's content (roles, texts, weights); ids and metadata do not count."""
    return digest(example.kind + json.dumps(_fields(example), ensure_ascii=False))


def normalized_key(example: Example) -> bytes:
    """Fingerprint after :func:`normalize` on every text: catches copies differing only in case/spacing."""
    def norm(v):
        if isinstance(v, str):
            return normalize(v)
        if isinstance(v, list):
            return [norm(x) for x in v]
        return v

    return digest(example.kind + json.dumps(norm(_fields(example)), ensure_ascii=False))


def prompt_text(example: Example) -> str:
    """What a model is asked: the messages before the last assistant turn (a preference pair's prompt; a
    raw text's whole text), as one string."""
    if isinstance(example, Conversation):
        last = max((i for i, m in enumerate(example.messages) if m.role == "assistant"), default=len(example.messages))
        return "\n".join(f"{m.role}: {m.trained_text()}" for m in example.messages[:last] if m.role != "system")
    if isinstance(example, PreferencePair):
        return "\n".join(f"{m.role}: {m.trained_text()}" for m in example.prompt if m.role != "system")
    if isinstance(example, LabeledExample):
        return "\n".join(f"{m.role}: {m.content}" for m in example.prompt if m.role != "system")
    return example.text


def prompt_key(example: Example) -> bytes:
    """Normalized fingerprint of :func:`prompt_text` (system prompts are left out: they are shared)."""
    return digest(normalize(prompt_text(example)))


def trained_answers(example: Example) -> list[str]:
    """The texts the model is trained to produce (assistant turns with weight 1; a pair's chosen reply)."""
    if isinstance(example, Conversation):
        return [m.trained_text() for m in example.messages if m.role == "assistant" and m.weight == 1]
    if isinstance(example, PreferencePair):
        return [example.chosen]
    if isinstance(example, LabeledExample):  # an undesirable reply is trained away from, not towards
        return [example.completion] if example.label else []
    return []


@dataclass
class DuplicateFinder:
    """Remembers each example's exact and normalized fingerprint with the line it was first seen on."""

    exact: dict[bytes, int] = field(default_factory=dict)
    normalized: dict[bytes, int] = field(default_factory=dict)

    def check(self, example: Example, line: int) -> tuple[str, int] | None:
        """``("duplicate", first_line)``, ``("near_duplicate", first_line)`` or None; then remembers it."""
        ek, nk = exact_key(example), normalized_key(example)
        if ek in self.exact:
            return "duplicate", self.exact[ek]
        self.exact[ek] = line
        if nk in self.normalized:
            return "near_duplicate", self.normalized[nk]
        self.normalized[nk] = line
        return None


# An answer longer than this (words or characters) is prose, not a label: the same one given to different
# prompts is a canned reply. "I cannot help with that." (5 words) is prose; "Lu (Letter, uppercase)" a label.
LABEL_MAX_WORDS = 4
LABEL_MAX_CHARS = 40


def is_long_answer(text: str) -> bool:
    return len(text.split()) > LABEL_MAX_WORDS or len(text.strip()) > LABEL_MAX_CHARS


@dataclass
class RepeatedAnswers:
    """Counts normalized trained answers, to warn only where repetition is suspicious for the task:

    * the same LONG answer (prose, see :func:`is_long_answer`) in at least ``min_count`` examples and
      ``min_share`` of them: a model trained on one canned reply learns to give it to everything;
    * one SHORT answer (a label) in more than ``dominant_share`` of the examples, when most answers are
      short: a model can score that share by always giving it.

    Short answers that repeat are otherwise the expected shape of a classification file (35 labels over
    40 rows included), so they are not warned about.
    """

    min_count: int = 3
    # 2%: the stdlib's three "Test if the address is a loopback address." summaries in 200 are not a smell
    min_share: float = 0.02
    dominant_share: float = 0.5
    # digest -> [count, first line, long?]; the text is kept only once an answer is seen twice.
    counts: dict[bytes, list] = field(default_factory=dict)
    previews: dict[bytes, str] = field(default_factory=dict)
    short_examples: int = 0  # examples whose trained answers are all short
    # examples with a trained answer at all (a KTO file's undesirable replies are not trained answers)
    answered_examples: int = 0

    def add(self, example: Example, line: int) -> None:
        answers = set(trained_answers(example))
        self.answered_examples += bool(answers)
        self.short_examples += bool(answers) and not any(is_long_answer(a) for a in answers)
        for answer in answers:
            key = digest(normalize(answer))
            entry = self.counts.get(key)
            if entry is None:
                self.counts[key] = [1, line, is_long_answer(answer)]
            else:
                entry[0] += 1
                if key not in self.previews:
                    self.previews[key] = answer[:60]

    def label_set_size(self, total_examples: int, max_labels: int = 50) -> int | None:
        """How many labels, when the short answers look drawn from a label set (a classification task): most
        answered examples have short answers, 2..``max_labels`` distinct ones, some given more than once (a
        few prose answers beside them, as in a KTO file of labels and the model's own replies, are allowed).
        Short answers are the point there, so the short-answer warning is noise. None otherwise."""
        n = sum(not long for _, _, long in self.counts.values())
        answered = min(total_examples, self.answered_examples)
        if not 2 <= n <= max_labels or n >= self.short_examples or self.short_examples < answered / 2:
            return None
        return n

    def repeated(self, total_examples: int) -> list[tuple[int, int, str]]:
        """``[(first_line, count, preview)]`` for long answers over both thresholds, most frequent first."""
        need = max(self.min_count, self.min_share * total_examples)
        out = [(first, n, self.previews.get(k, "")) for k, (n, first, long) in self.counts.items()
               if long and n >= need]
        return sorted(out, key=lambda r: (-r[1], r[0]))

    def dominant(self, total_examples: int, min_examples: int = 10) -> tuple[int, int, str] | None:
        """``(first_line, count, preview)`` of a short answer given in more than ``dominant_share`` of the
        examples of a mostly short-answer file (at least ``min_examples``), else None."""
        if total_examples < min_examples or self.short_examples < total_examples / 2:
            return None
        top = max(((n, first, k) for k, (n, first, long) in self.counts.items() if not long), default=None)
        if top is None or top[0] <= self.dominant_share * total_examples:
            return None
        return top[1], top[0], self.previews.get(top[2], "")


@dataclass
class CurationSummary:
    """What curation kept and removed (``removed_lines`` holds the line of every removed example)."""

    kept: int = 0
    invalid: int = 0
    duplicates: int = 0
    near_duplicates: int = 0
    too_long: int = 0
    removed_lines: list[int] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"kept": self.kept, "invalid": self.invalid, "duplicates": self.duplicates,
                "near_duplicates": self.near_duplicates, "too_long": self.too_long,
                "removed_lines": self.removed_lines}


def dedupe(examples: Iterable[Example], summary: CurationSummary | None = None,
           near: bool = True, count_kept: bool = True) -> Iterator[Example]:
    """Drop exact duplicates (and, with ``near``, normalized duplicates), keeping the first occurrence.
    Counts go into ``summary`` if one is given."""
    finder = DuplicateFinder()
    summary = summary if summary is not None else CurationSummary()
    for n, ex in enumerate(examples, start=1):
        hit = finder.check(ex, ex.line if ex.line is not None else n)
        if hit is not None and (hit[0] == "duplicate" or near):
            if hit[0] == "duplicate":
                summary.duplicates += 1
            else:
                summary.near_duplicates += 1
            if ex.line is not None:
                summary.removed_lines.append(ex.line)
            continue
        summary.kept += count_kept
        yield ex


def find_leaks(train: Iterable[Example], eval_examples: Iterable[Example]) -> list[tuple[int | None, int | None]]:
    """``[(eval_line, train_line)]`` for eval examples whose normalized prompt also appears in train."""
    seen: dict[bytes, int | None] = {}
    for ex in train:
        seen.setdefault(prompt_key(ex), ex.line)
    return [(ex.line, seen[k]) for ex in eval_examples if (k := prompt_key(ex)) in seen]


def curate_file(src, dst, format: str = "auto", tokenizer=None, max_length: int | None = None,
                near: bool = True) -> CurationSummary:
    """Write the clean examples of ``src`` to ``dst`` as canonical JSONL (atomically).

    Removed: records with errors (see ``hone data validate`` for why), exact duplicates, normalized
    duplicates (with ``near``), and, given a tokenizer and ``max_length``, examples longer than that.
    """
    from honing.data.formats import RecordParser, iter_records, write_jsonl
    from honing.data.render import render_example, render_preference

    summary = CurationSummary()

    def valid() -> Iterator[Example]:
        parser = RecordParser(format)
        for line, value in iter_records(src):
            example, problems = parser.parse(line, value)
            if example is not None:
                yield example
            elif any(p.severity == "error" for p in problems):
                summary.invalid += 1
                summary.removed_lines.append(line)

    def short_enough(examples: Iterable[Example]) -> Iterator[Example]:
        for ex in examples:
            if tokenizer is not None and max_length is not None:
                rs = render_preference(tokenizer, ex) if isinstance(ex, PreferencePair) else (
                    render_example(tokenizer, ex),)
                if max(len(r) for r in rs) > max_length:
                    summary.too_long += 1
                    summary.removed_lines.append(ex.line)
                    continue
            summary.kept += 1
            yield ex

    write_jsonl(short_enough(dedupe(valid(), summary, near=near, count_kept=False)), dst)
    summary.removed_lines.sort()
    return summary
