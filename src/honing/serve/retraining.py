"""The retraining loop, scheduled: a production model that keeps itself up to date behind the release gate.

A **retraining policy** (``POST /v1/fine_tuning/retraining_policies``, Honing's extension) names a
fine-tuned model of the project and when to look at its traffic: every ``every_n_completions`` stored
completions and/or every ``interval_seconds``. Each check, run by whichever worker takes it (the database is
the queue: ``hone serve``'s own worker or ``hone worker``s elsewhere):

1. the stored completions of the production model since the last check are the current inputs; drift
   (``honing.lifecycle.drift``) compares them with the model's training data;
2. when drift is found or at least ``min_feedback`` answers were corrected since the last retrain
   (``honing.lifecycle.policy.decide``), the training file is built: the production model's training data
   plus the corrected answers as supervised examples (curated, leakage against the validation file removed,
   validated: ``honing.lifecycle.traffic``);
3. a fine-tuning job retrains the production job's recipe on it, on the ordinary job queue; its end-of-
   training evaluation compares it with the cheaper baselines and, on the same examples, with the
   production model (the gate's ``production``), and the gate decides;
4. a job that passes the gate becomes the policy's production model; a failed gate (or a failed or
   cancelled job) leaves production as it was.

Every step is an event on the production model's job (its page in the dashboard) and on the retrain job.

Crash safety: a check holds a lease on its policy row (``lease_until``); a worker killed during a check
leaves the lease to expire (on SQLite: to the next start of the only worker) and the check is done again,
since its results (file, job, cursors) are written in one transaction only while the lease is held. A worker
killed during the retrain job is the job queue's case: the job resumes from its last checkpoint. Production
changes only in :meth:`PolicyRunner.settle`, when a job that passed the gate has ended.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, or_, select, update

from honing.errors import HoningError
from honing.rundir import RunDir
from honing.serve import jobs as J
from honing.serve import schemas as S
from honing.serve.auth import Project
from honing.serve.db import File, Job, RetrainPolicy, StoredCompletion, add_event, new_id, now
from honing.serve.errors import APIError, not_found
from honing.serve.redact import Redactor
from honing.serve.settings import Settings

log = logging.getLogger("honing.serve.retraining")
router = APIRouter(prefix="/v1", responses=S.ERROR_RESPONSES)

CHECK_EVERY_S = 2.0  # how often a worker looks for a policy that is due
RETRY_AFTER_ERROR_S = 300.0  # a check that failed unexpectedly is tried again after this, not at every look
MIN_INTERVAL_S = 60


# -- the API object -------------------------------------------------------------------------------
class PolicyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=1000, description="The production model: a fine_tuned_model of "
                       "this project, from a supervised job with a validation_file (the gate's evaluation).")
    every_n_completions: int | None = Field(None, ge=1, le=10_000_000, description="Check after this many new "
                                            "stored completions of the model.")
    interval_seconds: int | None = Field(None, ge=MIN_INTERVAL_S, description="Check at least this often.")
    min_feedback: int = Field(10, ge=1, description="Retrain once this many answers were corrected since the "
                              "last retrain (drift found retrains too, given corrections to train on).")
    drift: bool = Field(True, description="Measure drift of the new requests against the training data.")
    gate: dict[str, Any] | None = Field(None, description="The release gate's settings (margin, baselines, "
                                        "production_tolerance, forgetting, ...); production is this policy's model.")
    honing_config: dict[str, Any] | None = Field(None, description="Training keys for the retrain (e.g. max_steps).")
    enabled: bool = True


class PolicyUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    every_n_completions: int | None = Field(None, ge=1, le=10_000_000)
    interval_seconds: int | None = Field(None, ge=MIN_INTERVAL_S)
    min_feedback: int | None = Field(None, ge=1)
    drift: bool | None = None
    gate: dict[str, Any] | None = None
    honing_config: dict[str, Any] | None = None
    enabled: bool | None = None


class PolicyObject(BaseModel):
    id: str
    object: Literal["fine_tuning.retraining_policy"] = "fine_tuning.retraining_policy"
    created_at: int
    model: str  # the production model now
    production_job: str
    lineage: list[str]
    every_n_completions: int | None = None
    interval_seconds: int | None = None
    min_feedback: int
    drift: bool
    gate: dict
    honing_config: dict | None = None
    enabled: bool
    cycles: int
    current_job: str | None = None
    last_cycle: dict | None = None


class PolicyPage(S.Page):
    data: list[PolicyObject]


def policy_object(p: RetrainPolicy) -> dict:
    return {"id": p.id, "object": "fine_tuning.retraining_policy", "created_at": p.created_at, "model": p.model,
            "production_job": p.production_job, "lineage": list(p.lineage or []),
            "every_n_completions": p.every_n_completions, "interval_seconds": p.interval_seconds,
            "min_feedback": p.min_feedback, "drift": p.drift, "gate": p.gate, "honing_config": p.honing_config,
            "enabled": p.enabled, "cycles": p.cycles, "current_job": p.current_job, "last_cycle": p.last_cycle}


def _check_gate(gate: dict | None) -> dict:
    from honing.lifecycle.gate import gate_config

    gate = dict(gate or {})
    if "production" in gate:
        raise APIError(400, "gate.production: set by the policy (its model's run); leave it out", param="gate")
    try:
        gate_config(gate)
    except HoningError as e:
        raise APIError(400, str(e), param="gate") from None
    return gate


def _check_training_keys(extra: dict | None) -> dict | None:
    if extra and "gate" in extra:
        raise APIError(400, "honing_config.gate: the policy's gate is its own field", param="honing_config")
    return J.check_extra_config(extra) or None


def _production_job(s, project: str, model: str) -> Job:
    job = s.scalar(select(Job).where(Job.project == project, Job.fine_tuned_model == model,
                                     Job.status == "succeeded", Job.model_deleted.is_(False)))
    if job is None:
        raise APIError(404, f"model: no fine-tuned model '{model}' in this project", param="model",
                       code="model_not_found")
    if job.validation_file is None:
        raise APIError(400, f"model: job {job.id} had no validation_file, so a retrained model could not be "
                            "compared with it on the same examples", param="model")
    if (job.method or {}).get("type", "supervised") != "supervised":
        raise APIError(400, f"model: job {job.id} is a {job.method.get('type')} job; the loop retrains supervised "
                            "models (corrected answers are supervised examples)", param="model")
    return job


def _get(s, project: str, policy_id: str) -> RetrainPolicy:
    p = s.scalar(select(RetrainPolicy).where(RetrainPolicy.id == policy_id, RetrainPolicy.project == project))
    if p is None:
        raise not_found("retraining policy", policy_id)
    return p


@router.post("/fine_tuning/retraining_policies", tags=["honing"], response_model=PolicyObject)
def create_policy(request: Request, project: Project, body: PolicyCreate) -> dict:
    """Honing: keep a production model up to date (see docs/maintenance.md)."""
    if body.every_n_completions is None and body.interval_seconds is None:
        raise APIError(400, "every_n_completions or interval_seconds: a policy needs at least one trigger",
                       param="every_n_completions")
    gate, extra = _check_gate(body.gate), _check_training_keys(body.honing_config)
    with request.app.state.Session.begin() as s:
        job = _production_job(s, project, body.model)
        taken = s.scalar(select(RetrainPolicy.id).where(RetrainPolicy.project == project,
                                                        RetrainPolicy.model == body.model))
        if taken:
            raise APIError(409, f"model: policy {taken} already keeps {body.model}", param="model",
                           code="policy_exists")
        p = RetrainPolicy(id=new_id("rtpol"), project=project, model=body.model, production_job=job.id,
                          lineage=[body.model], every_n_completions=body.every_n_completions,
                          interval_seconds=body.interval_seconds, min_feedback=body.min_feedback, drift=body.drift,
                          gate=gate, honing_config=extra, enabled=body.enabled, created_at=now(), cycles=0,
                          cursor_ts=time.time(), feedback_cursor=0, checked_at=time.time())
        s.add(p)
        add_event(s, job, f"retrain:{p.id}:created", f"Retraining policy {p.id} keeps this model up to date: "
                  f"{_triggers(p)}", data={"policy": p.id})
    return policy_object(p)


def _triggers(p: RetrainPolicy) -> str:
    when = [f"every {p.every_n_completions} stored completions"] if p.every_n_completions else []
    when += [f"every {p.interval_seconds} s"] if p.interval_seconds else []
    return (f"checks {' and '.join(when)}; retrains on drift or {p.min_feedback} corrected answers; promotes only "
            "what passes the gate")


@router.get("/fine_tuning/retraining_policies", tags=["honing"], response_model=PolicyPage)
def list_policies(request: Request, project: Project) -> dict:
    with request.app.state.Session() as s:
        rows = s.scalars(select(RetrainPolicy).where(RetrainPolicy.project == project)
                         .order_by(RetrainPolicy.created_at, RetrainPolicy.id)).all()
    data = [policy_object(p) for p in rows]
    return {"object": "list", "data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None}


@router.get("/fine_tuning/retraining_policies/{policy_id}", tags=["honing"], response_model=PolicyObject)
def retrieve_policy(request: Request, project: Project, policy_id: str) -> dict:
    with request.app.state.Session() as s:
        return policy_object(_get(s, project, policy_id))


@router.post("/fine_tuning/retraining_policies/{policy_id}", tags=["honing"], response_model=PolicyObject)
def update_policy(request: Request, project: Project, policy_id: str, body: PolicyUpdate) -> dict:
    changes = body.model_dump(exclude_unset=True)
    if "gate" in changes:
        changes["gate"] = _check_gate(changes["gate"])
    if "honing_config" in changes:
        changes["honing_config"] = _check_training_keys(changes["honing_config"])
    with request.app.state.Session.begin() as s:
        p = _get(s, project, policy_id)
        for k, v in changes.items():
            if v is not None or k in ("every_n_completions", "interval_seconds", "honing_config"):
                setattr(p, k, v)
        if p.every_n_completions is None and p.interval_seconds is None:
            raise APIError(400, "every_n_completions or interval_seconds: a policy needs at least one trigger",
                           param="every_n_completions")
    return policy_object(p)


@router.delete("/fine_tuning/retraining_policies/{policy_id}", tags=["honing"], response_model=S.Deleted)
def delete_policy(request: Request, project: Project, policy_id: str) -> dict:
    """Stops the loop; a retrain job already running ends as any job (its model is not made production)."""
    with request.app.state.Session.begin() as s:
        s.delete(_get(s, project, policy_id))
    return {"id": policy_id, "object": "fine_tuning.retraining_policy.deleted", "deleted": True}


# -- the loop (run by the workers) ----------------------------------------------------------------
class PolicyRunner:
    """Checks the policies that are due and settles the ones whose retrain job has ended. Called from a
    worker's queue loop (``honing.serve.worker.Worker``), between jobs."""

    def __init__(self, settings: Settings, Session, worker_id: str, *, takeover_all: bool = False):
        self.settings, self.Session, self.id = settings, Session, worker_id
        self.takeover_all = takeover_all  # SQLite: the only worker; a lease held by anyone else is stale
        self.redact = Redactor(settings)
        self.last_look = 0.0

    def poll(self) -> None:
        if time.time() - self.last_look < CHECK_EVERY_S:
            return
        self.last_look = time.time()
        with self.Session() as s:
            ids = s.scalars(select(RetrainPolicy.id).where(RetrainPolicy.enabled.is_(True))
                            .order_by(RetrainPolicy.created_at)).all()
        for policy_id in ids:
            try:
                self.settle(policy_id)
                if self._due(policy_id) and self._lease(policy_id):
                    self.check(policy_id)
            except Exception as e:  # one policy's failure must not stop the others or the job queue (logged)
                log.exception("retraining policy %s", policy_id)
                self._release(policy_id, error=f"{type(e).__name__}: {e}")

    # -- is it time? -----------------------------------------------------------------------------
    def _due(self, policy_id: str) -> bool:
        with self.Session() as s:
            p = s.get(RetrainPolicy, policy_id)
            if p is None or not p.enabled or p.current_job is not None:
                return False
            failed = (p.last_cycle or {}).get("outcome") == "error"
            if failed and time.time() - (p.checked_at or 0) < RETRY_AFTER_ERROR_S:
                return False
            if p.interval_seconds and time.time() - (p.checked_at or 0) >= p.interval_seconds:
                return True
            if p.every_n_completions:
                new = s.scalar(select(func.count()).select_from(StoredCompletion).where(
                    StoredCompletion.project == p.project, StoredCompletion.model == p.model,
                    StoredCompletion.created_ts > p.cursor_ts))
                return new >= p.every_n_completions
        return False

    def _lease(self, policy_id: str) -> bool:
        """Take the policy's check for this worker (one statement: two workers never both get it)."""
        t = time.time()
        free = or_(RetrainPolicy.lease_until.is_(None), RetrainPolicy.lease_until < t,
                   RetrainPolicy.lease_worker == self.id)
        if self.takeover_all:
            free = or_(free, RetrainPolicy.lease_worker != self.id)
        with self.Session.begin() as s:
            res = s.execute(update(RetrainPolicy).where(RetrainPolicy.id == policy_id, RetrainPolicy.current_job.is_(None),
                                                        free)
                            .values(lease_worker=self.id, lease_until=t + self.settings.stale_after))
            return res.rowcount == 1

    def _release(self, policy_id: str, error: str | None = None) -> None:
        """Give the check back; after an unexpected ``error`` it is said on the policy (``last_cycle``) and
        retried after RETRY_AFTER_ERROR_S, not at every look."""
        with self.Session.begin() as s:
            values: dict = {"lease_worker": None, "lease_until": None}
            if error is not None:
                values["checked_at"] = time.time()
                values["last_cycle"] = {"outcome": "error", "reason": self.redact.text(error)[:2000], "at": now()}
            s.execute(update(RetrainPolicy).where(RetrainPolicy.id == policy_id, or_(
                RetrainPolicy.lease_worker == self.id, RetrainPolicy.lease_worker.is_(None))).values(**values))

    # -- one check ---------------------------------------------------------------------------------
    def check(self, policy_id: str) -> None:
        from honing.lifecycle.policy import decide

        with self.Session() as s:
            p = s.get(RetrainPolicy, policy_id)
            prod = s.get(Job, p.production_job)
            train, val = s.get(File, prod.training_file), s.get(File, prod.validation_file)
            rows = s.execute(select(StoredCompletion.created_ts, StoredCompletion.request).where(
                StoredCompletion.project == p.project, StoredCompletion.model == p.model,
                StoredCompletion.created_ts > p.cursor_ts).order_by(StoredCompletion.created_ts)).all()
            feedback = s.scalar(select(func.count()).select_from(StoredCompletion).where(
                StoredCompletion.project == p.project, StoredCompletion.model.in_(p.lineage or [p.model]),
                StoredCompletion.correction.is_not(None), StoredCompletion.feedback_at > p.feedback_cursor))
        cycle = p.cycles + 1
        step = _Steps(self, p, prod, cycle)
        cursor = max((r.created_ts for r in rows), default=p.cursor_ts)
        where = self.settings.data_dir / "retraining" / p.id / f"check-{cycle}"
        step.say("check", f"Retraining check {cycle}: {len(rows)} new stored completion(s) of {p.model}, "
                 f"{feedback} new corrected answer(s)")
        report = self._drift(step, p, train, [r.request.get("messages") or [] for r in rows], where) \
            if p.drift and rows else None
        decision = decide(report, feedback, p.min_feedback)
        if not decision.retrain:
            step.say("decision", f"No retraining: {decision.reason}")
            return self._close(step, cursor, None, {"outcome": "no retraining", "reason": decision.reason})
        step.say("decision", f"Retraining: {decision.reason}")
        try:
            job_id = self._retrain(step, p, prod, train, val, where, cursor)
        except HoningError as e:
            step.say("dataset", f"No retraining: {e}", level="error")
            return self._close(step, cursor, None, {"outcome": "no dataset", "reason": self.redact.text(str(e))})
        if job_id is None:
            self._release(policy_id)

    def _drift(self, step: _Steps, p: RetrainPolicy, train: File, messages: list, where: Path):
        from honing.lifecycle.drift import drift
        from honing.lifecycle.policy import write_requests

        current = where / "requests.jsonl"
        where.mkdir(parents=True, exist_ok=True)
        write_requests(messages, current)
        try:
            report = drift(train.path, current, out_dir=where / "drift")
        except HoningError as e:
            step.say("drift", f"Drift not measured: {e}", level="warn")
            return None
        data = {k: v for k, v in report.to_dict().items() if k not in ("reference_path", "current_path", "files")}
        step.say("drift", f"Drift: {report.recommendation}: {report.far_count} of {report.n_current} new requests "
                 f"are far from every training input ({report.far_share:.0%}; expected {report.expected_share:.0%}, "
                 f"p = {report.p_value:.2g})", level="info" if report.recommendation == "fine" else "warn", data=data)
        return report

    def _retrain(self, step: _Steps, p: RetrainPolicy, prod: Job, train: File, val: File, where: Path,
                 cursor: float) -> str | None:
        """Build the training file and create the retrain job (one transaction, only while the lease holds)."""
        from honing.lifecycle.policy import combine
        from honing.lifecycle.traffic import build_dataset
        from honing.serve.files import store_bytes
        from honing.serve.stored import traffic

        with self.Session() as s:
            rows = [t for m in (p.lineage or [p.model]) for t in traffic(s, p.project, model=m) if t.correction]
            newest = s.scalar(select(func.max(StoredCompletion.feedback_at)).where(
                StoredCompletion.project == p.project, StoredCompletion.model.in_(p.lineage or [p.model]),
                StoredCompletion.correction.is_not(None))) or 0
        built = build_dataset(rows, "sft", where / "traffic.jsonl", eval_path=val.path, min_examples=1)
        data = combine(train.path, where / "traffic.jsonl")
        with self.Session.begin() as s:
            if not self._holds(s, p.id):
                return None  # another worker took this check over: it writes the result
            f = store_bytes(s, self.settings, p.project, f"retrain-{p.id}-check-{step.cycle}.jsonl", "fine-tune",
                            data)
            if f.validation and not f.validation.get("ok", True):
                Path(f.path).unlink(missing_ok=True)  # no file without its row
                raise HoningError(f"the combined training file fails validation ({f.validation.get('errors')} "
                                  "error(s))")
            job = _retrain_job(self.settings, p, prod, f.id, step.cycle)
            s.add(job)
            s.flush()
            removed = (f"removed {built.invalid} invalid, {built.duplicates + built.near_duplicates} duplicate, "
                       f"{built.leaked} in the validation set")
            step.say("dataset", f"Training file {f.id}: the training data of {p.model} plus {built.kept} corrected "
                     f"answer(s) from {built.stored_completions} stored completion(s) ({removed}); validated",
                     session=s, data={"file": f.id, "traffic_examples": built.kept})
            step.say("retrain", f"Retraining as job {job.id} (the recipe of {prod.id} on the new file; judged "
                     f"against {p.model} and the cheaper baselines)", session=s, data={"job": job.id})
            add_event(s, job, "status:created", f"Created fine-tuning job: {job.id}")
            add_event(s, job, "retrain:origin", f"Retraining policy {p.id}, check {step.cycle}: replaces {p.model} if "
                      "it passes the gate", data={"policy": p.id, "replaces": p.model})
            s.execute(update(RetrainPolicy).where(RetrainPolicy.id == p.id).values(
                current_job=job.id, cursor_ts=cursor, feedback_cursor=newest, checked_at=time.time(),
                cycles=step.cycle, lease_worker=None, lease_until=None,
                last_cycle={"cycle": step.cycle, "outcome": "retraining", "job": job.id, "at": now()}))
        return job.id

    def _holds(self, s, policy_id: str) -> bool:
        p = s.scalar(select(RetrainPolicy).where(RetrainPolicy.id == policy_id).with_for_update())
        return p is not None and p.lease_worker == self.id and p.current_job is None

    def _close(self, step: _Steps, cursor: float, job_id, outcome: dict) -> None:
        with self.Session.begin() as s:
            if not self._holds(s, step.policy.id):
                return
            s.execute(update(RetrainPolicy).where(RetrainPolicy.id == step.policy.id).values(
                cursor_ts=cursor, checked_at=time.time(), cycles=step.cycle, lease_worker=None, lease_until=None,
                last_cycle={"cycle": step.cycle, **outcome, "at": now()}))

    # -- the retrain job ended -------------------------------------------------------------------
    def settle(self, policy_id: str) -> None:
        """When the policy's retrain job has ended: promote it if it passed the gate, else keep production."""
        with self.Session.begin() as s:
            p = s.scalar(select(RetrainPolicy).where(RetrainPolicy.id == policy_id).with_for_update())
            if p is None or p.current_job is None:
                return
            job = s.get(Job, p.current_job)
            if job is not None and job.status not in J.TERMINAL:
                return
            prod = s.get(Job, p.production_job)
            step = _Steps(self, p, prod, p.cycles)
            outcome = {"cycle": p.cycles, "job": p.current_job, "at": now()}
            if job is not None and job.status == "succeeded" and job.fine_tuned_model:
                verdict = _verdict(job)
                step.say("promoted", f"Promoted {job.fine_tuned_model} (job {job.id}): it passed the gate; it "
                         f"replaces {p.model}", session=s, data={"model": job.fine_tuned_model, "gate": verdict})
                add_event(s, job, "retrain:promoted", f"Production model of retraining policy {p.id}, replacing "
                          f"{p.model}", data={"policy": p.id})
                p.lineage = [*(p.lineage or []), job.fine_tuned_model]
                p.model, p.production_job = job.fine_tuned_model, job.id
                outcome.update(outcome="promoted", model=job.fine_tuned_model)
            else:
                why = _why_not(job)
                step.say("kept", f"Not promoted: {why}; {p.model} stays in production", level="warn", session=s,
                         data={"job": p.current_job})
                outcome.update(outcome="not promoted", reason=self.redact.text(why))
            p.current_job, p.last_cycle = None, outcome


