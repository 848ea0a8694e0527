"""Reading the training/eval examples, the seeded held-out split, rendering and the dataset fingerprint."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path

from honing.data.conversation import Conversation, LabeledExample, PreferencePair, RawText
from honing.data.formats import load_examples
from honing.data.rawtext import is_raw_text_source, read_raw_documents, source_sha256
from honing.data.render import RenderedExample, TemplateError, render_example
from honing.errors import DataError


def read_examples(path: str | Path, data_format: str = "auto") -> list:
    """All examples of a data file (every format ``honing.data.formats`` reads), each with its ``.line``.

    The first bad record raises the data module's ``DataError`` naming ``path:line`` and what is wrong.
    """
    p = Path(path)
    if p.exists() and is_raw_text_source(p):  # continued pre-training: .txt/.md files or a folder of them
        return read_raw_documents(p)
    if not p.is_file():
        raise DataError(f"data file not found: {p}")
    examples = load_examples(p, format=data_format)
    if not examples:
        raise DataError(f"{p}: no examples")
    return examples


def file_sha256(path: str | Path) -> str:
    if Path(path).is_dir():
        return source_sha256(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def held_out_split(n: int, fraction: float, max_examples: int, seed: int) -> tuple[list[int], list[int]]:
    """(train indices, eval indices): a seeded shuffle; the eval part is ``fraction`` of n (at least 1
    when fraction > 0 and n >= 2, at most ``max_examples``). Both lists come back sorted so the file order
    is kept inside each part."""
    if fraction <= 0 or n < 2:
        return list(range(n)), []
    k = min(max_examples, max(1, round(n * fraction)), n - 1)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return sorted(order[k:]), sorted(order[:k])


@dataclass
class RenderedSet:
    """Rendered examples ready for batching, and what the run directory records about them."""

    items: list[RenderedExample]
    lines: list[int | None]
    source: dict = field(default_factory=dict)  # {path, sha256, examples, trained_tokens, ...}
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)


def trained_positions(item: RenderedExample) -> int:
    """Tokens the loss is computed on: masked tokens that have a token before them (position 0 has no
    prediction in a causal LM)."""
    return sum(item.loss_mask[1:])


def render_set(tokenizer, examples: list, max_length: int, path: str, sha256: str, objective: str = "sft") -> RenderedSet:
    """Render examples for SFT; examples left with nothing to train on are dropped with a warning."""
    items, lines, warnings = [], [], []
    truncated = dropped = 0
    for ex in examples:
        where = f"{path} line {ex.line}" if getattr(ex, "line", None) else path
        if isinstance(ex, PreferencePair):
            raise DataError(f"{where}: a preference pair cannot be used for objective '{objective}' (use dpo)")
        if isinstance(ex, LabeledExample):
            raise DataError(f"{where}: an example labelled desirable or not cannot be used for objective "
                            f"'{objective}' (use kto)")
        if not isinstance(ex, (Conversation, RawText)):
            raise DataError(f"{where}: unsupported example type {type(ex).__name__}")
        try:
            r = render_example(tokenizer, ex, max_length)
        except TemplateError as e:
            raise DataError(f"{where}: {e}") from e
        truncated += r.truncated
        if trained_positions(r) == 0:
            dropped += 1
            continue
        items.append(r)
        lines.append(getattr(ex, "line", None))
    if truncated:
        warnings.append(f"{path}: {truncated} example(s) longer than max_length={max_length} were truncated")
    if dropped:
        warnings.append(f"{path}: {dropped} example(s) had no trained tokens after truncation and were dropped")
    if not items:
        raise DataError(f"{path}: no example has any token to train on (all assistant turns empty or truncated away)")
    source = {
        "path": str(path),
        "sha256": sha256,
        "examples": len(items),
        "trained_tokens": sum(trained_positions(r) for r in items),
        "tokens": sum(len(r) for r in items),
        "truncated": truncated,
        "dropped": dropped,
    }
    return RenderedSet(items, lines, source, warnings)
