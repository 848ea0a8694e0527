"""From production back to training: stored chat completions with feedback become a training file.

Three kinds, one per file (a training run has one objective):

=====  ====================================================================  ================================
kind   from                                                                  record
=====  ====================================================================  ================================
sft    a corrected answer (and, with ``approved``, a thumbs-up answer)       ``{"messages": [..., answer]}``
kto    every rated answer (label: up) and every correction (label: true)     TRL's unpaired
                                                                             ``{"prompt", "completion", "label"}``
dpo    a correction against the model's own answer                           ``{"prompt", "chosen", "rejected"}``
=====  ====================================================================  ================================

Nothing goes into a file unchecked: every record passes the same parser the trainer uses, exact and
near-duplicates are dropped (``honing.data.curate``), so are examples whose prompt appears in the
evaluation set (leakage), and the written file must pass ``hone data validate`` before it appears at
its path (atomically; on failure nothing is written). Each record keeps the stored completion's id
(``id``, ignored by the reader) so an example can be traced back to the request it came from.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from honing.data.curate import CurationSummary, dedupe, prompt_key
from honing.data.formats import RecordParser, read_examples
from honing.data.validate import MIN_EXAMPLES, validate_file
from honing.errors import DataError
from honing.fileio import write_text_atomic

KINDS = ("sft", "kto", "dpo")
FORMAT = {"sft": "chat", "kto": "unpaired", "dpo": "preference"}
MESSAGE_KEYS = ("role", "content", "name", "tool_calls", "tool_call_id")


@dataclass(frozen=True)
class Traffic:
    """One stored chat completion, as far as training needs it."""

    id: str
    model: str
    messages: tuple[dict, ...]  # the request's messages, as sent
    answer: str  # the model's answer (choice 0: the one feedback refers to)
    rating: str | None = None  # up | down | None
    correction: str | None = None
    metadata: dict = field(default_factory=dict)
    tools: tuple[dict, ...] = ()  # the request's tools (kept with sft records; the pair formats have none)


def _text(content) -> str:
    if isinstance(content, list):  # content parts: the text parts, joined (as the server rendered them)
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""


def prompt_of(t: Traffic) -> list[dict]:
    out = []
    for m in t.messages:
        msg = {k: m[k] for k in MESSAGE_KEYS if m.get(k) is not None}
        msg["role"] = "system" if m["role"] == "developer" else m["role"]
        # an assistant turn that only calls tools has no content (null, as in OpenAI's files)
        msg["content"] = None if m.get("content") is None and m.get("tool_calls") else _text(m.get("content"))
        out.append(msg)
    return out


def _same(a: str, b: str) -> bool:
    return " ".join(a.split()) == " ".join(b.split())


def records_for(t: Traffic, kind: str, approved: bool = False) -> Iterator[dict]:
    """The training records one stored completion gives (none when its feedback says nothing for ``kind``)."""
    prompt, fix = prompt_of(t), t.correction
    tag = {"id": t.id, "metadata": {"source": "traffic", "model": t.model}}
    if kind == "sft":
        answer = fix or (t.answer if approved and t.rating == "up" else None)
        if answer:
            yield {**tag, "messages": [*prompt, {"role": "assistant", "content": answer}],
                   **({"tools": list(t.tools)} if t.tools else {})}
    elif kind == "kto":
        if t.rating in ("up", "down"):
            yield {**tag, "prompt": prompt, "completion": [{"role": "assistant", "content": t.answer}],
                   "label": t.rating == "up"}
        if fix and not _same(fix, t.answer):
            yield {**tag, "prompt": prompt, "completion": [{"role": "assistant", "content": fix}], "label": True}
    elif kind == "dpo":
        if fix and not _same(fix, t.answer):
            yield {**tag, "prompt": prompt, "chosen": fix, "rejected": t.answer}
    else:
        raise DataError(f"kind: {kind!r} is not one of {', '.join(KINDS)}")


@dataclass
class TrafficSummary:
    kind: str
    stored_completions: int = 0  # considered
    records: int = 0  # candidate training records built from them
    invalid: int = 0
    duplicates: int = 0
    near_duplicates: int = 0
    leaked: int = 0  # prompts that are in the evaluation set
    kept: int = 0
    path: str | None = None
    problems: list[dict] = field(default_factory=list)  # what the parser said about dropped records
    validation: dict | None = None

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _parsed(records: list[dict], kind: str, summary: TrafficSummary) -> Iterator:
    parser = RecordParser(FORMAT[kind])
    for line, rec in enumerate(records, start=1):
        example, problems = parser.parse(line, rec)
        if example is None:
            summary.invalid += 1
            summary.problems += [{**p.as_dict(), "id": rec["id"]} for p in problems if p.severity == "error"]
            continue
        yield example


def build_dataset(traffic: Iterable[Traffic], kind: str, out: str | Path, *, eval_path: str | Path | None = None,
                  tokenizer=None, max_length: int = 2048, approved: bool = False,
                  min_examples: int = MIN_EXAMPLES) -> TrafficSummary:
    """Write ``kind`` training records from ``traffic`` to ``out`` (JSONL), curated and validated.

    Raises :class:`DataError` (and writes nothing) when no example survives or the validator finds errors.
    """
    if kind not in KINDS:
        raise DataError(f"kind: {kind!r} is not one of {', '.join(KINDS)}")
    summary = TrafficSummary(kind=kind)
    records: list[dict] = []
    for t in traffic:
        summary.stored_completions += 1
        records += records_for(t, kind, approved)
    summary.records = len(records)
    curation = CurationSummary()
    kept = list(dedupe(_parsed(records, kind, summary), curation, near=True))
    summary.duplicates, summary.near_duplicates = curation.duplicates, curation.near_duplicates
    if eval_path is not None:
        held_out = {prompt_key(ex) for ex in read_examples(eval_path)}
        clean = [ex for ex in kept if prompt_key(ex) not in held_out]
        summary.leaked, kept = len(kept) - len(clean), clean
    summary.kept = len(kept)
    if summary.kept < min_examples:
        raise DataError(f"from-traffic ({kind}): {summary.kept} example(s) left of {summary.records} built from "
                        f"{summary.stored_completions} stored completion(s) ({_removed(summary)}); need at least "
                        f"{min_examples}. Rate or correct more answers (dashboard #/review or POST "
                        "/v1/chat/completions/{id}/feedback).")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Validated under a hidden name with the same extension (the reader goes by it), then renamed into place.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=out.suffix or ".jsonl", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write_text_atomic(tmp, "".join(json.dumps(records[ex.line - 1], ensure_ascii=False) + "\n" for ex in kept))
        report = validate_file(tmp, format=FORMAT[kind], tokenizer=tokenizer, max_length=max_length,
                               eval_path=eval_path, min_examples=min_examples)
        summary.validation = {**report.to_json(), "path": str(out)}
        if not report.ok:
            first = "; ".join(f"line {p.line}: {p.category}: {p.message}" for p in report.errors[:3])
            raise DataError(f"{out}: the built file fails validation ({report.error_count} error(s): {first}); "
                            "nothing was written")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    summary.path = str(out)
    return summary


def _removed(s: TrafficSummary) -> str:
    return (f"removed {s.invalid} invalid, {s.duplicates} duplicate, {s.near_duplicates} near-duplicate, "
            f"{s.leaked} in the eval set")
