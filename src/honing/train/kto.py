"""KTO (Kahneman-Tversky optimization) as an objective of the one loop: single replies labelled desirable or
undesirable (a thumbs up or down), against a reference model. The loss is TRL's KTOTrainer (``loss_type="kto"``):

    example (prompt x, reply y, label) -> x+y rendered (loss mask on y), and x+y' (y': another example's reply,
    the mismatched pair of the KL estimate)
    z0 = max(0, mean over the step's examples of log pi(y'|x) - log ref(y'|x))      (no gradient)
    r  = log pi(y|x) - log ref(y|x)                                                 (summed over y's tokens)
    desirable:   desirable_weight   x (1 - sigmoid(beta (r - z0)))
    undesirable: undesirable_weight x (1 - sigmoid(beta (z0 - r)))

The normalizer is one unit per example (TRL: the mean over the batch's examples).

z0 is estimated over the whole optimizer step (every micro-batch of every process, in ``prepare_step``) where
TRL takes each micro-batch's: so batch 4 x accumulation 1 and batch 1 x accumulation 4 give the same gradient,
and a micro-batch of one example does not turn the KL estimate into that example's own reward (why TRL needs a
per-device batch above 1). ``loss`` called outside the loop (no ``prepare_step``) falls back to TRL's
per-micro-batch estimate.

The mismatched reply of each example is fixed when the set is rendered (as TRL fixes it when it maps its
dataset), so precomputed reference log-probs can cover it: example i takes the reply of example
(i + n//2) mod n, far from i in the file (feedback files often hold the up and down answers to one prompt
side by side), or the next one after that whose prompt differs.

The reference, as DPO's (:mod:`honing.train.preference`): the model with its adapter disabled for a fresh
LoRA/QLoRA adapter; otherwise (full fine-tuning, ``init_from``) the log-probs of every reply, matched and
mismatched, computed once before training and stored in the run directory.
"""

from __future__ import annotations

from dataclasses import dataclass

from honing.data.conversation import Conversation, LabeledExample, Message
from honing.data.render import RenderedExample, TemplateError, render_conversation
from honing.errors import DataError
from honing.train.dataset import RenderedSet
from honing.train.errors import TrainingError
from honing.train.objectives import LossOutput, Objective
from honing.train.preference import collate_sequences, sequence_logps
from honing.train.reference import cached_reference

KL_PREFIX = "kl_"  # batch keys of the mismatched sequences (flat, so the loop's to_device moves them)
REFERENCE_CHUNK = 4  # sequences per forward when precomputing reference log-probs or an eval KL


@dataclass
class LabeledItem:
    """A rendered unpaired example. ``kl``: its prompt with another example's reply; ``ref``: the reference
    log-probs of (reply, mismatched reply) once precomputed."""

    seq: RenderedExample
    kl: RenderedExample
    desirable: bool
    index: int
    ref: tuple[float, float] | None = None

    def __len__(self) -> int:
        return len(self.seq) + len(self.kl)

    @property
    def input_ids(self) -> list[int]:  # the loop's mean-length estimate counts both sequences
        return self.seq.input_ids + self.kl.input_ids


# ---------------------------------------------------------------------------------------------------------
# Rendering and collation
# ---------------------------------------------------------------------------------------------------------


