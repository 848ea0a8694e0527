"""Reinforcement fine-tuning against a grader (``objective: grpo``; the service's ``reinforcement`` method).

    prompts of the step (OpenAI's RFT rows: messages ending with the user's turn, other fields = the item)
    -> prepare_step: G completions per prompt from the current policy (honing.train.sampler: KV cache, the
       prompt computed once for its G samples), decoded, graded (honing.graders), group-normalised advantages
       A = (r - mean of its group) [/ std of its group or batch]
    -> loss: per completion token, -min(ratio x A, clip(ratio, 1 - eps, 1 + eps_high) x A) [+ beta x KL to the
       reference], ratio = exp(logp - logp.detach()) (one update per sample: its value is 1, its gradient the
       policy gradient; the clipped form is TRL's so a later batch reuse needs no new formula)

Token losses are averaged as TRL's ``loss_type`` says, expressed as a sum over the step's normalizer units
(the loop divides by the step's total, so batch x accumulation and processes give the same gradient):

    grpo     each completion's mean token loss          normalizer: completions
    dr_grpo  token losses / max_completion_tokens       normalizer: completions
    dapo     token losses                               normalizer: completion tokens of the step

The reference for ``beta > 0`` is the base: the same model with the adapter disabled (no second copy).
Sampling draws from a generator seeded by (seed, step, process), so a resumed run samples what the
uninterrupted one did: resume stays bitwise on CPU. Validation samples one completion per eval prompt
(greedy by default) and reports the mean reward with a bootstrap CI; the best checkpoint is the one with
the highest validation reward.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from honing.data.render import RenderedExample, render_prompt
from honing.data.rft import PromptExample, read_rft
from honing.errors import ConfigError, DataError
from honing.evaluate.bootstrap import mean_ci
from honing.evaluate.generation import stop_token_ids
from honing.train.dataset import RenderedSet
from honing.train.objectives import LossOutput, Objective
from honing.train.preference import collate_sequences, token_logps
from honing.train.sampler import SamplingParams, TorchSampler

STD_EPSILON = 1e-4  # TRL's: advantages / (std + 1e-4)


@dataclass
class PromptItem:
    """A rendered RFT row: prompt token ids and the grader's item; ``index`` is its place in its set."""

    prompt_ids: list[int]
    item: dict
    index: int

    def __len__(self) -> int:
        return len(self.prompt_ids)


@dataclass
class Rollouts:
    """One prompt's group after sampling and grading: G completions, their rewards and advantages."""

    prompt: PromptItem
    completions: list[list[int]]
    rewards: list[float]
    advantages: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return sum(len(self.prompt) + len(c) for c in self.completions)

    @property
    def completion_tokens(self) -> int:
        return sum(len(c) for c in self.completions)

    def sequences(self) -> list[RenderedExample]:
        """prompt + completion, the completion's tokens trained."""
        p = self.prompt.prompt_ids
        return [RenderedExample(p + c, [False] * len(p) + [True] * len(c)) for c in self.completions]


def load_grader_spec(spec) -> dict:
    """The grader object: given inline, or read from a JSON file."""
    if isinstance(spec, dict):
        return spec
    path = Path(str(spec))
    if not path.is_file():
        raise ConfigError(f"grpo.grader: no such file {path} (a JSON file holding OpenAI's grader object)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"grpo.grader: {path} line {e.lineno}: not valid JSON ({e.msg})") from None


def group_advantages(rewards, scale: str):
    """[P, G] rewards -> [P, G] advantages: reward minus its group's mean, divided by the group's (``group``)
    or the whole batch's (``batch``) std + 1e-4, or not divided (``none``). TRL's formulas (unbiased std)."""
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if scale == "group":
        return centred / (rewards.std(dim=1, keepdim=True) + STD_EPSILON)
    if scale == "batch":
        return centred / (rewards.std() + STD_EPSILON) if rewards.numel() > 1 else centred
    return centred


def policy_token_losses(logps, advantages, epsilon: float, epsilon_high: float):
    """Per-token clipped policy-gradient loss (TRL's): -min(ratio A, clip(ratio) A), ratio = exp(logp - old)
    with old = logp detached (one update per sample)."""
    import torch

    ratio = torch.exp(logps - logps.detach())
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + epsilon_high)
    return -torch.min(ratio * advantages, clipped * advantages)


