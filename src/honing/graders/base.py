"""The grader interface every grader type implements, and the key checks their loaders share."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from honing.graders.core import GraderError, GradeResult, Sample, metadata, no_errors, set_error, where
from honing.graders.templates import Template, Unresolved


class Grader:
    """Grades batches of samples. A context manager: graders that hold processes or models (python,
    score_model, multi over them) start them on first use and release them on exit or ``close()``."""

    type: str = ""

    def __init__(self, name: str):
        self.name = name

    def item_fields(self) -> set[str]:
        """The top-level item fields the grader's templates reference (each row must have them)."""
        return set()

    def grade(self, samples: Sequence[Sample]) -> list[GradeResult]:
        raise NotImplementedError

    def close(self) -> None:
        """Release worker processes and models (the grader can still grade: it starts them again)."""

    def __enter__(self):  # returns self (typing.Self needs Python 3.11)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- helpers for subclasses ------------------------------------------------------------------
    def failed(self, flag: str, detail: str, execution_time: float = 0.0, **extra: Any) -> GradeResult:
        """Reward 0 with ``flag`` raised and its reason."""
        errors = set_error(no_errors(), flag, detail, extra.pop("server_error_type", None))
        return GradeResult(0.0, metadata(self.name, self.type, errors, execution_time, **extra))

    def ok(self, reward: float, execution_time: float = 0.0, **extra: Any) -> GradeResult:
        return GradeResult(float(reward), metadata(self.name, self.type, None, execution_time, **extra))

    def grade_each(self, samples: Sequence[Sample], templates: Sequence[Template],
                   score: Callable[[list[list[str]]], list[float]]) -> list[GradeResult]:
        """Fill ``templates`` for every sample, score the filled rows in one batched call, and give the
        samples whose templates could not be filled reward 0 with the reason."""
        start = time.perf_counter()
        filled: list[list[str] | Unresolved] = []
        for s in samples:
            ns = s.namespace()
            try:
                filled.append([t.render(ns, s.item) for t in templates])
            except Unresolved as e:
                filled.append(e)
        good = [i for i, f in enumerate(filled) if not isinstance(f, Unresolved)]
        scores = score([filled[i] for i in good]) if good else []
        each = (time.perf_counter() - start) / max(1, len(samples))
        results: list[GradeResult] = []
        by_index = dict(zip(good, scores, strict=True))
        for i, f in enumerate(filled):
            if isinstance(f, Unresolved):
                results.append(self.failed(f.flag, str(f), each))
            else:
                results.append(self.ok(by_index[i], each))
        return results


def check_keys(spec: dict, path: str, required: Sequence[str], optional: Sequence[str] = ()) -> None:
    """Every required key present, no key outside required + optional + the common ones."""
    allowed = {"type", "name", *required, *optional}
    for key in required:
        if key not in spec:
            raise GraderError(f"{where(path, key)}: required for a {spec.get('type')} grader")
    unknown = sorted(k for k in spec if k not in allowed)
    if unknown:
        raise GraderError(f"{where(path, unknown[0])}: unknown key for a {spec.get('type')} grader "
                          f"(allowed: {', '.join(sorted(allowed))})")


def one_of(spec: dict, path: str, key: str, choices: Sequence[str]) -> str:
    value = spec.get(key)
    if value not in choices:
        raise GraderError(f"{where(path, key)}: {value!r} is not one of {', '.join(choices)}")
    return value


def grader_name(spec: dict, path: str) -> str:
    """OpenAI requires a name; Honing defaults it to the type so a quick test grader needs none."""
    name = spec.get("name", spec.get("type"))
    if not isinstance(name, str) or not name.strip():
        raise GraderError(f"{where(path, 'name')}: must be a non-empty string")
    return name
