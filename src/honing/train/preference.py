"""Preference tuning: DPO (against a reference model) and SimPO (reference-free), as objectives of the one loop.

    pair (prompt, chosen, rejected) -> two renderings sharing the prompt, loss on the reply tokens only
    micro-batch of B pairs -> ONE forward; each pair is one row segment holding its prompt ONCE:
        [prompt (but its last token) | last prompt token + chosen reply | last prompt token + rejected reply]
    -> summed reply log-probs per sequence (chunked over positions: the [tokens, vocab] logits never exist)
    -> DPO:   logits = (pi_c - pi_r) - (ref_c - ref_r); loss by loss_type (TRL's formulas)
       SimPO: logits = beta x (pi_c / |c| - pi_r / |r|) - gamma; loss = -log sigmoid(logits)

The shared prompt ("shared_prompt" layout, the default): a 4-D attention mask keeps each reply off the other
(a reply attends to the prompt and to itself, causally; pairs packed in one row attend only to their own
tokens) and the position ids of the rejected reply restart where the prompt ends, so every reply token sees
exactly what it sees in its own sequence: same log-probs, same loss and gradients as two sequences
(tests/test_dpo_shared_prompt.py), with the prompt's forward, backward and reference forward done once. The
last prompt token is repeated at the head of each reply segment: its hidden state predicts the reply's first
token, and the labels' one-position shift then stays inside each segment (one token per reply, not a copy of the
prompt). transformers passes a 4-D mask through unchanged (``masking_utils``: "already prepared 4D mask"),
boolean for sdpa (and the fused LoRA layers) and additive for eager; other attention implementations (flash
attention's varlen kernels take no mask) and sliding-window models fall back to the "two_sequences" layout
(prompt + chosen, prompt + rejected, as TRL runs them), which ``setup`` logs with the reason.

The normalizer is one unit per pair: ``loss_sum`` is the sum of the micro-batch's per-pair losses and the
loop divides by the pairs of the whole optimizer step, as it divides SFT's sum by trained tokens.

The reference (DPO): with a fresh LoRA/QLoRA adapter it is the same model with the adapter disabled, run
under ``no_grad`` (no second copy of the weights) the first time a pair is trained, in ``prepare_step``, and
kept on the pair (two floats) for later epochs: the base model does not change while the adapter trains. Otherwise (full fine-tuning, or a run
that starts from an earlier run with ``init_from``, where disabling the adapter would give the wrong
model) the reference log-probs of every train and eval pair are computed once before the first step and
stored in ``<run>/reference_logps.safetensors``; a resumed run reads them back (recomputing them from the
trained weights would move the reference).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

from honing.data.conversation import PreferencePair
from honing.data.render import IGNORE_INDEX, RenderedExample, TemplateError, render_preference
from honing.errors import DataError
from honing.rundir import REFERENCE_LOGPS
from honing.train.dataset import RenderedSet
from honing.train.objectives import LossOutput, Objective
from honing.train.reference import cached_reference

REFERENCE_FILE = REFERENCE_LOGPS  # the name tests and older callers import from here
# Keys of a collated batch the model's forward takes; the rest is the objective's bookkeeping.
MODEL_KEYS = ("input_ids", "attention_mask", "position_ids")
CHUNK_TOKENS = 512
# A frozen output head's gradient computed in the forward (_frozen_head_token_logps); False: the checkpointed
# recompute, kept for tests and benchmarks/dpo_layouts_ab.py to compare against.
FROZEN_HEAD_JACOBIAN = True


@dataclass
class PairItem:
    """A rendered preference pair. ``index``: its position in its set (the key of stored reference
    log-probs); ``ref``: (chosen, rejected) reference log-probs once precomputed."""

    chosen: RenderedExample
    rejected: RenderedExample
    index: int
    ref: tuple[float, float] | None = None

    def __len__(self) -> int:
        return len(self.chosen) + len(self.rejected)

    @property
    def input_ids(self) -> list[int]:  # the loop's mean-length estimate counts both sides
        return self.chosen.input_ids + self.rejected.input_ids

    @property
    def completion_tokens(self) -> int:
        return sum(self.chosen.loss_mask[1:]) + sum(self.rejected.loss_mask[1:])

    @cached_property
    def shared_prefix(self) -> int:
        """Tokens the shared-prompt row holds once (:func:`shared_prefix_length`)."""
        return shared_prefix_length(self.chosen, self.rejected)

    @property
    def shared_length(self) -> int:
        """The pair's tokens in the shared-prompt layout: the whole chosen rendering, then the rejected one
        after the shared prefix."""
        return len(self.chosen) + len(self.rejected) - self.shared_prefix


def shared_prefix_length(chosen: RenderedExample, rejected: RenderedExample) -> int:
    """How many leading tokens of the two renderings go into a shared-prompt row once: their common prefix,
    cut before the first trained token of either side, less one (the last prompt token heads each reply
    segment: see the module docstring). 0 when they share nothing."""
    limit = min(len(chosen), len(rejected))
    for side in (chosen, rejected):
        limit = min(limit, next((i for i, m in enumerate(side.loss_mask) if m), limit))
    common = 0
    while common < limit and chosen.input_ids[common] == rejected.input_ids[common]:
        common += 1
    return max(common - 1, 0)


# ---------------------------------------------------------------------------------------------------------
# Rendering and collation
# ---------------------------------------------------------------------------------------------------------


def render_pairs(tokenizer, examples: list, max_length: int, path: str, sha256: str, objective: str):
    """A RenderedSet of PairItems. Pairs longer than max_length are cut at the end (warned); a pair left
    with no reply token on either side is dropped (warned)."""
    items, lines, warnings = [], [], []
    truncated = dropped = 0
    for ex in examples:
        where = f"{path} line {ex.line}" if getattr(ex, "line", None) else path
        if not isinstance(ex, PreferencePair):
            raise DataError(f"{where}: objective '{objective}' needs preference pairs (prompt, chosen, rejected), "
                            f"not {getattr(ex, 'kind', type(ex).__name__)} examples")
        try:
            chosen, rejected = render_preference(tokenizer, ex, max_length)
        except TemplateError as e:
            raise DataError(f"{where}: {e}") from e
        truncated += chosen.truncated or rejected.truncated
        if not any(chosen.loss_mask[1:]) or not any(rejected.loss_mask[1:]):
            dropped += 1
            continue
        items.append(PairItem(chosen, rejected, index=len(items)))
        lines.append(getattr(ex, "line", None))
    if truncated:
        warnings.append(f"{path}: {truncated} pair(s) longer than max_length={max_length} were cut at the end "
                        "(run `hone data validate` to see which side)")
    if dropped:
        warnings.append(f"{path}: {dropped} pair(s) had no reply token left after truncation and were dropped")
    if not items:
        raise DataError(f"{path}: no preference pair has a reply token to train on")
    source = {"path": str(path), "sha256": sha256, "examples": len(items), "pairs": len(items),
              "trained_tokens": sum(it.completion_tokens for it in items), "tokens": sum(len(it) for it in items),
              "truncated": truncated, "dropped": dropped}
    return RenderedSet(items, lines, source, warnings)


def collate_sequences(seqs: list[RenderedExample], pad_id: int, packing: bool) -> dict:
    """The model's inputs for ``seqs`` (one packed row, or right-padded rows, as for SFT) plus
    ``sequence_index``: which sequence each token belongs to (-1 on padding), for per-sequence log-probs."""
    import torch

    from honing.train.packing import collate_packed, collate_padded

    if packing:
        batch = collate_packed(seqs)
        owner = [i for i, s in enumerate(seqs) for _ in range(len(s))]
        batch["sequence_index"] = torch.tensor([owner], dtype=torch.long)
    else:
        batch = collate_padded(seqs, pad_id)
        rows = torch.arange(len(seqs)).unsqueeze(1).expand_as(batch["input_ids"])
        batch["sequence_index"] = rows.masked_fill(batch["attention_mask"] == 0, -1).contiguous()
    return batch


def collate_pairs(items: list[PairItem], pad_id: int, packing: bool, shared_prompt: bool = False) -> dict:
    """One batch of 2B sequences, chosen first, plus ``n_pairs`` and, when precomputed, ``ref_logps`` [2B].
    ``shared_prompt``: each pair's prompt once (:func:`collate_shared_prompt`); else two sequences per pair
    (:func:`collate_sequences`)."""
    import torch

    if shared_prompt:
        batch = collate_shared_prompt(items, pad_id, packing)
    else:
        batch = collate_sequences([it.chosen for it in items] + [it.rejected for it in items], pad_id, packing)
    batch["n_pairs"] = torch.tensor(len(items))
    if all(it.ref is not None for it in items):
        batch["ref_logps"] = torch.tensor([it.ref[0] for it in items] + [it.ref[1] for it in items],
                                          dtype=torch.float64)
    return batch


# Branch ids of a shared-prompt row: what a token may attend to besides its own branch.
PROMPT, CHOSEN, REJECTED, PAD = 0, 1, 2, -1


def _shared_row(item: PairItem, chosen_index: int, rejected_index: int) -> dict[str, list[int]]:
    """One pair as lists: the chosen rendering whole, then the rejected one past the shared prefix."""
    s, c, r = item.shared_prefix, item.chosen, item.rejected
    labels_r = r.labels()[s:]
    labels_r[0] = IGNORE_INDEX  # the row's previous token is the chosen reply's last: never a predictor of it
    return {
        "input_ids": c.input_ids + r.input_ids[s:],
        "labels": c.labels() + labels_r,
        "position_ids": list(range(len(c))) + list(range(s, len(r))),  # the rejected reply restarts after the prompt
        "branch": [PROMPT] * s + [CHOSEN] * (len(c) - s) + [REJECTED] * (len(r) - s),
        "sequence_index": [chosen_index] * len(c) + [rejected_index] * (len(r) - s),
    }


def shared_prompt_mask(pair_id, branch):
    """Boolean [R, 1, T, T] (True = may attend) from ``pair_id`` and ``branch`` [R, T]: a token attends to the
    earlier tokens of its own pair that are prompt or its own branch; padding (branch -1) only to itself, so
    no query row is empty (sdpa would return NaN there)."""
    import torch

    t = pair_id.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    same_pair = pair_id.unsqueeze(2) == pair_id.unsqueeze(1)
    key_visible = (branch.unsqueeze(1) == PROMPT) | (branch.unsqueeze(1) == branch.unsqueeze(2))
    real = (branch != PAD).unsqueeze(2)
    allowed = same_pair & key_visible & causal & real
    return (allowed | torch.eye(t, dtype=torch.bool)).unsqueeze(1)


def collate_shared_prompt(items: list[PairItem], pad_id: int, packing: bool) -> dict:
    """The pairs with their prompts once: one row (``packing``) or one right-padded row per pair, with the
    4-D boolean ``attention_mask`` of :func:`shared_prompt_mask`, ``position_ids``, ``labels`` and
    ``sequence_index`` (chosen of pair i: i, rejected: B + i; -1 on padding)."""
    import torch

    n = len(items)
    rows = [_shared_row(it, i, n + i) for i, it in enumerate(items)]
    for i, row in enumerate(rows):
        row["labels"][0] = IGNORE_INDEX  # packed: the previous pair's last token does not predict it
        row["pair"] = [i] * len(row["input_ids"])
    if packing:
        rows = [{k: [v for row in rows for v in row[k]] for k in rows[0]}]
    width = max(len(row["input_ids"]) for row in rows)
    fill = {"input_ids": pad_id, "labels": IGNORE_INDEX, "position_ids": 0, "branch": PAD, "sequence_index": -1,
            "pair": -1}
    batch = {k: torch.tensor([row[k] + [f] * (width - len(row[k])) for row in rows], dtype=torch.long)
             for k, f in fill.items()}
    batch["attention_mask"] = shared_prompt_mask(batch.pop("pair"), batch.pop("branch"))
    return batch


def shared_prompt_unsupported(model, max_length: int) -> str | None:
    """Why ``model`` cannot take the shared-prompt layout, or None when it can."""
    from honing.train.losses import _unwrap

    config = _unwrap(model).config
    attn = getattr(config, "_attn_implementation", None)
    if attn not in ("sdpa", "eager"):
        return f"attention implementation {attn!r} takes no custom 4-D mask (only sdpa and eager do)"
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    window = getattr(text, "sliding_window", None)
    if window and getattr(text, "use_sliding_window", True) and window < 2 * max_length:
        return f"sliding-window attention ({window} tokens) would need a mask of its own"
    return None


def _model_inputs(model, batch: dict) -> dict:
    """The model's inputs of ``batch``; a boolean 4-D mask becomes additive for eager attention, which adds
    the mask to its scores (sdpa takes booleans)."""
    import torch

    from honing.train.losses import _unwrap

    inputs = {k: batch[k] for k in MODEL_KEYS if k in batch}
    mask = inputs.get("attention_mask")
    if mask is not None and mask.dim() == 4 and mask.dtype == torch.bool:
        core = _unwrap(model)
        if getattr(core.config, "_attn_implementation", None) == "eager":
            dtype = core.get_input_embeddings().weight.dtype
            inputs["attention_mask"] = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(
                ~mask, torch.finfo(dtype).min)
    return inputs


# ---------------------------------------------------------------------------------------------------------
# Log-probabilities of the replies
# ---------------------------------------------------------------------------------------------------------


def _chunk_token_logps(h, weight, bias, targets, softcap):
    """log p(target) for each row of ``h``: logits exist for this chunk only."""
    import torch
    import torch.nn.functional as F

    logits = F.linear(h, weight, bias).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits.gather(1, targets.unsqueeze(1)).squeeze(1) - logits.logsumexp(dim=1)


def _frozen_head_token_logps(h, weight, bias, targets, softcap):
    """:func:`_chunk_token_logps` for a head whose weights take no gradient, with the backward's work done in
    the forward: log p(t | h) has the gradient (onehot(t) - softmax) x d(logits)/dh with respect to ``h``, and
    the loss reaches each token's log-prob through one scalar, so that [chunk, hidden] Jacobian is computed
    while the logits exist and the backward only scales it. The checkpointed path instead runs the head again
    in the backward (one [chunk, vocab] matmul more per trained token) and keeps nothing bigger."""
    import torch

    class FrozenHeadLogps(torch.autograd.Function):
        @staticmethod
        def forward(ctx, h):
            logps, jacobian = _logps_and_jacobian(h, weight, bias, targets, softcap)
            ctx.save_for_backward(jacobian)
            return logps

        @staticmethod
        def backward(ctx, grad):
            (jacobian,) = ctx.saved_tensors
            return grad.unsqueeze(1).to(jacobian.dtype) * jacobian

    return FrozenHeadLogps.apply(h)


def _logps_and_jacobian(h, weight, bias, targets, softcap):
    """(log p(target) [n] fp32, d log p(target) / d h [n, hidden] in h's dtype) for a linear head."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        raw = F.linear(h, weight, bias).float()
        capped = torch.tanh(raw / softcap) if softcap else None
        logits = capped * softcap if softcap else raw
        lse = logits.logsumexp(dim=1, keepdim=True)
        logps = logits.gather(1, targets.unsqueeze(1)).squeeze(1) - lse.squeeze(1)
        grad_logits = logits.sub_(lse).exp_().neg_()  # -softmax, in the logits' memory
        grad_logits.scatter_add_(1, targets.unsqueeze(1), torch.ones_like(logps).unsqueeze(1))
        if softcap:
            grad_logits.mul_(1 - capped.square_())  # d(softcap x tanh(raw / softcap)) / d raw
        jacobian = grad_logits.to(h.dtype) @ weight.to(h.dtype)
    return logps, jacobian


def _final_hidden(model, inputs: dict):
    """(final hidden states [B, T, H], lm_head module, softcap) via a hook on the decoder, the head not run
    (``logits_to_keep=1``); or (full logits, None, None) when the head cannot be chunked."""
    from honing.train.losses import _plain_head, _unwrap, decoder_hidden_states

    core = _unwrap(model)
    found = _plain_head(core)
    if found is None:
        return model(**inputs, use_cache=False).logits, None, None
    head, decoder = found
    return decoder_hidden_states(model, inputs, decoder), head, getattr(core.config, "final_logit_softcapping", None)


def token_logps(model, batch: dict, chunk_tokens: int = CHUNK_TOKENS):
    """(log-prob of every trained token: fp32 [N], the sequence each belongs to: long [N]), in batch order.

    Only the positions whose next token is trained go through the output head, ``chunk_tokens`` at a time;
    with gradients on, a frozen head's chunk leaves only its [chunk, hidden] Jacobian for the backward
    (:func:`_frozen_head_token_logps`), a trained head's chunk is recomputed in the backward instead of keeping
    its [chunk, vocab] logits.
    """
    import torch
    from torch.utils.checkpoint import checkpoint

    inputs = _model_inputs(model, batch)
    labels, owner = batch["labels"], batch["sequence_index"]
    out, head, softcap = _final_hidden(model, inputs)
    targets = labels[:, 1:].reshape(-1)
    keep = (targets != IGNORE_INDEX).nonzero().squeeze(-1)
    t = targets.index_select(0, keep)
    who = owner[:, 1:].reshape(-1).index_select(0, keep)
    if head is None:  # full logits from the model (e.g. an adapted lm_head): trained positions only
        logits = out[:, :-1].reshape(-1, out.shape[-1]).index_select(0, keep).float()
        return logits.gather(1, t.unsqueeze(1)).squeeze(1) - logits.logsumexp(dim=1), who
    h = out[:, :-1].reshape(-1, out.shape[-1]).index_select(0, keep)
    parts = []
    head_trains = head.weight.requires_grad or (head.bias is not None and head.bias.requires_grad)
    grad = torch.is_grad_enabled() and (h.requires_grad or head_trains)
    for s in range(0, h.shape[0], chunk_tokens):
        args = (h[s : s + chunk_tokens], head.weight, head.bias, t[s : s + chunk_tokens], softcap)
        if grad and not head_trains and FROZEN_HEAD_JACOBIAN:  # LoRA/QLoRA: the head is frozen, only h takes a gradient
            parts.append(_frozen_head_token_logps(*args))
        elif grad:
            parts.append(checkpoint(_chunk_token_logps, *args, use_reentrant=False))
        else:
            parts.append(_chunk_token_logps(*args))
    return (torch.cat(parts) if parts else h.sum(-1) * 0.0), who


def sequence_logps(model, batch: dict, n_sequences: int, chunk_tokens: int = CHUNK_TOKENS):
    """(summed log-probs of each sequence's trained tokens: fp32 [n_sequences], their counts: fp32 [n_sequences])."""
    import torch

    per_token, who = token_logps(model, batch, chunk_tokens)
    zeros = torch.zeros(n_sequences, dtype=torch.float32, device=per_token.device)
    logps = zeros.index_add(0, who, per_token)
    counts = zeros.index_add(0, who, torch.ones_like(per_token))
    return logps, counts


# ---------------------------------------------------------------------------------------------------------
# The losses (per pair); the same formulas as TRL's DPOTrainer / CPOTrainer(loss_type="simpo")
# ---------------------------------------------------------------------------------------------------------


def dpo_losses(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float, loss_type: str = "sigmoid",
               label_smoothing: float = 0.0, chosen_tokens=None, rejected_tokens=None):
    """(per-pair losses, chosen rewards, rejected rewards), all [B]. Rewards are beta x (policy - reference)
    summed log-probs. ``ipo`` averages the log-ratios per reply token (as TRL does), so it needs the counts."""
    import torch
    import torch.nn.functional as F

    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    delta = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * delta) * (1 - label_smoothing) - F.logsigmoid(-beta * delta) * label_smoothing
    elif loss_type == "robust":
        losses = (-(1 - label_smoothing) * F.logsigmoid(beta * delta)
                  + label_smoothing * F.logsigmoid(-beta * delta)) / (1 - 2 * label_smoothing)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * delta)
    elif loss_type == "ipo":
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError("loss_type ipo needs the reply token counts")
        avg = chosen_ratio / chosen_tokens.clamp(min=1) - rejected_ratio / rejected_tokens.clamp(min=1)
        losses = (avg - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}")
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def simpo_losses(policy_chosen, policy_rejected, chosen_tokens, rejected_tokens, beta: float, gamma: float):
    """(per-pair losses, chosen rewards, rejected rewards): rewards are beta x length-averaged log-probs."""
    import torch.nn.functional as F

    chosen_reward = beta * policy_chosen / chosen_tokens.clamp(min=1)
    rejected_reward = beta * policy_rejected / rejected_tokens.clamp(min=1)
    losses = -F.logsigmoid(chosen_reward - rejected_reward - gamma)
    return losses, chosen_reward.detach(), rejected_reward.detach()