class _Steps:
    """The events of one check on the production model's job (its page), keyed so a retried step adds none."""

    def __init__(self, runner: PolicyRunner, policy: RetrainPolicy, prod: Job | None, cycle: int):
        self.runner, self.policy, self.prod, self.cycle = runner, policy, prod, cycle

    def say(self, step: str, message: str, *, level: str = "info", data: dict | None = None, session=None) -> None:
        if self.prod is None:
            return
        key = f"retrain:{self.policy.id}:{self.cycle}:{step}"
        message = self.runner.redact.text(message)
        data = self.runner.redact.data({"policy": self.policy.id, "check": self.cycle, **(data or {})})
        if session is not None:
            add_event(session, self.prod, key, message, level=level, data=data)
            return
        with self.runner.Session.begin() as s:
            add_event(s, self.prod, key, message, level=level, data=data)


def _retrain_job(settings: Settings, p: RetrainPolicy, prod: Job, training_file: str, cycle: int) -> Job:
    """The production job's recipe on the new file, judged against production by the gate."""
    job_id = new_id("ftjob")
    config = {**prod.config, **(p.honing_config or {}),
              "gate": {**p.gate, "production": str(RunDir(prod.run_dir).path)}}
    return Job(id=job_id, project=p.project, model=prod.model, training_file=training_file,
               validation_file=prod.validation_file, status="validating_files", method=prod.method, config=config,
               suffix=prod.suffix, seed=prod.seed,
               job_metadata={"retraining_policy": p.id, "check": str(cycle)}, result_files=[],
               run_dir=str(settings.runs_dir / job_id), created_at=now(), enqueued_at=time.time(), attempts=0,
               model_deleted=False)


def _verdict(job: Job) -> dict | None:
    try:
        return RunDir(job.run_dir).record().get("gate")
    except HoningError:
        return None


def _why_not(job: Job | None) -> str:
    if job is None:
        return "its retrain job was deleted"
    if job.status == "succeeded":
        verdict = _verdict(job) or {}
        return "the gate failed (" + ("; ".join(verdict.get("reasons") or []) or "no verdict") + ")"
    if job.status == "failed":
        return f"job {job.id} failed ({(job.error or {}).get('message', 'no reason')})"
    return f"job {job.id} was {job.status}"