class GRPOObjective(Objective):
    """Group-relative policy optimisation against an OpenAI-style grader."""

    name = "grpo"
    eval_metric = "eval_reward"
    eval_higher_is_better = True
    progress_metric, progress_label = "train_reward", "reward"

    def __init__(self, config):
        super().__init__(config)
        self.settings = config.grpo
        self.grader = self._load_grader()
        self.sampler = None
        self.model = self.tokenizer = self.runtime = None

    # ------------------------------------------------------------------------------------- data
    def _load_grader(self):
        from honing.graders import GraderError, load_grader

        try:
            return load_grader(load_grader_spec(self.settings.grader))
        except GraderError as e:
            raise ConfigError(f"grpo.grader: {e}") from None

    def read_examples(self, path, data_format: str = "auto") -> list:
        return read_rft(path, self.grader.item_fields())

    def render_set(self, tokenizer, examples, path, sha256):
        budget = self.config.max_length - self.settings.max_completion_tokens
        items, lines, too_long = [], [], []
        for ex in examples:
            if not isinstance(ex, PromptExample):
                raise DataError(f"{path} line {getattr(ex, 'line', '?')}: objective 'grpo' needs RFT rows (messages "
                                "ending with the user's turn, other fields for the grader)")
            ids = render_prompt(tokenizer, ex.prompt)
            if len(ids) > budget:
                too_long.append(ex.line)
                continue
            items.append(PromptItem(ids, ex.item, index=len(items)))
            lines.append(ex.line)
        if not items:
            raise DataError(f"{path}: no prompt fits max_length={self.config.max_length} minus "
                            f"grpo.max_completion_tokens={self.settings.max_completion_tokens}")
        warnings = [(f"{path}: {len(too_long)} prompt(s) longer than max_length - max_completion_tokens = {budget} "
                    f"tokens were left out (lines {', '.join(map(str, too_long[:10]))})")] if too_long else []
        source = {"path": str(path), "sha256": sha256, "examples": len(items), "prompts": len(items),
                  "tokens": sum(len(it) for it in items), "trained_tokens": None, "dropped": len(too_long),
                  "truncated": 0}
        return RenderedSet(items, lines, source, warnings)

    # ------------------------------------------------------------------------------------- sizes
    def tokens(self, item) -> int:
        if isinstance(item, PromptItem):  # before sampling: the most it can become
            return self.settings.group_size * (len(item) + self.settings.max_completion_tokens)
        return len(item)

    def normalizer(self, item) -> int:
        if self.settings.loss_type == "dapo":
            return item.completion_tokens
        return len(item.completions)

    def trained_tokens(self, item) -> int:
        return item.completion_tokens if isinstance(item, Rollouts) else 0

    # ------------------------------------------------------------------------------------- setup
    def setup(self, ctx) -> None:
        self.model, self.tokenizer, self.runtime = ctx.model, ctx.tokenizer, ctx.runtime
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        self.sampler = TorchSampler(stop_token_ids(self.tokenizer), pad)
        if self.settings.beta and not hasattr(ctx.model, "disable_adapter"):
            raise ConfigError("grpo.beta: the KL penalty's reference is the model with its adapter disabled; "
                              "method full has no adapter (use method lora, or beta 0)")
        self.grader.__enter__()

    def close(self) -> None:
        self.grader.__exit__(None, None, None)

    def _generator(self, step: int, stream: int):
        import torch

        g = torch.Generator(device=self.runtime.device)
        g.manual_seed((self.config.seed * 1_000_003 + step * 7919 + stream) % (2**63))
        return g

    def _sample_and_grade(self, prompts: list[PromptItem], n: int, params: SamplingParams, generator):
        """(completion token ids [P][n], rewards [P][n], grader error count)."""
        from honing.graders import Sample

        completions = self.sampler.sample(self.model, [p.prompt_ids for p in prompts], n, params, generator)
        samples = [Sample(output_text=self.tokenizer.decode(c, skip_special_tokens=True).strip(), item=p.item)
                   for p, group in zip(prompts, completions) for c in group]
        results = self.grader.grade(samples) if samples else []
        rewards = [r.reward if math.isfinite(r.reward) else 0.0 for r in results]
        errors = sum(1 for r in results if any((r.metadata or {}).get("errors", {}).values()))
        return completions, [rewards[i * n:(i + 1) * n] for i in range(len(prompts))], errors

    # ------------------------------------------------------------------------------------- a step
    def prepare_step(self, step: int, batches: list[list]) -> tuple[list[list], dict]:
        """Sample and grade the step's prompts; micro-batches of PromptItems become micro-batches of Rollouts.
        Returns them and the step's statistics as (sum, count) pairs the loop sums over processes."""
        import torch

        s = self.settings
        prompts = [p for b in batches for p in b]
        if not prompts:
            return batches, {}
        params = SamplingParams(s.max_completion_tokens, s.temperature, s.top_p)
        rank = self.runtime.dist.rank
        completions, rewards, errors = self._sample_and_grade(prompts, s.group_size, params,
                                                              self._generator(step, rank))
        r = torch.tensor(rewards, dtype=torch.float64)
        adv = group_advantages(r, s.scale_rewards)
        groups = iter([Rollouts(p, c, rw, a) for p, c, rw, a in zip(prompts, completions, rewards, adv.tolist())])
        out = [[next(groups) for _ in b] for b in batches]
        lengths = [len(c) for group in completions for c in group]
        stops = set(self.sampler.stop_ids)
        n = float(r.numel())
        stats = {
            "reward": (float(r.sum()), n),
            "reward_std": (float(r.std(dim=1).nan_to_num(0.0).sum()), float(len(prompts))),
            "frac_reward_zero_std": (float((r.std(dim=1).nan_to_num(0.0) == 0).sum()), float(len(prompts))),
            "completion_length": (float(sum(lengths)), n),
            "clipped_ratio": (float(sum(1 for g in completions for c in g if not c or c[-1] not in stops)), n),
            "grader_errors": (float(errors), n),
        }
        return out, stats

    def collate(self, items: list, pad_id: int) -> dict:
        import torch

        seqs = [seq for group in items for seq in group.sequences()]
        batch = collate_sequences(seqs, pad_id, self.config.packing)
        s = self.settings
        weights = []
        for group in items:
            for c in group.completions:
                weights.append(1.0 / max(len(c), 1) if s.loss_type == "grpo"
                               else 1.0 / s.max_completion_tokens if s.loss_type == "dr_grpo" else 1.0)
        batch["advantages"] = torch.tensor([a for g in items for a in g.advantages], dtype=torch.float32)
        batch["token_weights"] = torch.tensor(weights, dtype=torch.float32)
        return batch

    def loss(self, model, batch) -> LossOutput:
        s = self.settings
        logps, who = token_logps(model, batch)
        advantages = batch["advantages"].to(logps.device).index_select(0, who)
        weights = batch["token_weights"].to(logps.device).index_select(0, who)
        per_token = policy_token_losses(logps, advantages, s.epsilon, s.epsilon_high or s.epsilon)
        stats = {}
        if s.beta:
            kl = self._token_kl(model, batch, logps)
            per_token = per_token + s.beta * kl
            stats["kl"] = (kl.detach() * weights).sum()
        return LossOutput((per_token * weights).sum(), stats)

    def _token_kl(self, model, batch, logps):
        """k3 estimator of KL(policy || reference) per token (TRL's): exp(ref - logp) - (ref - logp) - 1."""
        import torch

        core = getattr(model, "module", model)  # the PeftModel inside DDP (FSDP2 shards it in place)
        with torch.no_grad(), core.disable_adapter():
            ref, _ = token_logps(core, batch)
        diff = ref - logps
        return torch.exp(diff) - diff - 1

    # ------------------------------------------------------------------------------------- validation
    def evaluate(self, items: list) -> dict:
        """One completion per eval prompt (eval_temperature; greedy by default), graded: the mean reward and
        its bootstrap 95% CI, over every process's share."""
        s, dist = self.settings, self.runtime.dist
        mine = list(range(dist.rank, len(items), dist.world_size))
        params = SamplingParams(s.max_completion_tokens, s.eval_temperature, s.top_p)
        per_item = [0.0] * len(items)
        if mine:
            _, rewards, _ = self._sample_and_grade([items[i] for i in mine], 1, params,
                                                   self._generator(-1, dist.rank))
            for i, rw in zip(mine, rewards):
                per_item[i] = rw[0]
        scores = dist.all_reduce_sum(per_item)
        ci = mean_ci(scores, seed=self.config.seed)
        return {"eval_reward": round(ci.estimate, 4), "eval_reward_ci_low": round(ci.low, 4),
                "eval_reward_ci_high": round(ci.high, 4)}


__all__ = ["GRPOObjective", "PromptItem", "Rollouts", "group_advantages", "policy_token_losses"]