def _stats(losses, chosen_rewards, rejected_rewards, policy_chosen, policy_rejected) -> dict:
    """Detached sums over the pairs (the loop divides by the step's pairs)."""
    return {
        "rewards/chosen": chosen_rewards.sum(),
        "rewards/rejected": rejected_rewards.sum(),
        "rewards/margin": (chosen_rewards - rejected_rewards).sum(),
        "rewards/accuracy": (chosen_rewards > rejected_rewards).float().sum(),
        "logps/chosen": policy_chosen.detach().sum(),
        "logps/rejected": policy_rejected.detach().sum(),
    }


# ---------------------------------------------------------------------------------------------------------
# Objectives
# ---------------------------------------------------------------------------------------------------------


class _PairObjective(Objective):
    # Each pair's prompt once in its row (module docstring); setup() falls back to two sequences per pair
    # where the model's attention cannot take the mask.
    shared_prompt = True

    def render_set(self, tokenizer, examples, path, sha256):
        return render_pairs(tokenizer, examples, self.config.max_length, path, sha256, self.name)

    def setup(self, ctx) -> None:
        reason = shared_prompt_unsupported(ctx.model, self.config.max_length) if self.shared_prompt else None
        if reason:
            self.shared_prompt = False
            ctx.log(f"{self.name}: chosen and rejected each carry the whole prompt (two sequences per pair): {reason}")

    def collate(self, items, pad_id):
        return collate_pairs(items, pad_id, self.config.packing and self.packing_supported, self.shared_prompt)

    def normalizer(self, item) -> int:
        return 1  # the loss is a mean over pairs

    def tokens(self, item) -> int:
        # The tokens the forward runs. (The loop's auto micro-batch reads this before setup() can fall back
        # to two sequences: such a run then sizes its micro-batches by the shorter, shared-prompt count.)
        return item.shared_length if self.shared_prompt else len(item)

    def trained_tokens(self, item) -> int:
        return item.completion_tokens

    def _policy(self, model, batch):
        n = 2 * int(batch["n_pairs"])
        logps, counts = sequence_logps(model, batch, n)
        half = n // 2
        return logps[:half], logps[half:], counts[:half], counts[half:]


