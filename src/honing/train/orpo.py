"""ORPO (odds-ratio preference optimization) as an objective of the one loop: preference pairs, no reference
model, the supervised loss on the chosen reply and the preference term in one loss.

    pair -> one forward over chosen and rejected (as DPO/SimPO: :mod:`honing.train.preference`)
    a_c, a_r = mean log-prob per reply token of the chosen / rejected reply
    log odds(y) = a - log(1 - exp(a))
    loss = -a_c  +  beta x -log sigmoid(log odds(chosen) - log odds(rejected))

The odds-ratio term is TRL's ``ORPOTrainer.odds_ratio_loss`` (``log1p(-exp(a))`` written as
``log(-expm1(a))``, equal and finite as ``a`` nears 0). The supervised term follows the ORPO paper (eq. 6:
the mean NLL of each chosen reply's tokens, averaged over pairs) where TRL takes one token-mean over the chosen
sequences of a micro-batch, prompt tokens included: the per-pair form keeps the normalizer one unit per pair,
so batch x accumulation gives the same gradient, and the prompt is never trained (as in every Honing objective).
"""

from __future__ import annotations

from honing.train.objectives import LossOutput
from honing.train.preference import _PairObjective


def log_odds(avg_logps):
    """log(p / (1 - p)) of a reply whose mean per-token log-prob is ``avg_logps`` (< 0)."""
    import torch

    return avg_logps - torch.log(-torch.expm1(avg_logps))


def orpo_losses(policy_chosen, policy_rejected, chosen_tokens, rejected_tokens, beta: float):
    """(per-pair losses, chosen NLL, log sigmoid(log odds ratio), log odds ratio), all [B], from summed reply
    log-probs and their token counts."""
    import torch.nn.functional as F

    avg_c = policy_chosen / chosen_tokens.clamp(min=1)
    avg_r = policy_rejected / rejected_tokens.clamp(min=1)
    ratio = log_odds(avg_c) - log_odds(avg_r)
    log_sig = F.logsigmoid(ratio)
    nll = -avg_c
    return nll - beta * log_sig, nll.detach(), log_sig.detach(), ratio.detach()


class ORPOObjective(_PairObjective):
    """ORPO: chosen-reply NLL plus beta x the odds-ratio loss; reference-free."""

    name = "orpo"

    def loss(self, model, batch) -> LossOutput:
        pc, pr, nc, nr = self._policy(model, batch)
        beta = self.config.orpo.beta
        losses, nll, log_sig, ratio = orpo_losses(pc, pr, nc, nr, beta)
        # TRL's names: rewards are beta x the mean per-token log-prob of each reply.
        rc, rr = beta * pc.detach() / nc.clamp(min=1), beta * pr.detach() / nr.clamp(min=1)
        stats = {"nll_loss": nll.sum(), "log_odds_ratio": log_sig.sum(), "log_odds_chosen": ratio.sum(),
                 "rewards/chosen": rc.sum(), "rewards/rejected": rr.sum(), "rewards/margin": (rc - rr).sum(),
                 "rewards/accuracy": (rc > rr).float().sum(), "logps/chosen": pc.detach().sum(),
                 "logps/rejected": pr.detach().sum()}
        return LossOutput(losses.sum(), stats)
