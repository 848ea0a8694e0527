"""Deleting a project's data: every row that names it (keys, files, jobs with their events and
checkpoints, idempotency records, stored chat completions and their feedback, settings, retraining
policies) and the bytes on disk behind them (uploads, run directories, checkpoint copies, retraining
checks' reports). `hone serve projects delete NAME`."""

from __future__ import annotations

import shutil
from pathlib import Path

from sqlalchemy import delete, select

from honing.errors import ConfigError
from honing.serve import stored
from honing.serve.db import ApiKey, Checkpoint, File, IdempotentRequest, Job, JobEvent, RetrainPolicy
from honing.serve.settings import Settings

ACTIVE = ("validating_files", "queued", "running", "paused")


def delete_project(settings: Settings, Session, project: str) -> dict[str, int]:
    """Delete ``project``'s rows in one transaction, then its files on disk. Refused while one of its jobs
    has not ended (its worker would write into what is deleted). Returns counts per kind."""
    with Session.begin() as s:
        busy = s.scalars(select(Job.id).where(Job.project == project, Job.status.in_(ACTIVE))).all()
        if busy:
            raise ConfigError(f"project {project!r}: jobs {', '.join(busy)} have not ended; cancel them first")
        paths = [Path(p) for p in s.scalars(select(File.path).where(File.project == project)).all()]
        jobs = s.scalars(select(Job.id).where(Job.project == project)).all()
        paths += [Path(p) for p in s.scalars(select(Job.run_dir).where(Job.project == project)).all()]
        paths += [settings.checkpoints_dir / j for j in jobs]
        counts = {"stored_completions": stored.purge_project(s, project), "jobs": len(jobs), "files": 0}
        policies = s.scalars(select(RetrainPolicy.id).where(RetrainPolicy.project == project)).all()
        paths += [settings.data_dir / "retraining" / p for p in policies]  # their checks' drift reports
        counts["retraining_policies"] = len(policies)
        s.execute(delete(RetrainPolicy).where(RetrainPolicy.project == project))
        for table in (JobEvent, Checkpoint):
            s.execute(delete(table).where(table.project == project))
        counts["files"] = s.execute(delete(File).where(File.project == project)).rowcount or 0
        s.execute(delete(Job).where(Job.project == project))
        s.execute(delete(IdempotentRequest).where(IdempotentRequest.project == project))
        counts["api_keys"] = s.execute(delete(ApiKey).where(ApiKey.project == project)).rowcount or 0
    root = settings.data_dir.resolve()
    for p in paths:  # after the commit: a crash here leaves orphaned bytes, never rows without their files
        if root not in p.resolve().parents:  # only what the service itself wrote under its data dir
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return counts