class DPOObjective(_PairObjective):
    """DPO: sigmoid / ipo / hinge / robust losses against the reference model."""

    name = "dpo"

    def __init__(self, config):
        super().__init__(config)
        self.reference = None  # "adapter_disabled" | "precomputed", decided in setup()
        self._setup = None  # the SetupContext (model, runtime) the adapter-disabled reference runs with

    def setup(self, ctx) -> None:
        super().setup(ctx)  # the layout first: the precomputed reference collates with it
        self.reference = reference_mode(ctx.config)
        if self.reference == "precomputed":
            prepare_reference(ctx, self)
        else:
            self._setup = ctx
            ctx.log("DPO reference: the base model (the adapter disabled under no_grad), computed the first time "
                    "a pair is trained and kept for later epochs")

    def prepare_step(self, step: int, batches: list[list]) -> tuple[list[list], dict]:
        """The adapter-disabled reference of each micro-batch's pairs not seen before, kept on the items
        (``item.ref``, two floats a pair): the base model does not change while the adapter trains, so later
        epochs reuse them and skip a quarter of the step's work. Each micro-batch is collated as its loss
        will collate it, so the values are those the in-step reference gives. A resumed run computes them
        again from the same base model: the same values for micro-batches of one pair, equal up to float
        rounding where a pair shared its forward with other pairs."""
        if self.reference == "adapter_disabled" and self._setup is not None:
            for mb in batches:
                todo = [it for it in mb if it.ref is None]
                if todo:
                    self._keep_reference(todo)
        return batches, {}

    def _keep_reference(self, items: list[PairItem]) -> None:
        import torch

        ctx = self._setup
        batch = ctx.runtime.to_device(self.collate(items, 0))  # padding is masked: any id works
        core = getattr(ctx.model, "module", ctx.model)
        with torch.no_grad(), core.disable_adapter(), _autocast(ctx.runtime):
            logps, _ = sequence_logps(core, batch, 2 * len(items))
        logps = logps.double().cpu().tolist()  # fp32 -> fp64 -> fp32 in the loss: the same values
        for i, it in enumerate(items):
            it.ref = (logps[i], logps[len(items) + i])

    def reference_logps(self, model, batch):
        """[2B] reference log-probs: the stored ones, or the model with its adapter disabled."""
        import torch

        if "ref_logps" in batch:
            return batch["ref_logps"].to(torch.float32)
        if self.reference != "adapter_disabled":
            raise RuntimeError("DPO reference log-probs are missing: setup() did not run or did not precompute")
        core = getattr(model, "module", model)  # the PeftModel inside DDP (FSDP2 shards it in place)
        with torch.no_grad(), core.disable_adapter():
            logps, _ = sequence_logps(core, batch, 2 * int(batch["n_pairs"]))
        return logps

    def loss(self, model, batch) -> LossOutput:
        ref = self.reference_logps(model, batch)
        pc, pr, nc, nr = self._policy(model, batch)
        half = pc.shape[0]
        ref = ref.to(pc.device)
        d = self.config.dpo
        losses, rc, rr = dpo_losses(pc, pr, ref[:half], ref[half:], d.beta, d.loss_type, d.label_smoothing, nc, nr)
        return LossOutput(losses.sum(), _stats(losses, rc, rr, pc, pr))


