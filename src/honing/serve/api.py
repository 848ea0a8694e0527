"""The OpenAI-compatible files and fine-tuning endpoints (+ Honing's extensions for the dashboard).

Every handler takes the caller's project from :data:`honing.serve.auth.Project` and filters every query by it; an id
of another project is the same 404 as one that does not exist.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Form, Header, Query, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import and_, or_, select
from sqlalchemy.exc import IntegrityError

from honing.rundir import RunDir
from honing.serve import jobs as J
from honing.serve import schemas as S
from honing.serve.auth import Project
from honing.serve.db import Checkpoint, File, IdempotentRequest, Job, JobEvent, add_event, new_id, now
from honing.serve.errors import APIError, not_found
from honing.serve.files import UPLOAD_PURPOSES, clean_filename, file_object, get_file, store_upload
from honing.serve.redact import Redactor

router = APIRouter(prefix="/v1", responses=S.ERROR_RESPONSES)
IdemKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=255,
                                       description="Repeat a POST with the same key: one object, same answer.")]


def _page(rows: list, limit: int, to_obj) -> dict:
    data = [to_obj(r) for r in rows[:limit]]
    return {"object": "list", "data": data, "has_more": len(rows) > limit,
            "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}


def _remembered(Session, project: str, key: str | None, path: str) -> str | None:
    if not key:
        return None
    with Session() as s:
        row = s.scalar(select(IdempotentRequest).where(IdempotentRequest.project == project,
                                                       IdempotentRequest.key == key))
    if row is None:
        return None
    if row.path != path:
        raise APIError(409, f"Idempotency-Key '{key}' was already used for {row.path}", param="Idempotency-Key",
                       code="idempotency_key_reused")
    return row.object_id


# -- files ----------------------------------------------------------------------------------------
@router.post("/files", tags=["files"], response_model=S.FileObject)
def upload_file(request: Request, project: Project, file: UploadFile,
                purpose: Annotated[str, Form(max_length=40)], idem: IdemKey = None) -> dict:
    S = request.app.state.Session
    if purpose not in UPLOAD_PURPOSES:
        raise APIError(400, f"purpose: {purpose!r} is not one of {', '.join(UPLOAD_PURPOSES)}", param="purpose")
    known = _remembered(S, project, idem, "/v1/files")
    if known:
        with S() as s:
            return file_object(get_file(s, project, known))
    row = store_upload(request.app.state.settings, project, clean_filename(file.filename), purpose, file.file)
    try:
        with S.begin() as s:
            s.add(row)
            if idem:
                s.add(IdempotentRequest(project=project, key=idem, path="/v1/files", object_id=row.id,
                                        created_at=now()))
    except IntegrityError:  # a concurrent duplicate with the same Idempotency-Key won the race
        Path(row.path).unlink(missing_ok=True)
        known = _remembered(S, project, idem, "/v1/files")
        if not known:
            raise
        with S() as s:
            return file_object(get_file(s, project, known))
    except BaseException:
        Path(row.path).unlink(missing_ok=True)  # no file without its row
        raise
    return file_object(row)


@router.get("/files", tags=["files"], response_model=S.FilePage)
def list_files(request: Request, project: Project, purpose: str | None = None,
               limit: Annotated[int, Query(ge=1, le=10000)] = 10000,
               order: Literal["asc", "desc"] = "desc", after: str | None = None) -> dict:
    with request.app.state.Session() as s:
        q = select(File).where(File.project == project)
        if purpose:
            q = q.where(File.purpose == purpose)
        desc = order == "desc"
        if after:
            a = get_file(s, project, after, param="after")
            older = or_(File.created_at < a.created_at, and_(File.created_at == a.created_at, File.id < a.id))
            newer = or_(File.created_at > a.created_at, and_(File.created_at == a.created_at, File.id > a.id))
            q = q.where(older if desc else newer)
        q = q.order_by(File.created_at.desc(), File.id.desc()) if desc else q.order_by(File.created_at, File.id)
        rows = s.scalars(q.limit(limit + 1)).all()
    return _page(rows, limit, file_object)


@router.get("/files/{file_id}", tags=["files"], response_model=S.FileObject)
def retrieve_file(request: Request, project: Project, file_id: str) -> dict:
    with request.app.state.Session() as s:
        return file_object(get_file(s, project, file_id))


@router.get("/files/{file_id}/content", tags=["files"])
def file_content(request: Request, project: Project, file_id: str):
    with request.app.state.Session() as s:
        f = get_file(s, project, file_id)
    if not Path(f.path).is_file():
        raise APIError(404, f"No content for file {file_id}", code="file_not_found")
    return FileResponse(f.path, media_type="application/octet-stream", filename=f.filename)


@router.get("/files/{file_id}/validation", tags=["honing"], response_model=S.ValidationReport)
def file_validation(request: Request, project: Project, file_id: str) -> dict:
    """Honing: the `hone data validate` report of a file ({ok, problems: [{line, category, message}], stats})."""
    with request.app.state.Session() as s:
        f = get_file(s, project, file_id)
    report = f.validation
    if report is None:
        from honing.serve.files import validation_of

        report = validation_of(Path(f.path))
    return Redactor(request.app.state.settings).data(report)  # its path is the server's: the file's id instead


@router.delete("/files/{file_id}", tags=["files"], response_model=S.Deleted)
def delete_file(request: Request, project: Project, file_id: str) -> dict:
    with request.app.state.Session.begin() as s:
        f = get_file(s, project, file_id)
        busy = s.scalar(select(Job.id).where(
            Job.project == project, Job.status.in_(("validating_files", "queued", "running", "paused")),
            or_(Job.training_file == file_id, Job.validation_file == file_id)))
        if busy:
            raise APIError(409, f"File {file_id} is used by job {busy}, which has not ended", code="file_in_use")
        path = f.path
        s.delete(f)
    Path(path).unlink(missing_ok=True)
    return {"id": file_id, "object": "file", "deleted": True}


# -- fine-tuning jobs -----------------------------------------------------------------------------
class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=1000)
    training_file: str = Field(min_length=1, max_length=100)
    validation_file: str | None = Field(None, max_length=100)
    hyperparameters: dict[str, Any] | None = None
    method: dict[str, Any] | None = None
    suffix: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9_.-]*$")
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    metadata: dict[str, Annotated[str, Field(max_length=512)]] | None = Field(None, max_length=16)
    integrations: list[Any] | None = None
    honing_config: dict[str, Any] | None = Field(
        None, description="Honing: extra training keys for this job (e.g. max_steps, save_every, lora).")


def _check_model(settings, project: str, model: str) -> str:
    """What the base ``model`` loads (the catalog's name, or the path of an operator's model). Anything the
    server does not offer this project is the same 400, whether or not it exists on the server's disk."""
    ref = settings.base_model_ref(project, model)
    if ref is None:
        from honing.models.catalog import EMBEDDED

        offered = [*EMBEDDED, *(m for m in settings.offered_base_models(project) if m not in EMBEDDED)]
        raise APIError(400, f"model: '{model}' is not available for fine-tuning here (available: "
                            f"{', '.join(offered)})", param="model", code="model_not_available")
    return ref