def mismatched_partners(prompts: list, tries: int = 64) -> list[int]:
    """For each example, the example whose reply its prompt is paired with for the KL estimate: half-way round
    the set, or the next one after that with a different prompt (within ``tries``)."""
    n = len(prompts)
    half = max(1, n // 2)
    out = []
    for i in range(n):
        ahead = ((i + half + k) % n for k in range(min(n, tries)))
        out.append(next((j for j in ahead if j != i and prompts[j] != prompts[i]), (i + half) % n))
    return out


def render_labeled(tokenizer, examples: list, max_length: int, path: str, sha256: str, objective: str = "kto"):
    """A RenderedSet of LabeledItems. Examples longer than max_length are cut at the end (warned); one left with
    no reply token is dropped (warned)."""
    kept, seqs, lines, warnings = [], [], [], []
    truncated = dropped = 0
    for ex in examples:
        where = f"{path} line {ex.line}" if getattr(ex, "line", None) else path
        if not isinstance(ex, LabeledExample):
            raise DataError(f"{where}: objective '{objective}' needs unpaired examples labelled desirable or not "
                            f"({{\"prompt\", \"completion\", \"label\": true|false}}), not "
                            f"{getattr(ex, 'kind', type(ex).__name__)} examples")
        seq = _render(tokenizer, ex.conversation(), max_length, where)
        truncated += seq.truncated
        if not any(seq.loss_mask[1:]):
            dropped += 1
            continue
        kept.append(ex)
        seqs.append(seq)
        lines.append(ex.line)
    if not kept:
        raise DataError(f"{path}: no example has a reply token to train on")
    partners = mismatched_partners([ex.prompt for ex in kept])
    items = []
    for i, (ex, seq, j) in enumerate(zip(kept, seqs, partners)):
        other = Conversation(ex.prompt + (Message("assistant", kept[j].completion),), line=ex.line)
        items.append(LabeledItem(seq, _render(tokenizer, other, max_length, path), ex.label, index=i))
    if truncated:
        warnings.append(f"{path}: {truncated} example(s) longer than max_length={max_length} were cut at the end")
    if dropped:
        warnings.append(f"{path}: {dropped} example(s) had no reply token left after truncation and were dropped")
    if len(items) == 1:
        warnings.append(f"{path}: one example: the KL estimate pairs its prompt with its own reply")
    desirable = sum(it.desirable for it in items)
    source = {"path": str(path), "sha256": sha256, "examples": len(items), "desirable": desirable,
              "undesirable": len(items) - desirable, "trained_tokens": sum(sum(it.seq.loss_mask[1:]) for it in items),
              "tokens": sum(len(it) for it in items), "truncated": truncated, "dropped": dropped}
    return RenderedSet(items, lines, source, warnings)


def _render(tokenizer, conversation: Conversation, max_length: int, where: str) -> RenderedExample:
    try:
        return render_conversation(tokenizer, conversation, max_length)
    except TemplateError as e:
        raise DataError(f"{where}: {e}") from e


def collate_labeled(items: list[LabeledItem], pad_id: int, packing: bool) -> dict:
    """The replies' sequences (model inputs, ``labels``, ``sequence_index``), the mismatched ones under the same
    keys prefixed ``kl_``, ``desirable`` [B] and, when precomputed, ``ref_logps`` / ``kl_ref_logps`` [B]."""
    import torch

    batch = collate_sequences([it.seq for it in items], pad_id, packing)
    for k, v in collate_sequences([it.kl for it in items], pad_id, packing).items():
        batch[KL_PREFIX + k] = v
    batch["desirable"] = torch.tensor([it.desirable for it in items], dtype=torch.bool)
    if all(it.ref is not None for it in items):
        batch["ref_logps"] = torch.tensor([it.ref[0] for it in items], dtype=torch.float64)
        batch[KL_PREFIX + "ref_logps"] = torch.tensor([it.ref[1] for it in items], dtype=torch.float64)
    return batch


def mismatched_view(batch: dict) -> dict:
    """The ``kl_`` sequences of a collated batch under the plain keys ``sequence_logps`` reads."""
    return {k[len(KL_PREFIX):]: v for k, v in batch.items() if k.startswith(KL_PREFIX)}


# ---------------------------------------------------------------------------------------------------------
# The loss (TRL's KTOTrainer.kto_loss, loss_type "kto")
# ---------------------------------------------------------------------------------------------------------


def kto_losses(policy, reference, desirable, kl, beta: float, desirable_weight: float = 1.0,
               undesirable_weight: float = 1.0):
    """(per-example weighted losses, rewards beta x (policy - reference)), both [B]; ``kl`` is z0 (no gradient)."""
    import torch

    logratio = policy - reference
    chosen = 1 - torch.sigmoid(beta * (logratio - kl))
    rejected = 1 - torch.sigmoid(beta * (kl - logratio))
    losses = torch.where(desirable, desirable_weight * chosen, undesirable_weight * rejected)
    return losses, beta * logratio.detach()


def kl_estimate(logratios_sum, count: int):
    """z0 from the summed mismatched log-ratios: their mean, clamped at 0 (as TRL)."""
    return max(float(logratios_sum) / max(count, 1), 0.0)


# ---------------------------------------------------------------------------------------------------------
# The objective
# ---------------------------------------------------------------------------------------------------------


class KTOObjective(Objective):
    """KTO on unpaired desirable/undesirable examples, against the reference model."""

    name = "kto"

    def __init__(self, config):
        super().__init__(config)
        self.reference = None  # "adapter_disabled" | "precomputed", decided in setup()
        self.kl: float | None = None  # z0 of the current step (or eval), set by prepare_step / evaluate
        self._model = self._runtime = self._filler = None

    def render_set(self, tokenizer, examples, path, sha256):
        return render_labeled(tokenizer, examples, self.config.max_length, path, sha256, self.name)

    def collate(self, items, pad_id):
        return collate_labeled(items, pad_id, self.config.packing and self.packing_supported)

    def normalizer(self, item) -> int:
        return 1  # the loss is a mean over examples

    def trained_tokens(self, item) -> int:
        return sum(item.seq.loss_mask[1:])

    # -- setup and the per-step KL estimate

    def setup(self, ctx) -> None:
        self._model, self._runtime, self._filler = ctx.model, ctx.runtime, ctx.train_set.items[0]
        self.reference = reference_mode(ctx.config)
        if self.reference == "precomputed":
            prepare_reference(ctx, self)
        else:
            ctx.log("KTO reference: the base model (the adapter disabled under no_grad in each step)")
        line = balance_line(ctx.train_set.source, ctx.config.kto)
        if line:
            ctx.log(line)

    def prepare_step(self, step, batches):
        """z0 over this step's examples on every process (one all-reduce); the micro-batches are unchanged."""
        self.kl = self._step_kl(batches, self._runtime.dist)
        return batches, {}

    def evaluate(self, items) -> None:
        """z0 over the eval set (this process's share, all-reduced); returning None leaves the metrics to the
        loop's default eval, the KTO loss over the eval set, which then uses this z0."""
        dist = self._runtime.dist
        mine = items[dist.rank::dist.world_size]
        chunks = [mine[s : s + REFERENCE_CHUNK] for s in range(0, len(mine), REFERENCE_CHUNK)]
        largest_share = -(-len(items) // dist.world_size)
        per_rank = -(-largest_share // REFERENCE_CHUNK)  # every process runs as many forwards as the busiest
        was_training = self._model.training
        self._model.eval()
        try:
            self.kl = self._step_kl(chunks + [[]] * (per_rank - len(chunks)), dist)
        finally:
            self._model.train(was_training)

    def _step_kl(self, batches: list[list], dist) -> float:
        import torch

        total = torch.zeros((), dtype=torch.float64, device=self._runtime.device)
        count = 0
        with torch.no_grad(), self._runtime.autocast():
            for mb in batches:
                if not mb and not dist.enabled:
                    continue
                # An empty share still runs a forward when distributed (sharded forwards are collectives).
                batch = self._runtime.to_device(self.collate(mb or [self._filler], 0))
                ratios = self._mismatched_logratios(self._model, batch, len(mb or [self._filler]))
                if mb:
                    total = total + ratios.double().sum()
                    count += len(mb)
        total, count = dist.all_reduce_sum([total, count])
        return kl_estimate(total, int(count))

    # -- log-probs

    def _reference_logps(self, model, batch: dict, n: int):
        """[n] reference log-probs of ``batch``'s sequences: the stored ones, or the model with its adapter off."""
        import torch

        if "ref_logps" in batch:
            return batch["ref_logps"].to(torch.float32)
        if self.reference != "adapter_disabled":
            raise RuntimeError("KTO reference log-probs are missing: setup() did not run or did not precompute")
        core = getattr(model, "module", model)  # the PeftModel inside DDP (FSDP2 shards it in place)
        with torch.no_grad(), core.disable_adapter():
            logps, _ = sequence_logps(core, batch, n)
        return logps

    def _mismatched_logratios(self, model, batch: dict, n: int):
        """[n] log pi(y'|x) - log ref(y'|x) of the mismatched pairs, without gradient."""
        import torch

        view = mismatched_view(batch)
        with torch.no_grad():
            core = getattr(model, "module", model)
            policy, _ = sequence_logps(core, view, n)
            return policy - self._reference_logps(core, view, n).to(policy.device)

    def loss(self, model, batch) -> LossOutput:
        n = int(batch["desirable"].shape[0])
        kl = self.kl if self.kl is not None else kl_estimate(self._mismatched_logratios(model, batch, n).sum(), n)
        policy, _ = sequence_logps(model, batch, n)
        reference = self._reference_logps(model, batch, n).to(policy.device)
        desirable = batch["desirable"].to(policy.device)
        k = self.config.kto
        losses, rewards = kto_losses(policy, reference, desirable, kl, k.beta, k.desirable_weight,
                                     k.undesirable_weight)
        return LossOutput(losses.sum(), _stats(rewards, desirable, policy, kl, k.beta))


def _stats(rewards, desirable, policy, kl: float, beta: float) -> dict:
    """Detached sums over the examples (the loop divides by the step's examples): ``kl`` is z0; ``rewards/signed``
    the reward with an undesirable example's sign flipped (higher is better); ``rewards/accuracy`` the share of
    examples on their label's side of beta x z0."""
    import torch

    signed = torch.where(desirable, rewards, -rewards)
    right = torch.where(desirable, rewards > beta * kl, rewards < beta * kl)
    return {"kl": torch.tensor(kl * rewards.shape[0], dtype=torch.float64, device=rewards.device),
            "rewards/signed": signed.sum(),
            "rewards/accuracy": right.float().sum(), "logps/completion": policy.detach().sum(),
            "desirable": desirable.float().sum()}


def balance_line(source: dict, kto) -> str | None:
    """TRL's advice on unbalanced data: desirable_weight x desirable / (undesirable_weight x undesirable)
    within [1, 4/3]; a line saying so when the training set is outside it."""
    d, u = source.get("desirable", 0), source.get("undesirable", 0)
    if not u or not d:
        which = "undesirable" if not u else "desirable"
        return f"warning: no {which} example in the training set: KTO learns only from the other label"
    ratio = kto.desirable_weight * d / (kto.undesirable_weight * u)
    if 1.0 <= ratio <= 4 / 3:
        return None
    return (f"note: {d} desirable vs {u} undesirable examples; desirable_weight x desirable / (undesirable_weight x "
            f"undesirable) = {ratio:.2f}, outside the [1, 1.33] the KTO authors recommend (kto.desirable_weight, "
            "kto.undesirable_weight)")


# ---------------------------------------------------------------------------------------------------------
# The reference: adapter disabled, or precomputed once (full fine-tuning, init_from)
# ---------------------------------------------------------------------------------------------------------


def reference_mode(config) -> str:
    """adapter_disabled for a fresh LoRA/QLoRA adapter; precomputed otherwise (disabling an adapter continued from
    an earlier run would give the base, not the run KTO starts from)."""
    return "adapter_disabled" if config.method in ("lora", "qlora") and not config.init_from else "precomputed"


def _fingerprint(rendered) -> str:
    import hashlib

    h = hashlib.sha256()
    for it in rendered.items:
        h.update(str((it.seq.input_ids, it.kl.input_ids)).encode())
    return h.hexdigest()


def prepare_reference(ctx, objective: KTOObjective) -> None:
    """Fill ``item.ref`` (the completion's, a mismatched completion's) of every train and eval example: stored
    once in the run directory."""
    packing = ctx.config.packing and objective.packing_supported

    def compute(rendered) -> list[tuple[float, float]]:
        own = reference_logps(ctx.model, [it.seq for it in rendered.items], ctx.runtime, packing)
        other = reference_logps(ctx.model, [it.kl for it in rendered.items], ctx.runtime, packing)
        return list(zip(own, other))

    cached_reference(ctx, "KTO", ("completion", "mismatched"), "examples (each with a mismatched reply)", compute,
                     _fingerprint)


def reference_logps(model, seqs: list[RenderedExample], runtime, packing: bool) -> list[float]:
    """Summed reply log-probs of ``seqs`` under ``model`` as it is now (eval mode, no_grad), as Python floats."""
    import math

    import torch

    was_training = model.training
    model.eval()
    out: list[float] = []
    try:
        with torch.no_grad(), runtime.autocast():
            for s in range(0, len(seqs), REFERENCE_CHUNK):
                chunk = seqs[s : s + REFERENCE_CHUNK]
                batch = runtime.to_device(collate_sequences(chunk, 0, packing))  # padding is masked: any id works
                logps, _ = sequence_logps(model, batch, len(chunk))
                out += logps.double().cpu().tolist()
    finally:
        model.train(was_training)
    if not all(math.isfinite(v) for v in out):
        raise TrainingError("reference log-probs are not finite (check dtype and the data)")
    return out
