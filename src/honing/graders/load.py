"""``load_grader``: an OpenAI grader object (the JSON a user sends OpenAI) to a Honing grader."""

from __future__ import annotations

import functools

from honing.graders.base import Grader
from honing.graders.core import GraderError, where
from honing.graders.judge import ScoreModelGrader
from honing.graders.multi import MultiGrader
from honing.graders.python import PythonGrader
from honing.graders.sandbox import SandboxLimits
from honing.graders.text import StringCheckGrader, TextSimilarityGrader

GRADER_TYPES = ("string_check", "text_similarity", "python", "score_model", "multi")


def load_grader(spec: object, *, path: str = "", limits: SandboxLimits | None = None,
                allow_unsafe_python: bool = False) -> Grader:
    """Validate ``spec`` and build its grader; GraderError("<path>: <what>") when it does not validate.

    ``path`` prefixes every error path (e.g. "method.reinforcement.grader"); ``limits`` are the python
    graders' sandbox limits; ``allow_unsafe_python`` lets the CLI run python graders unsandboxed when
    HONING_UNSAFE_PYTHON_GRADER=1 and bubblewrap is missing (never set it in the service)."""
    if not isinstance(spec, dict):
        raise GraderError(f"{path or 'grader'}: must be a JSON object, not {type(spec).__name__}")
    kind = spec.get("type")
    here = where(path, "type")
    if kind is None:
        raise GraderError(f"{here}: required (one of {', '.join(GRADER_TYPES)})")
    if kind == "label_model":
        raise GraderError(f"{here}: 'label_model' is not supported (a score_model grader does the same with "
                          "a numeric answer)")
    if kind not in GRADER_TYPES:
        raise GraderError(f"{here}: {kind!r} is not one of {', '.join(GRADER_TYPES)}")
    if kind == "string_check":
        return StringCheckGrader(spec, path)
    if kind == "text_similarity":
        return TextSimilarityGrader(spec, path)
    if kind == "python":
        return PythonGrader(spec, path, limits, allow_unsafe_python)
    if kind == "score_model":
        return ScoreModelGrader(spec, path)
    load_sub = functools.partial(_load_sub, limits=limits, allow_unsafe_python=allow_unsafe_python)
    return MultiGrader(spec, path, load_sub)


def _load_sub(spec: dict, path: str, *, limits: SandboxLimits | None, allow_unsafe_python: bool) -> Grader:
    return load_grader(spec, path=path, limits=limits, allow_unsafe_python=allow_unsafe_python)