def get_job(s, project: str, job_id: str, *, lock: bool = False) -> Job:
    q = select(Job).where(Job.id == job_id, Job.project == project)
    job = s.scalar(q.with_for_update() if lock else q)
    if job is None:
        raise not_found("fine-tuning job", job_id)
    return job


@router.post("/fine_tuning/jobs", tags=["fine-tuning"], response_model=S.FineTuningJob)
def create_job(request: Request, project: Project, body: JobCreate, idem: IdemKey = None) -> dict:
    S, settings = request.app.state.Session, request.app.state.settings
    known = _remembered(S, project, idem, "/v1/fine_tuning/jobs")
    if known:
        with S() as s:
            return J.job_object(get_job(s, project, known))
    method, requested = J.hyperparameters_of(body.model_dump())
    if method["type"] == "reinforcement" and body.validation_file is None:
        raise APIError(400, "validation_file: required for method reinforcement (the validation reward picks the "
                            "best checkpoint)", param="validation_file")
    extra = J.check_extra_config(body.honing_config)
    base = _check_model(settings, project, body.model)
    job_id = new_id("ftjob")
    seed = body.seed if body.seed is not None else 42
    try:
        with S.begin() as s:
            for param, fid in (("training_file", body.training_file), ("validation_file", body.validation_file)):
                if fid is not None:
                    f = get_file(s, project, fid, param=param)
                    if f.purpose != "fine-tune":
                        raise APIError(400, f"{param}: file {fid} has purpose '{f.purpose}', expected 'fine-tune'",
                                       param=param, code="invalid_file_purpose")
            job = Job(id=job_id, project=project, model=body.model, training_file=body.training_file,
                      validation_file=body.validation_file, status="validating_files", method=method,
                      config=J.training_config(requested, seed, extra, base if base != body.model else None),
                      suffix=body.suffix or None, seed=seed,
                      job_metadata=body.metadata, result_files=[], run_dir=str(settings.runs_dir / job_id),
                      created_at=now(), enqueued_at=time.time(), attempts=0, model_deleted=False)
            s.add(job)
            s.flush()
            add_event(s, job, "status:created", f"Created fine-tuning job: {job_id}")
            for key in requested.get("not_applicable", []):
                add_event(s, job, f"not_applicable:{key}", f"hyperparameters.{key}: accepted but not applicable "
                          f"here ({J.NOT_APPLICABLE[key]})", level="warn")
            if idem:
                s.add(IdempotentRequest(project=project, key=idem, path="/v1/fine_tuning/jobs", object_id=job_id,
                                        created_at=now()))
    except IntegrityError:
        known = _remembered(S, project, idem, "/v1/fine_tuning/jobs")
        if not known:
            raise
        with S() as s:
            return J.job_object(get_job(s, project, known))
    return J.job_object(job)


