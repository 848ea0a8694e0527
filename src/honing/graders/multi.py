"""``multi`` graders: named sub-graders, combined per sample by ``calculate_output`` (formula.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from honing.graders.base import Grader, check_keys, grader_name
from honing.graders.core import (
    GraderError,
    GradeResult,
    Sample,
    merge_errors,
    metadata,
    no_errors,
    set_error,
    where,
)
from honing.graders.formula import Formula, FormulaError


class MultiGrader(Grader):
    """Each sub-grader grades the whole batch (batched); a sub-grader's error scores it 0 and is reported
    in the multi grader's ``metadata.errors``; ``scores`` and ``sub_rewards`` hold every sub-reward."""

    type = "multi"

    def __init__(self, spec: dict, path: str, load: Callable[[dict, str], Grader]):
        check_keys(spec, path, ("graders", "calculate_output"))
        super().__init__(grader_name(spec, path))
        graders = spec["graders"]
        if isinstance(graders, dict) and isinstance(graders.get("type"), str):
            # One grader object, as the openai client's MultiGrader type declares it: named by its name.
            graders = {grader_name(graders, where(path, "graders")): graders}
        if not isinstance(graders, dict) or not graders:
            raise GraderError(f"{where(path, 'graders')}: must be an object naming one or more graders "
                              '({"<name>": {grader}, ...})')
        self.graders: dict[str, Grader] = {}
        for key, sub in graders.items():
            if not isinstance(sub, dict):
                raise GraderError(f"{where(where(path, 'graders'), key)}: must be a grader object")
            if sub.get("type") == "multi":
                raise GraderError(f"{where(where(path, 'graders'), key)}: a multi grader cannot contain another")
            self.graders[key] = load(sub, where(where(path, "graders"), key))
        self.formula = Formula(spec["calculate_output"], list(self.graders), where(path, "calculate_output"))

    def item_fields(self) -> set[str]:
        return set().union(*(g.item_fields() for g in self.graders.values()))

    def grade(self, samples: Sequence[Sample]) -> list[GradeResult]:
        per_grader = {key: g.grade(samples) for key, g in self.graders.items()}
        return [self._combine({key: rs[k] for key, rs in per_grader.items()}) for k in range(len(samples))]

    def _combine(self, subs: dict[str, GradeResult]) -> GradeResult:
        errors = no_errors()
        usage: dict = {}
        tokens = None
        for r in subs.values():
            merge_errors(errors, r.metadata["errors"])
            usage.update(r.token_usage_per_model)
            if r.metadata.get("token_usage") is not None:
                tokens = (tokens or 0) + r.metadata["token_usage"]
        rewards = {key: r.reward for key, r in subs.items()}
        try:
            reward = self.formula.evaluate(rewards)
        except FormulaError as e:
            reward = 0.0
            set_error(errors, "other_error", str(e))
        judges = [r.metadata["sampled_model_name"] for r in subs.values() if r.metadata.get("sampled_model_name")]
        meta = metadata(self.name, self.type, errors, sum(r.metadata["execution_time"] for r in subs.values()),
                        scores=rewards, token_usage=tokens, sampled_model_name=judges[0] if judges else None)
        return GradeResult(reward, meta, sub_rewards=dict(rewards), token_usage_per_model=usage)

    def close(self) -> None:
        for g in self.graders.values():
            g.close()
