"""Prompts for the cheaper alternatives to fine-tuning, all run on the *base* model:

* zero-shot: the evaluation prompt as it is;
* few-shot: ``k`` training examples, chosen by embedding similarity to the query, inserted as prior
  user/assistant turns (after the system message, the most similar one closest to the query);
* RAG: the ``k`` document chunks most similar to the query, put into the system message as context.
  Documents are the .txt/.md files of ``--docs``; without it, the training examples themselves
  (question + answer) are the documents.

Prompts stay bounded: chunks are cut to ``CHUNK_WORDS`` words, so RAG adds at most about
k x CHUNK_WORDS x 1.4 tokens, and few-shot about k x (one training example).

Every baseline is a :class:`Baseline` in :data:`REGISTRY`: a builder of prompts (with the tools offered
to each) and the check of what it needs; evaluation settings are validated against the registry's names.
A new baseline is one more entry, not another branch in the runner.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from honing.data.conversation import Message
from honing.errors import ConfigError, DataError
from honing.evaluate.dataset import EvalItem

CHUNK_WORDS = 50
CHUNK_OVERLAP = 10
DOC_SUFFIXES = (".txt", ".md", ".markdown", ".rst")


def check_baselines(names: Sequence[str]) -> tuple[str, ...]:
    out = tuple(n.strip() for n in names if n.strip())
    bad = [n for n in out if n not in REGISTRY]
    if bad:
        raise ConfigError(f"unknown baseline(s) {', '.join(bad)}: choose from {', '.join(REGISTRY)}")
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


def few_shot_prompts(items: Sequence[EvalItem], pool: Sequence[EvalItem], k: int,
                     chosen: np.ndarray | None = None) -> list[tuple[Message, ...]]:
    """Each item's prompt with its ``k`` shots (``chosen``: :func:`select_shots`'s result, when known)
    as earlier turns; a shot's answer keeps its tool calls."""
    chosen = select_shots(items, pool, k) if chosen is None else chosen
    out = []
    for it, idx in zip(items, chosen):
        system, rest = _split_system(it.prompt)
        shots: list[Message] = []
        for j in reversed(idx.tolist()):  # least similar first: the best example sits next to the query
            _, shot_turns = _split_system(pool[j].prompt)
            shots += shot_turns + [pool[j].answer]
        out.append(tuple(system + shots + rest))
    return out


def merge_tools(*tool_lists: Sequence[dict]) -> tuple[dict, ...]:
    """The tools of several examples, each function once (the first definition of a name wins): a shot
    that calls a function the query's tools lack still shows a declared call."""
    seen: dict[str, dict] = {}
    for tools in tool_lists:
        for t in tools:
            seen.setdefault(t["function"]["name"], t)
    return tuple(seen.values())


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


# ---------------------------------------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BaselineInputs:
    """What builders may use besides the evaluated items: the training pool, documents and counts."""

    pool: Sequence[EvalItem]
    docs: str | Path | None
    k_shots: int
    rag_k: int


@dataclass(frozen=True)
class Prompts:
    """One approach's prompts and the tools offered with each (empty for data without tools)."""

    messages: list[tuple[Message, ...]]
    tools: list[tuple[dict, ...]]


@dataclass(frozen=True)
class Baseline:
    name: str
    description: str
    build: Callable[[Sequence[EvalItem], BaselineInputs], Prompts]
    # Why the baseline cannot run with these inputs (a message for the user), or None.
    missing: Callable[[BaselineInputs], str | None]


def _zero_shot(items: Sequence[EvalItem], _inputs: BaselineInputs) -> Prompts:
    return Prompts(zero_shot_prompts(items), [it.tools for it in items])


def _few_shot(items: Sequence[EvalItem], inputs: BaselineInputs) -> Prompts:
    chosen = select_shots(items, inputs.pool, inputs.k_shots)
    tools = [merge_tools(it.tools, *(inputs.pool[j].tools for j in idx.tolist())) for it, idx in zip(items, chosen)]
    return Prompts(few_shot_prompts(items, inputs.pool, inputs.k_shots, chosen), tools)


def _rag(items: Sequence[EvalItem], inputs: BaselineInputs) -> Prompts:
    chunks = document_chunks(inputs.docs) if inputs.docs else training_chunks(inputs.pool)
    return Prompts(rag_prompts(items, chunks, inputs.rag_k), [it.tools for it in items])


REGISTRY: dict[str, Baseline] = {b.name: b for b in (
    Baseline("zero-shot", "the evaluation prompt as it is, on the base model", _zero_shot, lambda _i: None),
    Baseline("few-shot", "k training examples most similar to the query as earlier turns", _few_shot,
             lambda i: None if i.pool else "the few-shot baseline needs training examples: pass --train-data, "
                                           "or drop few-shot from --baselines"),
    Baseline("rag", "the k most similar document chunks (or training answers) in the system message", _rag,
             lambda i: None if i.pool or i.docs else "the RAG baseline needs --docs DIR or training examples "
                                                     "(--train-data)"),
)}
BASELINES = tuple(REGISTRY)