@router.get("/fine_tuning/jobs", tags=["fine-tuning"], response_model=S.JobPage)
def list_jobs(request: Request, project: Project, after: str | None = None,
              limit: Annotated[int, Query(ge=1, le=100)] = 20) -> dict:
    # metadata[k]=v filters (deepObject style, as the client sends them)
    meta = {k[len("metadata["):-1]: v for k, v in request.query_params.items()
            if k.startswith("metadata[") and k.endswith("]")}
    with request.app.state.Session() as s:
        q = select(Job).where(Job.project == project)
        if after:
            a = get_job(s, project, after)
            q = q.where(or_(Job.created_at < a.created_at, and_(Job.created_at == a.created_at, Job.id < a.id)))
        q = q.order_by(Job.created_at.desc(), Job.id.desc())
        if meta:  # JSON filtering differs between SQLite and PostgreSQL: filter in Python, page after
            rows = [j for j in s.scalars(q).all()
                    if all((j.job_metadata or {}).get(k) == v for k, v in meta.items())][: limit + 1]
        else:
            rows = s.scalars(q.limit(limit + 1)).all()
    return _page(rows, limit, J.job_object)


@router.get("/fine_tuning/jobs/{job_id}", tags=["fine-tuning"], response_model=S.FineTuningJob)
def retrieve_job(request: Request, project: Project, job_id: str) -> dict:
    with request.app.state.Session() as s:
        return J.job_object(get_job(s, project, job_id))


@router.post("/fine_tuning/jobs/{job_id}/cancel", tags=["fine-tuning"], response_model=S.FineTuningJob)
def cancel_job(request: Request, project: Project, job_id: str) -> dict:
    with request.app.state.Session.begin() as s:
        job = get_job(s, project, job_id, lock=True)
        if job.status in J.TERMINAL:
            raise APIError(409, f"Job {job_id} has already {job.status}; it cannot be cancelled",
                           code="job_not_cancellable")
        if job.status == "running":
            job.control = "cancel"  # the worker stops the process group and marks it cancelled
            add_event(s, job, "control:cancel", "Cancellation requested")
        else:
            job.status, job.finished_at, job.control = "cancelled", now(), None
            add_event(s, job, "status:cancelled", "Fine-tuning job cancelled")
    return J.job_object(job)


@router.post("/fine_tuning/jobs/{job_id}/pause", tags=["fine-tuning"], response_model=S.FineTuningJob)
def pause_job(request: Request, project: Project, job_id: str) -> dict:
    with request.app.state.Session.begin() as s:
        job = get_job(s, project, job_id, lock=True)
        if job.status not in ("running", "queued", "validating_files"):
            raise APIError(409, f"Job {job_id} is {job.status}; only a running or queued job can be paused",
                           code="job_not_pausable")
        if job.status == "running":
            job.control = "pause"
            add_event(s, job, f"control:pause:{job.attempts}", "Pause requested: stopping at a checkpoint")
        else:
            job.status = "paused"
            add_event(s, job, f"status:paused:{job.attempts}", "Fine-tuning job paused")
    return J.job_object(job)


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    force: bool = Field(False, description="Promote even though the job's release gate failed.")


