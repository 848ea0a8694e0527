"""Batched greedy generation and reference-answer loss, for evaluation.

Prompts are tokenized with ``honing.data.render.render_prompt`` (exactly the ids training saw), sorted
by length so a batch holds similar lengths (little padding), left-padded (so every row's next token
sits at the last position) and decoded greedily with the KV cache by ``model.generate``. Decoding
stops at the model's end-of-turn token (``<|im_end|>`` for ChatML) or its EOS.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from honing.data.conversation import Conversation, Message
from honing.data.render import render_conversation, render_prompt
from honing.models.kvcache import cache_keyword, output_cache

# Token budget (prompt tokens x rows) for one generation batch: large enough to keep the matrix
# units busy on CPU, small enough that the KV cache of a 135M model stays well under a GiB.
BATCH_TOKENS = 8192
MAX_BATCH = 64
# Scored positions per output-head call when computing losses (bounds the logits memory).
LOGITS_CHUNK = 1024
# Below this many shared prompt tokens, computing a shared prefix cache is not worth a copy per batch.
MIN_SHARED_PREFIX = 8


@dataclass
class Generations:
    """Greedy completions for a list of prompts, in the prompts' order.

    ``prompt_tokens[i]`` is the prompt length in tokens; ``seconds`` the wall time of the whole call;
    ``latency_per_example`` = seconds / number of prompts (batched throughput, not single-query latency).
    """

    texts: list[str]
    prompt_tokens: list[int]
    new_tokens: list[int]
    seconds: float

    @property
    def latency_per_example(self) -> float:
        return self.seconds / max(1, len(self.texts))

    @property
    def mean_prompt_tokens(self) -> float:
        return sum(self.prompt_tokens) / max(1, len(self.prompt_tokens))


def stop_token_ids(tokenizer) -> list[int]:
    """End-of-turn tokens: the EOS plus common chat end markers the vocabulary has."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    for marker in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>"):
        if marker in vocab:
            ids.add(int(vocab[marker]))
    return sorted(ids)


def auto_max_new_tokens(tokenizer, references: Sequence[str], margin: int = 8, cap: int = 512) -> int:
    """Enough new tokens for nearly every reference: p95 of reference lengths x 1.5 + a margin
    (+1 for the end-of-turn token), capped."""
    import numpy as np

    lengths = [len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in references] or [16]
    return int(min(cap, math.ceil(float(np.percentile(lengths, 95)) * 1.5) + margin + 1))


def _batches(order: list[int], lengths: list[int], budget: int, max_batch: int):
    batch: list[int] = []
    longest = 0
    for i in order:
        longest_if = max(longest, lengths[i])
        if batch and (longest_if * (len(batch) + 1) > budget or len(batch) >= max_batch):
            yield batch
            batch, longest_if = [], lengths[i]
        batch.append(i)
        longest = longest_if
    if batch:
        yield batch


def shared_prefix_length(ids: Sequence[Sequence[int]]) -> int:
    """Length of the token prefix every sequence starts with (e.g. a shared system prompt)."""
    if not ids:
        return 0
    first, n = ids[0], min(len(x) for x in ids)
    for x in ids[1:]:
        k = 0
        while k < n and x[k] == first[k]:
            k += 1
        n = k
    return n


def _prefix_cache(model, prefix: list[int], device):
    """The KV cache of ``prefix`` (batch 1), computed once and copied into every batch."""
    import torch

    out = model(input_ids=torch.tensor([prefix], device=device), use_cache=True, logits_to_keep=1)
    return output_cache(out)


def generate(
    model,
    tokenizer,
    prompts: Sequence[Sequence[Message]],
    max_new_tokens: int,
    batch_tokens: int = BATCH_TOKENS,
    max_batch: int = MAX_BATCH,
    share_prefix: bool = True,
    tools: Sequence[Sequence[dict]] | None = None,
) -> Generations:
    """Greedy completions of ``prompts`` (each a list of messages ending before the assistant turn).
    ``tools[i]``: the tool definitions offered with prompt ``i`` (rendered as training renders them).

    With ``share_prefix``, the token prefix all prompts share (typically the system prompt: most of a
    short classification prompt) is run through the model once; each batch starts from a copy of its
    KV cache. A row is then laid out as ``[shared prefix | left padding | own suffix]``: the padding is
    masked out and position ids come from the attention mask's running sum, so every row sees exactly
    the positions it would see unpadded (tested equal to the plain path).
    """
    import copy

    import torch

    start = time.perf_counter()
    tools = tools or [()] * len(prompts)
    ids = [render_prompt(tokenizer, list(p), tuple(t)) for p, t in zip(prompts, tools)]
    lengths = [len(x) for x in ids]
    # Keep at least one token per prompt outside the prefix: generate needs a non-empty input.
    shared = min(shared_prefix_length(ids), min(lengths, default=1) - 1) if share_prefix and len(ids) > 1 else 0
    if shared < MIN_SHARED_PREFIX:
        shared = 0
    suffix_lengths = [n - shared for n in lengths]
    # Longest first: the first batch hits peak memory early, and similar lengths share a batch.
    order = sorted(range(len(ids)), key=lambda i: -lengths[i])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stops = stop_token_ids(tokenizer)
    texts: list[str] = [""] * len(ids)
    new_counts: list[int] = [0] * len(ids)
    device = next(model.parameters()).device
    with torch.inference_mode():
        prefix_cache = _prefix_cache(model, ids[0][:shared], device) if shared else None
        for batch in _batches(order, lengths, batch_tokens, max_batch):
            width = shared + max(suffix_lengths[i] for i in batch)
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            input_ids[:, :shared] = torch.tensor(ids[batch[0]][:shared])
            attention[:, :shared] = 1
            for row, i in enumerate(batch):
                input_ids[row, width - suffix_lengths[i]:] = torch.tensor(ids[i][shared:])
                attention[row, width - suffix_lengths[i]:] = 1
            extra = {}
            if prefix_cache is not None:
                cache = copy.deepcopy(prefix_cache)
                cache.batch_repeat_interleave(len(batch))
                extra[cache_keyword(model)] = cache
            out = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                do_sample=False,
                max_new_tokens=max_new_tokens,
                eos_token_id=stops,
                pad_token_id=pad,
                use_cache=True,
                # Greedy decoding: silence sampling defaults a generation_config may carry.
                temperature=None,
                top_p=None,
                top_k=None,
                **extra,
            )
            for row, i in enumerate(batch):
                new = out[row, width:].tolist()
                cut = next((k for k, t in enumerate(new) if t in stops), len(new))
                new_counts[i] = cut
                # Keep special tokens a tools-aware template writes around calls (<tool_call> may be one).
                texts[i] = tokenizer.decode(new[:cut], skip_special_tokens=False).strip() if tools[i] else \
                    tokenizer.decode(new[:cut], skip_special_tokens=True).strip()
    return Generations(texts, lengths, new_counts, time.perf_counter() - start)