class SimPOObjective(_PairObjective):
    """SimPO: no reference model; length-averaged log-probs with a target margin."""

    name = "simpo"

    def loss(self, model, batch) -> LossOutput:
        pc, pr, nc, nr = self._policy(model, batch)
        s = self.config.simpo
        losses, rc, rr = simpo_losses(pc, pr, nc, nr, s.beta, s.gamma)
        return LossOutput(losses.sum(), _stats(losses, rc, rr, pc, pr))


# ---------------------------------------------------------------------------------------------------------
# Precomputed reference log-probs (full fine-tuning, init_from)
# ---------------------------------------------------------------------------------------------------------


def reference_mode(config) -> str:
    mode = config.dpo.reference
    adapter = config.method in ("lora", "qlora")
    if mode == "auto":
        return "adapter_disabled" if adapter and not config.init_from else "precomputed"
    if mode == "adapter_disabled" and not adapter:
        from honing.errors import ConfigError

        raise ConfigError("dpo.reference: adapter_disabled needs method lora or qlora (full fine-tuning has no "
                          "adapter to disable); use precomputed or auto")
    if mode == "adapter_disabled" and config.init_from:
        from honing.errors import ConfigError

        raise ConfigError("dpo.reference: adapter_disabled with init_from would compare against the base model, "
                          "not the run you start from; use precomputed or auto")
    return mode


