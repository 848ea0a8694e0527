"""OpenAI's grader endpoints: ``POST /v1/fine_tuning/alpha/graders/run`` and ``/validate``, evaluated by
``honing.graders`` exactly as ``hone grade`` and reinforcement jobs evaluate them (one runner everywhere).

Python graders run only in the bubblewrap sandbox here (the server never honours the CLI's unsafe opt-in):
no network, no view of the data directory or any project's files, bounded CPU, memory, processes and
output. A grader that misbehaves scores 0 with the reason in ``metadata.errors``; the server goes on.
The official client's ``client.fine_tuning.alpha.graders.run(...)`` / ``.validate(...)`` work unchanged.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from honing.graders import GraderError, Sample, load_grader, run_result_json
from honing.serve import schemas as S
from honing.serve.auth import Project
from honing.serve.errors import APIError

router = APIRouter(prefix="/v1/fine_tuning/alpha/graders", responses=S.ERROR_RESPONSES, tags=["graders"])
MAX_SAMPLE_CHARS = 1_000_000


class GraderRun(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grader: dict[str, Any]
    model_sample: str = Field(max_length=MAX_SAMPLE_CHARS)
    item: Any = None
    reference_answer: Any = None  # OpenAI's older field: kept as item.reference_answer when item lacks it


class GraderValidate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grader: dict[str, Any]


def _load(spec: dict):
    try:
        return load_grader(spec, path="grader")  # python graders: the sandbox or a refusal, never unsandboxed
    except GraderError as e:
        raise APIError(400, str(e), param="grader") from None


@router.post("/validate")
def validate_grader(_project: Project, body: GraderValidate) -> dict:
    """The grader back when it validates; 400 with the path of the first problem otherwise."""
    _load(body.grader).close()
    return {"grader": body.grader}


@router.post("/run")
def run_grader(_project: Project, body: GraderRun) -> dict:
    """One sample graded: ``reward``, ``metadata`` (errors, execution_time, scores), ``sub_rewards``."""
    item = body.item if body.item is not None else {}
    if not isinstance(item, dict):
        raise APIError(400, "item: expected an object (the fields {{item.<field>}} templates read)", param="item")
    if body.reference_answer is not None:
        item = {"reference_answer": body.reference_answer, **item}
    with _load(body.grader) as grader:
        (result,) = grader.grade([Sample(output_text=body.model_sample, item=item)])
    return run_result_json(result)


__all__ = ["router"]