@dataclass
class ReferenceLoss:
    """Mean cross-entropy (nats per reference token) of the reference answers given their prompts."""

    loss: float
    tokens: int

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss) if self.loss < 50 else float("inf")


def _token_nll_sum(model, sequences: list[list[int]], masks: list[list[bool]], batch_tokens: int) -> tuple[float, int]:
    """Sum of next-token NLL over positions whose *target* token is masked True, and their count.

    Logits are computed only at the scored positions (hidden states gathered first), so the
    vocab-by-tokens logits matrix is never materialized for the whole batch.
    """
    import torch
    import torch.nn.functional as F

    # A PEFT model injects its adapters into the wrapped model's layers, so the unwrapped model computes
    # the adapted outputs (and honours ``disable_adapter()``).
    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = getattr(core, core.base_model_prefix)
    head = core.get_output_embeddings()
    lengths = [len(s) for s in sequences]
    order = sorted(range(len(sequences)), key=lambda i: -lengths[i])
    total, count = 0.0, 0
    with torch.inference_mode():
        for batch in _batches(order, lengths, batch_tokens, MAX_BATCH):
            width = max(lengths[i] for i in batch)
            ids = torch.zeros((len(batch), width), dtype=torch.long)
            attn = torch.zeros((len(batch), width), dtype=torch.long)
            target_mask = torch.zeros((len(batch), width), dtype=torch.bool)
            for row, i in enumerate(batch):
                n = lengths[i]
                ids[row, :n] = torch.tensor(sequences[i])
                attn[row, :n] = 1
                target_mask[row, :n] = torch.tensor(masks[i])
            hidden = decoder(input_ids=ids, attention_mask=attn).last_hidden_state  # (B, T, H)
            # Position t predicts token t+1.
            pred_positions = target_mask[:, 1:]
            h = hidden[:, :-1][pred_positions]  # (N, H)
            targets = ids[:, 1:][pred_positions]  # (N,)
            if targets.numel() == 0:
                continue
            # Chunks of positions: a (chunk, vocab) fp32 logits block stays ~200 MB for a 49k vocab.
            for start in range(0, targets.numel(), LOGITS_CHUNK):
                logits = head(h[start: start + LOGITS_CHUNK]).float()  # (chunk, V)
                total += float(F.cross_entropy(logits, targets[start: start + LOGITS_CHUNK], reduction="sum"))
            count += int(targets.numel())
    return total, count


def reference_loss(model, tokenizer, items, batch_tokens: int = BATCH_TOKENS) -> ReferenceLoss:
    """Loss on each item's reference assistant turn only (earlier assistant turns are context)."""
    seqs, masks = [], []
    for it in items:
        context = tuple(replace(m, weight=0) if m.role == "assistant" else m for m in it.prompt)
        r = render_conversation(tokenizer, Conversation(context + (replace(it.answer, weight=1),), tools=it.tools))
        seqs.append(r.input_ids)
        masks.append(r.loss_mask)
    total, count = _token_nll_sum(model, seqs, masks, batch_tokens)
    return ReferenceLoss(total / count if count else float("nan"), count)


def text_perplexity(model, tokenizer, text: str, window: int = 256, batch_tokens: int = BATCH_TOKENS) -> ReferenceLoss:
    """Perplexity of plain text, cut into non-overlapping ``window``-token pieces (each scored from
    its second token on; a piece's first token has no context)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces = [ids[i: i + window] for i in range(0, len(ids), window)]
    pieces = [p for p in pieces if len(p) > 1]
    total, count = _token_nll_sum(model, pieces, [[True] * len(p) for p in pieces], batch_tokens)
    return ReferenceLoss(total / count if count else float("nan"), count)
