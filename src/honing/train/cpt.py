"""Continued pre-training (``objective: cpt``): an organization's raw domain text, every token trained.

    documents ({"text"} records, .txt files, or a folder of .txt/.md files)
    -> tokens of each document + an end-of-text token -> one stream
    -> blocks of ``block_size`` tokens overlapping by one token

Why the one-token overlap: a causal LM predicts token t+1 from tokens <= t, so the first token of a block is
never a target. Block k holds ``stream[k (B-1) : k (B-1) + B]``: every token of the stream except the very
first is a target exactly once, nothing is truncated away, and the last block is simply shorter.
Attention runs across document boundaries inside a block (as in GPT-style pre-training); the end-of-text
token tells the model where one document stops.

The loss is SFT's (cross-entropy summed over trained tokens, divided by the step's trained tokens), so
the eval loss is the held-out domain text's mean negative log-likelihood per token: perplexity = exp(eval_loss).
"""

from __future__ import annotations

from honing.data.conversation import RawText
from honing.data.rawtext import is_raw_text_source, read_raw_documents, source_sha256
from honing.data.render import RenderedExample
from honing.errors import DataError
from honing.train.dataset import RenderedSet
from honing.train.objectives import SFTObjective


def token_stream(tokenizer, documents: list[RawText]) -> list[int]:
    """All documents' tokens, each document followed by the end-of-text token."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("objective cpt: the tokenizer has no end-of-text (eos) token to separate documents")
    ids: list[int] = []
    for doc in documents:
        ids += tokenizer(doc.text, add_special_tokens=False)["input_ids"]
        ids.append(eos)
    return ids


def blocks(stream: list[int], block_size: int) -> list[list[int]]:
    """Blocks of ``block_size`` tokens overlapping by one: every token after the first is predicted once."""
    if block_size < 2:
        raise ValueError("block_size must be at least 2")
    step = block_size - 1
    out = []
    for start in range(0, max(len(stream) - 1, 0), step):
        out.append(stream[start : start + block_size])
    return out


class CPTObjective(SFTObjective):
    """Cross-entropy on every token of raw-text blocks."""

    name = "cpt"

    def render_set(self, tokenizer, examples, path, sha256):
        bad = next((e for e in examples if not isinstance(e, RawText)), None)
        if bad is not None:
            where = f"{path} line {bad.line}" if getattr(bad, "line", None) else str(path)
            raise DataError(f"{where}: objective 'cpt' needs raw text ({{\"text\": ...}} records, .txt files or a "
                            f"folder of them), not {getattr(bad, 'kind', type(bad).__name__)} examples")
        size = self.config.cpt.block_size or self.config.max_length
        stream = token_stream(tokenizer, examples)
        items = [RenderedExample(b, [True] * len(b), full_length=len(b)) for b in blocks(stream, size)]
        if not items:
            raise DataError(f"{path}: the text has fewer than 2 tokens")
        source = {"path": str(path), "sha256": sha256, "documents": len(examples), "examples": len(items),
                  "blocks": len(items), "block_size": size, "tokens": len(stream),
                  "trained_tokens": len(stream) - 1, "truncated": 0, "dropped": 0}
        # A block spans documents, so it has no source line of its own (the data-order audit shows null).
        return RenderedSet(items, [None] * len(items), source, [])


# Re-exported: raw-text reading lives in honing.data.rawtext (the data layer), CPT renders it.
__all__ = ["CPTObjective", "blocks", "is_raw_text_source", "read_raw_documents", "source_sha256", "token_stream"]
