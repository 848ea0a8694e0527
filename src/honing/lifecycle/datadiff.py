"""What changed between two versions of a dataset, by content fingerprint (line numbers do not matter).

* **unchanged**: the same example (roles, texts, weights: :func:`honing.data.curate.exact_key`) in both;
* **changed**: same prompt (:func:`honing.data.curate.prompt_key`: normalized, system prompt left out),
  different content: typically a corrected answer;
* **added** / **removed**: the rest of the new / old file.

Duplicates count as many times as they occur. Both files are also validated
(:func:`honing.data.validate.validate_file`); a problem of the new version is *new* when the old version
has no problem of the same category on a record with the same content.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from honing.data.conversation import Example
from honing.data.curate import exact_key, prompt_key, prompt_text, trained_answers
from honing.data.formats import Problem, iter_records, read_examples
from honing.data.validate import validate_file

MAX_LISTED = 200  # examples kept per list in reports (the counts stay exact)
PREVIEW_CHARS = 160


@dataclass
class DataDiff:
    old_path: str
    new_path: str
    old_examples: int
    new_examples: int
    unchanged: int
    added: list[dict] = field(default_factory=list)  # {"line", "prompt", "answer"}
    removed: list[dict] = field(default_factory=list)
    changed: list[dict] = field(default_factory=list)  # {"old_line", "new_line", "prompt", "old_answer", "new_answer"}
    counts: dict = field(default_factory=dict)  # exact numbers of added/removed/changed
    # (old answer, new answer, count) over changed examples whose answer differs, most common first
    answer_changes: list[tuple[str, str, int]] = field(default_factory=list)
    new_problems: list[dict] = field(default_factory=list)  # Problem.as_dict() of the new file
    fixed_problems: int = 0  # problems of the old version whose record no longer has them
    old_sha256: str = ""
    new_sha256: str = ""

    @property
    def identical(self) -> bool:
        return self.old_sha256 == self.new_sha256

    def summary(self) -> str:
        c = self.counts
        line = (f"data: {self.old_path} ({self.old_examples} examples) -> {self.new_path} ({self.new_examples}): "
                f"{c['added']} added, {c['removed']} removed, {c['changed']} changed, {self.unchanged} unchanged")
        if self.answer_changes:
            top = ", ".join(f"{a!r} -> {b!r} x{n}" for a, b, n in self.answer_changes[:5])
            line += f"\n  answers changed: {top}"
        errors = sum(p["severity"] == "error" for p in self.new_problems)
        line += (f"\n  validation: {len(self.new_problems)} new problem(s) ({errors} error(s)), "
                 f"{self.fixed_problems} fixed")
        return line

    def to_dict(self) -> dict:
        return {"old": {"path": self.old_path, "examples": self.old_examples, "sha256": self.old_sha256},
                "new": {"path": self.new_path, "examples": self.new_examples, "sha256": self.new_sha256},
                "unchanged": self.unchanged, **{k: v for k, v in self.counts.items()},
                "answer_changes": [{"old": a, "new": b, "count": n} for a, b, n in self.answer_changes],
                "added_examples": self.added, "removed_examples": self.removed, "changed_examples": self.changed,
                "new_problems": self.new_problems, "fixed_problems": self.fixed_problems}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _answer(ex: Example) -> str:
    return "\n".join(trained_answers(ex)) or getattr(ex, "text", "")


def _preview(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 3] + "..."


def _user_prompt(ex: Example) -> str:
    return _preview(prompt_text(ex).removeprefix("user: "))


def match_examples(old: list[Example], new: list[Example]) -> tuple[int, list, list, list]:
    """(unchanged count, added, removed, changed pairs) by fingerprint; lists keep file order."""
    old_by_key: dict[bytes, list[Example]] = defaultdict(list)
    for ex in old:
        old_by_key[exact_key(ex)].append(ex)
    unchanged, new_left = 0, []
    for ex in new:
        bucket = old_by_key.get(exact_key(ex))
        if bucket:
            bucket.pop()
            unchanged += 1
        else:
            new_left.append(ex)
    old_left = sorted((ex for bucket in old_by_key.values() for ex in bucket), key=lambda e: e.line or 0)
    # Of what is left, an old and a new example asking the same prompt are one changed example.
    old_by_prompt: dict[bytes, list[Example]] = defaultdict(list)
    for ex in reversed(old_left):
        old_by_prompt[prompt_key(ex)].append(ex)
    added, changed = [], []
    for ex in new_left:
        bucket = old_by_prompt.get(prompt_key(ex))
        if bucket:
            changed.append((bucket.pop(), ex))
        else:
            added.append(ex)
    removed = sorted((ex for b in old_by_prompt.values() for ex in b), key=lambda e: e.line or 0)
    return unchanged, added, removed, changed


def _record_digests(path: Path) -> dict[int, str]:
    """line -> fingerprint of that record's raw content (parsable or not), to recognise a problem's
    record in the other version whatever its line."""
    out = {}
    for line, value in iter_records(path):
        raw = value.message if isinstance(value, Problem) else json.dumps(value, sort_keys=True, default=str)
        out[line] = hashlib.blake2b(raw.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
    return out


def _problem_ids(report, digests: dict[int, str]) -> list[tuple[tuple, Problem]]:
    return [((p.category, p.file is not None, digests.get(p.line) if p.line is not None else None), p)
            for p in report.problems]


def diff_data(old_path: str | os.PathLike, new_path: str | os.PathLike, data_format: str = "auto",
              tokenizer=None, max_length: int = 2048) -> DataDiff:
    """Diff two dataset files (any format ``hone data`` reads). ``tokenizer``: also check token lengths
    and chat templates in the validation (as ``hone data validate --model`` does)."""
    old_path, new_path = Path(old_path), Path(new_path)
    old = list(read_examples(old_path, data_format, on_error="skip"))
    new = list(read_examples(new_path, data_format, on_error="skip"))
    unchanged, added, removed, changed = match_examples(old, new)
    transitions = Counter((_preview(_answer(a)), _preview(_answer(b))) for a, b in changed
                          if _answer(a) != _answer(b))

    old_report = validate_file(old_path, data_format, tokenizer=tokenizer, max_length=max_length)
    new_report = validate_file(new_path, data_format, tokenizer=tokenizer, max_length=max_length)
    old_ids = Counter(pid for pid, _ in _problem_ids(old_report, _record_digests(old_path)))
    new_problems = []
    for pid, p in _problem_ids(new_report, _record_digests(new_path)):
        if old_ids[pid] > 0:
            old_ids[pid] -= 1
        else:
            new_problems.append(p.as_dict())

    return DataDiff(
        old_path=str(old_path), new_path=str(new_path), old_examples=len(old), new_examples=len(new),
        unchanged=unchanged,
        added=[{"line": e.line, "prompt": _user_prompt(e), "answer": _preview(_answer(e))} for e in added[:MAX_LISTED]],
        removed=[{"line": e.line, "prompt": _user_prompt(e), "answer": _preview(_answer(e))}
                 for e in removed[:MAX_LISTED]],
        changed=[{"old_line": a.line, "new_line": b.line, "prompt": _user_prompt(b), "old_answer": _preview(_answer(a)),
                  "new_answer": _preview(_answer(b))} for a, b in changed[:MAX_LISTED]],
        counts={"added": len(added), "removed": len(removed), "changed": len(changed)},
        answer_changes=[(a, b, n) for (a, b), n in transitions.most_common()],
        new_problems=new_problems, fixed_problems=sum(old_ids.values()),
        old_sha256=_sha256(old_path), new_sha256=_sha256(new_path),
    )
