"""Prompts for the cheaper alternatives to fine-tuning, all run on the *base* model:

* zero-shot: the evaluation prompt as it is;
* few-shot: ``k`` training examples, chosen by embedding similarity to the query, inserted as prior
  user/assistant turns (after the system message, the most similar one closest to the query);
* RAG: the ``k`` document chunks most similar to the query, put into the system message as context.
  Documents are the .txt/.md files of ``--docs``; without it, the training examples themselves
  (question + answer) are the documents.

Prompts stay bounded: chunks are cut to ``CHUNK_WORDS`` words, so RAG adds at most about
k x CHUNK_WORDS x 1.4 tokens, and few-shot about k x (one training example).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from honing.data.conversation import Message
from honing.errors import ConfigError, DataError
from honing.evaluate.dataset import EvalItem

BASELINES = ("zero-shot", "few-shot", "rag")
CHUNK_WORDS = 50
CHUNK_OVERLAP = 10
DOC_SUFFIXES = (".txt", ".md", ".markdown", ".rst")


def check_baselines(names: Sequence[str]) -> tuple[str, ...]:
    out = tuple(n.strip() for n in names if n.strip())
    bad = [n for n in out if n not in BASELINES]
    if bad:
        raise ConfigError(f"unknown baseline(s) {', '.join(bad)}: choose from {', '.join(BASELINES)}")
    return out


def zero_shot_prompts(items: Sequence[EvalItem]) -> list[tuple[Message, ...]]:
    return [it.prompt for it in items]


def _split_system(prompt: tuple[Message, ...]) -> tuple[list[Message], list[Message]]:
    system = [m for m in prompt[:1] if m.role == "system"]
    return system, list(prompt[len(system):])


def select_shots(items: Sequence[EvalItem], pool: Sequence[EvalItem], k: int) -> np.ndarray:
    """(len(items), k) pool indices, most similar first; a pool example with the same query text as
    the evaluated item is never chosen (it would leak the answer)."""
    from honing.evaluate.embeddings import embed, top_k

    if not pool:
        raise DataError("few-shot needs training examples: pass --train-data (or evaluate a run directory)")
    queries = [it.query for it in items]
    pool_queries = [p.query for p in pool]
    same = np.array([[q == pq for pq in pool_queries] for q in queries], dtype=bool)
    return top_k(embed(queries), embed(pool_queries), k, exclude=same)


def few_shot_prompts(items: Sequence[EvalItem], pool: Sequence[EvalItem], k: int) -> list[tuple[Message, ...]]:
    chosen = select_shots(items, pool, k)
    out = []
    for it, idx in zip(items, chosen):
        system, rest = _split_system(it.prompt)
        shots: list[Message] = []
        for j in reversed(idx.tolist()):  # least similar first: the best example sits next to the query
            _, shot_turns = _split_system(pool[j].prompt)
            shots += shot_turns + [Message("assistant", pool[j].reference)]
        out.append(tuple(system + shots + rest))
    return out


@dataclass(frozen=True)
class Chunk:
    source: str  # file name (or "train:<line>") the text came from
    text: str


def chunk_text(text: str, source: str, words: int = CHUNK_WORDS, overlap: int = CHUNK_OVERLAP) -> list[Chunk]:
    """Overlapping windows of ``words`` words (the last one may be shorter)."""
    tokens = text.split()
    step = max(1, words - overlap)
    return [Chunk(source, " ".join(tokens[i: i + words])) for i in range(0, max(1, len(tokens) - overlap), step)
            if tokens[i: i + words]]


def document_chunks(docs_dir: str | Path) -> list[Chunk]:
    d = Path(docs_dir)
    if not d.is_dir():
        raise DataError(f"--docs: not a directory: {d}")
    files = sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in DOC_SUFFIXES)
    if not files:
        raise DataError(f"--docs {d}: no {'/'.join(DOC_SUFFIXES)} files to retrieve from")
    chunks: list[Chunk] = []
    for f in files:
        try:
            chunks += chunk_text(f.read_text(encoding="utf-8"), str(f.relative_to(d)))
        except UnicodeDecodeError as e:
            raise DataError(f"--docs: {f} is not UTF-8 text ({e})") from e
    return chunks


def training_chunks(pool: Sequence[EvalItem]) -> list[Chunk]:
    """Without documents, retrieve over the training answers (each with the question it answers)."""
    return [Chunk(f"train:{p.line}", f"{p.query}\nAnswer: {p.reference}") for p in pool]


def rag_prompts(items: Sequence[EvalItem], chunks: Sequence[Chunk], k: int) -> list[tuple[Message, ...]]:
    from honing.evaluate.embeddings import embed, top_k

    if not chunks:
        raise DataError("RAG needs documents (--docs) or training examples (--train-data)")
    queries = [it.query for it in items]
    same = np.array([[c.text.startswith(q + "\n") for c in chunks] for q in queries], dtype=bool)
    chosen = top_k(embed(queries), embed([c.text for c in chunks]), k, exclude=same)
    out = []
    for it, idx in zip(items, chosen):
        system, rest = _split_system(it.prompt)
        context = "\n\n".join(f"[{n + 1}] {chunks[j].text}" for n, j in enumerate(idx.tolist()))
        instructions = system[0].content + "\n\n" if system else ""
        out.append((Message("system", f"{instructions}Context that may help:\n{context}"), *rest))
    return out