def _set_fingerprint(rendered) -> str:
    import hashlib

    h = hashlib.sha256()
    for it in rendered.items:
        h.update(str((it.chosen.input_ids, it.rejected.input_ids)).encode())
    return h.hexdigest()


def prepare_reference(ctx, objective: DPOObjective) -> None:
    """Fill ``item.ref`` (chosen, rejected) of every train and eval pair: stored once in the run directory."""
    cached_reference(ctx, "DPO", ("chosen", "rejected"), "pairs",
                     lambda rendered: compute_reference(ctx.model, rendered.items, objective, ctx.runtime, ctx.config),
                     _set_fingerprint)


def compute_reference(model, items: list[PairItem], objective: _PairObjective, runtime=None, config=None,
                      micro_batch: int = 4) -> list[tuple[float, float]]:
    """(chosen, rejected) summed reply log-probs of each pair under ``model`` as it is now (eval mode, no_grad)."""
    import torch

    was_training = model.training
    model.eval()
    out: list[tuple[float, float]] = []
    try:
        with torch.no_grad():
            for s in range(0, len(items), micro_batch):
                chunk = [PairItem(it.chosen, it.rejected, it.index) for it in items[s : s + micro_batch]]
                batch = objective.collate(chunk, 0)  # padding is masked (attention and labels): any id works
                batch = _to_device(batch, runtime, model)
                with _autocast(runtime):
                    logps, _ = sequence_logps(model, batch, 2 * len(chunk))
                logps = logps.double().cpu().tolist()
                out += list(zip(logps[: len(chunk)], logps[len(chunk) :]))
    finally:
        model.train(was_training)
    for c, r in out:
        if not (math.isfinite(c) and math.isfinite(r)):
            from honing.train.errors import TrainingError

            raise TrainingError("reference log-probs are not finite (check dtype and the data)")
    return out


def _to_device(batch: dict, runtime, model) -> dict:
    mover = getattr(runtime, "to_device", None) or getattr(runtime, "batch_to_device", None)
    if callable(mover):
        return mover(batch)
    device = next(model.parameters()).device
    return {k: v.to(device) for k, v in batch.items()}


def _autocast(runtime):
    import contextlib

    ac = getattr(runtime, "autocast", None)
    return ac() if callable(ac) else contextlib.nullcontext()
