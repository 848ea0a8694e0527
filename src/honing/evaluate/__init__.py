"""Evaluation: the fine-tuned model against zero-shot, few-shot and retrieval baselines on the base
model, with task metrics, bootstrap intervals, a forgetting check and a report.

Public API: :func:`evaluate` -> :class:`EvalResult` (``.to_dict()``, ``.summary_table()``,
``.report_html``).
"""

from honing.evaluate.runner import ApproachResult, EvalResult, evaluate

__all__ = ["ApproachResult", "EvalResult", "evaluate"]