@router.post("/fine_tuning/jobs/{job_id}/promote", tags=["honing"], response_model=S.FineTuningJob)
def promote_job(request: Request, project: Project, job_id: str, body: PromoteRequest | None = None) -> dict:
    """Make a succeeded job's model servable when its release gate failed (the gate's verdict is in run.json
    and the job's events); without ``force`` a failed gate is a 409 naming its reasons."""
    with request.app.state.Session.begin() as s:
        job = get_job(s, project, job_id, lock=True)
        if job.status != "succeeded":
            raise APIError(409, f"Job {job_id} is {job.status}; only a succeeded job's model can be promoted",
                           code="job_not_succeeded")
        if job.fine_tuned_model:
            return J.job_object(job)
        verdict = RunDir(job.run_dir).record().get("gate") or {}
        if not (body and body.force) and not verdict.get("passed", False):
            reasons = "; ".join(verdict.get("reasons", []))
            raise APIError(409, f"The release gate of job {job_id} failed ({reasons or 'no verdict'}); pass "
                           "force=true to promote it anyway", code="gate_failed")
        job.fine_tuned_model = J.fine_tuned_name(job)
        add_event(s, job, "status:model", f"Fine-tuned model promoted{' despite the failed gate' if body and body.force else ''}: "
                  f"{job.fine_tuned_model}")
    return J.job_object(job)


@router.post("/fine_tuning/jobs/{job_id}/resume", tags=["fine-tuning"], response_model=S.FineTuningJob)
def resume_job(request: Request, project: Project, job_id: str) -> dict:
    with request.app.state.Session.begin() as s:
        job = get_job(s, project, job_id, lock=True)
        if job.status != "paused":
            raise APIError(409, f"Job {job_id} is {job.status}; only a paused job can be resumed",
                           code="job_not_paused")
        # Files not yet validated go back to validation; otherwise the queue (resume from the checkpoint).
        job.status = "queued" if job.attempts or job.total_steps else "validating_files"
        add_event(s, job, f"control:resume:{job.attempts}", "Fine-tuning job resumed")
    return J.job_object(job)


@router.get("/fine_tuning/jobs/{job_id}/events", tags=["fine-tuning"], response_model=S.EventPage)
def list_events(request: Request, project: Project, job_id: str, after: str | None = None,
                limit: Annotated[int, Query(ge=1, le=1000)] = 20) -> dict:
    with request.app.state.Session() as s:
        get_job(s, project, job_id)
        q = select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.project == project)
        if after:
            a = s.scalar(select(JobEvent.seq).where(JobEvent.id == after, JobEvent.job_id == job_id))
            if a is None:
                raise not_found("event", after)
            q = q.where(JobEvent.seq < a)
        rows = s.scalars(q.order_by(JobEvent.seq.desc()).limit(limit + 1)).all()
    return _page(rows, limit, J.event_object)


@router.get("/fine_tuning/jobs/{job_id}/checkpoints", tags=["fine-tuning"], response_model=S.CheckpointPage)
def list_checkpoints(request: Request, project: Project, job_id: str, after: str | None = None,
                     limit: Annotated[int, Query(ge=1, le=100)] = 10) -> dict:
    with request.app.state.Session() as s:
        get_job(s, project, job_id)
        q = select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.project == project)
        if after:
            a = s.scalar(select(Checkpoint.step).where(Checkpoint.id == after, Checkpoint.job_id == job_id))
            if a is None:
                raise not_found("checkpoint", after)
            q = q.where(Checkpoint.step < a)
        rows = s.scalars(q.order_by(Checkpoint.step.desc()).limit(limit + 1)).all()
    return _page(rows, limit, J.checkpoint_object)


@router.get("/fine_tuning/jobs/{job_id}/metrics", tags=["honing"], response_model=S.MetricsRows)
def job_metrics(request: Request, project: Project, job_id: str) -> dict:
    """Honing: the run's metrics rows (step, train_loss, eval_loss, lr, ...), oldest first."""
    with request.app.state.Session() as s:
        job = get_job(s, project, job_id)
    rows = [{k: v for k, v in r.items() if k != "lines"} for r in RunDir(job.run_dir).metrics()]
    return {"object": "list", "data": rows, "total_steps": job.total_steps}


@router.get("/fine_tuning/jobs/{job_id}/report", tags=["honing"], response_class=HTMLResponse)
def job_report(request: Request, project: Project, job_id: str):
    """Honing: the evaluation report (HTML) written at the end of training; 404 until it exists."""
    with request.app.state.Session() as s:
        job = get_job(s, project, job_id)
    report = RunDir(job.run_dir).report_html
    if not report.is_file():
        raise APIError(404, f"Job {job_id} has no evaluation report (yet): it is written when a job with a "
                            "validation_file ends", code="report_not_found")
    # Written by the training process, which names the run and its files by their server paths.
    return HTMLResponse(Redactor(request.app.state.settings).text(report.read_text(encoding="utf-8")))

