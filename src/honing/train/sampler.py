"""Sampling completions from the policy being trained (reinforcement fine-tuning's rollouts).

One component behind one interface, :class:`Sampler`, so that another engine (vLLM on a GPU) can take its
place without the objective changing. :class:`TorchSampler` decodes with the model itself:

    B prompts, left-padded -> ONE prefill forward with the KV cache (the prompt is computed once)
    -> the cache and the last logits repeated G times (each prompt's prefix shared by its G samples)
    -> B x G rows decoded together, one token per forward, until every row has stopped or the budget ends

Randomness comes from a ``torch.Generator`` the caller seeds (the objective seeds it from the run's seed
and the step), never from torch's global RNG, so a resumed run samples exactly what the uninterrupted one
did and nothing else in the run moves when sampling does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from honing.models.kvcache import cache_keyword, output_cache


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0


class Sampler:
    """``sample(model, prompts, n, params, generator)`` -> for each prompt, ``n`` completions as token ids,
    each ending with its stop token when it stopped (kept: the model must learn to stop) or cut at
    ``params.max_new_tokens``."""

    def sample(self, model, prompts: Sequence[Sequence[int]], n: int, params: SamplingParams,
               generator) -> list[list[list[int]]]:
        raise NotImplementedError


def next_tokens(logits, params: SamplingParams, generator):
    """One token per row of ``logits`` [rows, vocab]: greedy at temperature 0, else temperature and nucleus
    (top_p) sampling drawn from ``generator``."""
    import torch

    if params.temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the top token always stays).
        drop = sorted_probs.cumsum(dim=-1) - sorted_probs >= params.top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        picked = torch.multinomial(sorted_probs, 1, generator=generator)
        return order.gather(-1, picked).squeeze(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class TorchSampler(Sampler):
    """Decoding with the model's own forward and KV cache (any transformers causal LM Honing trains)."""

    def __init__(self, stop_ids: Sequence[int], pad_id: int):
        self.stop_ids = sorted({int(t) for t in stop_ids})
        self.pad_id = int(pad_id)

    def sample(self, model, prompts, n, params, generator):
        import torch

        device = next(model.parameters()).device
        was_training = model.training
        model.eval()  # no dropout; the fused LoRA layers take the original (cache-aware) forward
        try:
            with torch.no_grad():
                rows = self._decode(model, prompts, n, params, generator, device)
        finally:
            model.train(was_training)
        return [rows[i * n:(i + 1) * n] for i in range(len(prompts))]

    def _decode(self, model, prompts, n, params, generator, device) -> list[list[int]]:
        import torch

        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, p in enumerate(prompts):
            input_ids[row, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
            attention[row, width - len(p):] = 1
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        input_ids, attention, positions = input_ids.to(device), attention.to(device), positions.to(device)
        out = model(input_ids=input_ids, attention_mask=attention, position_ids=positions, use_cache=True,
                    logits_to_keep=1)
        cache, key = output_cache(out), cache_keyword(model)
        cache.batch_repeat_interleave(n)  # every prompt's KV cache, once per sample
        logits = out.logits[:, -1].repeat_interleave(n, dim=0)
        attention = attention.repeat_interleave(n, dim=0)
        position = positions[:, -1:].repeat_interleave(n, dim=0)
        stops = torch.tensor(self.stop_ids, dtype=torch.long, device=device)
        done = torch.zeros(logits.shape[0], dtype=torch.bool, device=device)
        tokens = []
        for step in range(params.max_new_tokens):
            token = next_tokens(logits, params, generator).masked_fill(done, self.pad_id)
            tokens.append(token)
            done = done | torch.isin(token, stops)
            if bool(done.all()) or step == params.max_new_tokens - 1:
                break
            attention = torch.cat([attention, torch.ones_like(attention[:, :1])], dim=1)
            position = position + 1
            out = model(input_ids=token.unsqueeze(1), attention_mask=attention, position_ids=position,
                        use_cache=True, **{key: cache})
            cache, logits = output_cache(out), out.logits[:, -1]
        return [self._cut(row) for row in torch.stack(tokens, dim=1).tolist()]

    def _cut(self, row: list[int]) -> list[int]:
        """Up to and including the first stop token."""
        for k, t in enumerate(row):
            if t in self.stop_ids:
                return row[:k + 1]
        return row


__all__ = ["Sampler", "SamplingParams", "TorchSampler", "next_tokens"]
