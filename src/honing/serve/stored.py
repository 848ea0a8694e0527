"""Stored chat completions, as OpenAI's ``store: true`` (so the official client's
``chat.completions.list / retrieve / update / delete`` and ``chat.completions.messages.list`` work), plus
Honing's feedback on them and each project's retention setting.

    GET    /v1/chat/completions                      model, metadata[k]=v, after, limit, order (asc)
    GET    /v1/chat/completions/{id}                 the chat.completion object, with its metadata
    POST   /v1/chat/completions/{id}                 {"metadata": {...}}: replaces the metadata
    DELETE /v1/chat/completions/{id}                 chat.completion.deleted
    GET    /v1/chat/completions/{id}/messages        the request's messages (chat.completion.store_message)
    POST   /v1/chat/completions/{id}/feedback        Honing: {"rating": "up"|"down", "correction", "note"}
    GET    /v1/project/settings, POST ...            Honing: {"store_retention_days": N | null}
    POST   /v1/files/from_traffic                    Honing: the feedback as a validated training file

Every row belongs to a project and every query filters by it: another project's id is the same 404 as an
unknown one. Expired rows (older than the project's retention) are never answered, and are deleted by
:func:`sweep` (run every few minutes by the server, and on each write of that project).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from sqlalchemy import and_, delete, or_, select

from honing.data.validate import MIN_EXAMPLES
from honing.lifecycle.traffic import KINDS, Traffic, build_dataset
from honing.serve import schemas as S
from honing.serve.auth import Project
from honing.serve.db import File, ProjectSettings, StoredCompletion, new_id, now
from honing.serve.errors import APIError, not_found
from honing.serve.files import file_object, get_file

router = APIRouter(prefix="/v1", responses=S.ERROR_RESPONSES)

# OpenAI's metadata: at most 16 pairs, keys up to 64 characters, values up to 512.
Metadata = dict[Annotated[str, StringConstraints(min_length=1, max_length=64)],
                Annotated[str, Field(max_length=512)]]
MetadataField = Annotated[Metadata | None, Field(max_length=16)]
SAFE_KEY = re.compile(r"^[A-Za-z0-9_.-]+$")
SWEEP_EVERY_S = 600.0
DAY_S = 86400


# -- response shapes (OpenAI's, and Honing's additions) -------------------------------------------
class FeedbackOut(BaseModel):
    rating: Literal["up", "down"] | None = None
    correction: str | None = None
    note: str | None = None
    created_at: int


class StoredChatCompletion(S.ChatCompletion):
    usage: S.Usage | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    seed: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    feedback: FeedbackOut | None = None  # Honing: null until rated


class StoredPage(S.Page):
    data: list[StoredChatCompletion]


class StoreMessage(BaseModel):
    id: str
    role: str
    content: str | None = None
    name: str | None = None
    content_parts: list[dict] | None = None
    tool_calls: list[dict] | None = None
    tool_call_id: str | None = None


class StoreMessagePage(S.Page):
    data: list[StoreMessage]


class CompletionDeleted(BaseModel):
    id: str
    object: Literal["chat.completion.deleted"] = "chat.completion.deleted"
    deleted: bool


class ProjectSettingsOut(BaseModel):
    object: Literal["project.settings"] = "project.settings"
    project: str
    store_retention_days: int | None = None


class TrafficDataset(BaseModel):
    object: Literal["honing.traffic_dataset"] = "honing.traffic_dataset"
    file: S.FileObject
    summary: dict


# -- writing (called by chat.py) ------------------------------------------------------------------
def save(Session, project: str, request: dict, response: dict, metadata: dict | None) -> None:
    """Keep one answered request. ``request`` holds the messages and the sampling parameters sent;
    ``response`` is the chat.completion object as the client got it."""
    with Session.begin() as s:
        s.add(StoredCompletion(id=response["id"], project=project, model=response["model"],
                               created_at=response["created"], created_ts=time.time(), request=request,
                               response=response, completion_metadata=metadata or None))
    sweep(Session, project=project)


def request_record(req) -> dict:
    """What is kept of a chat request: the messages as sent and the sampling parameters given."""
    return req.model_dump(exclude_none=True, exclude={"store", "metadata", "stream", "stream_options"})


def store_stream(Session, project: str, req, chunks, *, client_wants_usage: bool):
    """Pass a streamed answer's server-sent events to the client and store the answer once it ended
    cleanly (``[DONE]`` with no error event before it). The stream was made with usage (exact token
    counts for the stored object); the usage chunk is dropped again when the client did not ask for it."""
    text, calls, finish, usage, failed, head = [], [], None, None, False, None
    for chunk in chunks:
        payload = chunk[len("data: "):].strip()
        if payload == "[DONE]":
            if not failed and head is not None:
                save(Session, project, request_record(req),
                     _streamed_object(head, "".join(text), calls, finish, usage), req.metadata)
            yield chunk
            continue
        body = json.loads(payload)
        failed = failed or "error" in body
        head = head or body
        for c in body.get("choices") or []:
            text.append(c["delta"].get("content") or "")
            calls += [{k: v for k, v in tc.items() if k != "index"} for tc in c["delta"].get("tool_calls") or ()]
            finish = c.get("finish_reason") or finish
        usage = body.get("usage") or usage
        if client_wants_usage or "error" in body:
            yield chunk
        elif body.get("choices"):
            body.pop("usage", None)
            yield f"data: {json.dumps(body)}\n\n"


def _streamed_object(head: dict, text: str, calls: list, finish: str | None, usage: dict | None) -> dict:
    message = {"role": "assistant", "content": text or (None if calls else ""), "refusal": None,
               **({"tool_calls": calls} if calls else {})}
    return {"id": head["id"], "object": "chat.completion", "created": head["created"], "model": head["model"],
            "choices": [{"index": 0, "message": message, "finish_reason": finish or "stop", "logprobs": None}],
            "usage": usage, "system_fingerprint": None}


# -- the objects ----------------------------------------------------------------------------------
def feedback_object(row: StoredCompletion) -> dict | None:
    if row.feedback_at is None:
        return None
    return {"rating": row.rating, "correction": row.correction, "note": row.note, "created_at": row.feedback_at}


def completion_object(row: StoredCompletion) -> dict:
    """The stored chat.completion as answered, with what OpenAI's stored objects add (metadata and the
    sampling parameters sent) and Honing's ``feedback`` (null until rated)."""
    req = row.request
    return {**row.response, "metadata": row.completion_metadata or {},
            **{k: req.get(k) for k in ("seed", "temperature", "top_p")},
            "feedback": feedback_object(row)}


def message_objects(row: StoredCompletion) -> list[dict]:
    out = []
    for i, m in enumerate(row.request["messages"]):
        content = m.get("content")
        parts = content if isinstance(content, list) else None
        text = "".join(p.get("text", "") for p in parts) if parts is not None else content
        out.append({"id": f"{row.id}-{i}", "role": m["role"], "content": text, "name": m.get("name"),
                    "content_parts": parts, **{k: m[k] for k in ("tool_calls", "tool_call_id") if m.get(k)}})
    return out


def _page(data: list[dict], has_more: bool) -> dict:
    return {"object": "list", "data": data, "has_more": has_more,
            "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}


# -- retention ------------------------------------------------------------------------------------
def retention_days(s, project: str) -> int | None:
    return s.scalar(select(ProjectSettings.store_retention_days).where(ProjectSettings.project == project))


def _cutoff(days: int | None, clock=time.time) -> float | None:
    return None if days is None else clock() - days * DAY_S


def sweep(Session, *, project: str | None = None, clock=time.time) -> int:
    """Delete stored completions older than their project's retention (all projects, or one).
    Returns how many rows went."""
    gone = 0
    with Session.begin() as s:
        q = select(ProjectSettings).where(ProjectSettings.store_retention_days.is_not(None))
        if project is not None:
            q = q.where(ProjectSettings.project == project)
        for ps in s.scalars(q).all():
            r = s.execute(delete(StoredCompletion).where(
                StoredCompletion.project == ps.project,
                StoredCompletion.created_ts < _cutoff(ps.store_retention_days, clock)))
            gone += r.rowcount or 0
    return gone


def purge_project(s, project: str) -> int:
    """Delete every stored completion (and its feedback) and the settings of ``project``, in session ``s``
    (part of deleting a project's data)."""
    n = s.execute(delete(StoredCompletion).where(StoredCompletion.project == project)).rowcount or 0
    s.execute(delete(ProjectSettings).where(ProjectSettings.project == project))
    return n


class Sweeper:
    """A daemon thread that sweeps every ``every`` seconds until ``stop()``."""

    def __init__(self, Session, every: float = SWEEP_EVERY_S):
        self.Session, self.every, self.stop_event = Session, every, threading.Event()

    def start(self) -> Sweeper:
        threading.Thread(target=self._run, name="honing-store-sweeper", daemon=True).start()
        return self

    def _run(self) -> None:
        while not self.stop_event.is_set():
            try:
                sweep(self.Session)
            except Exception:  # a database hiccup must not end the sweeps; the next round retries
                logging.getLogger("honing.serve").exception("stored completions sweep failed")
            self.stop_event.wait(self.every)

    def stop(self) -> None:
        self.stop_event.set()


# -- reading --------------------------------------------------------------------------------------
def get_stored(s, project: str, completion_id: str) -> StoredCompletion:
    row = s.scalar(select(StoredCompletion).where(StoredCompletion.id == completion_id,
                                                  StoredCompletion.project == project))
    cutoff = _cutoff(retention_days(s, project)) if row is not None else None
    if row is None or (cutoff is not None and row.created_ts < cutoff):
        raise not_found("chat completion", completion_id)
    return row


def metadata_filter(request: Request) -> dict[str, str]:
    # metadata[k]=v (deepObject style, as the client sends them)
    return {k[len("metadata["):-1]: v for k, v in request.query_params.items()
            if k.startswith("metadata[") and k.endswith("]")}


def _in_sql(key: str) -> bool:
    # JSON paths in SQL: PostgreSQL takes any key, SQLite's json_extract misreads quotes and some
    # non-ASCII keys (silently: no match). Such keys are filtered in Python instead.
    return SAFE_KEY.match(key) is not None


def query_stored(s, project: str, *, model: str | None = None, meta: dict | None = None,
                 after: str | None = None, order: str = "asc", rated: str | None = None):
    """The project's live stored completions, filtered and ordered (a select; metadata keys that SQL
    cannot match reliably are left to :func:`page_of`)."""
    C = StoredCompletion
    q = select(C).where(C.project == project)
    for k, v in (meta or {}).items():
        if _in_sql(k):
            q = q.where(C.completion_metadata[k].as_string() == v)
    cutoff = _cutoff(retention_days(s, project))
    if cutoff is not None:
        q = q.where(C.created_ts >= cutoff)
    if model:
        q = q.where(C.model == model)
    if rated == "rated":
        q = q.where(C.feedback_at.is_not(None))
    elif rated == "unrated":
        q = q.where(C.feedback_at.is_(None))
    desc = order == "desc"
    if after:
        a = get_stored(s, project, after)
        older = or_(C.created_ts < a.created_ts, and_(C.created_ts == a.created_ts, C.id < a.id))
        newer = or_(C.created_ts > a.created_ts, and_(C.created_ts == a.created_ts, C.id > a.id))
        q = q.where(older if desc else newer)
    return q.order_by(C.created_ts.desc(), C.id.desc()) if desc else q.order_by(C.created_ts, C.id)


def page_of(s, q, meta: dict, limit: int) -> tuple[list, bool]:
    rest = {k: v for k, v in meta.items() if not _in_sql(k)}
    if rest:  # keys SQL did not filter: filter in Python, page after
        rows = [r for r in s.scalars(q).all()
                if all((r.completion_metadata or {}).get(k) == v for k, v in rest.items())][: limit + 1]
    else:
        rows = s.scalars(q.limit(limit + 1)).all()
    return rows[:limit], len(rows) > limit


@router.get("/chat/completions", tags=["chat"], response_model=StoredPage)
def list_stored(request: Request, project: Project, model: str | None = None, after: str | None = None,
                limit: Annotated[int, Query(ge=1, le=100)] = 20, order: Literal["asc", "desc"] = "asc",
                rated: Annotated[Literal["rated", "unrated"] | None,
                                 Query(description="Honing: only rated or only unrated completions")] = None
                ) -> dict:
    """Stored chat completions of this project (oldest first unless order=desc)."""
    with request.app.state.Session() as s:
        meta = metadata_filter(request)
        q = query_stored(s, project, model=model, meta=meta, after=after, order=order, rated=rated)
        rows, more = page_of(s, q, meta, limit)
        return _page([completion_object(r) for r in rows], more)


@router.get("/chat/completions/{completion_id}", tags=["chat"], response_model=StoredChatCompletion)
def retrieve_stored(request: Request, project: Project, completion_id: str) -> dict:
    with request.app.state.Session() as s:
        return completion_object(get_stored(s, project, completion_id))


class MetadataUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metadata: MetadataField


@router.post("/chat/completions/{completion_id}", tags=["chat"], response_model=StoredChatCompletion)
def update_stored(request: Request, project: Project, completion_id: str, body: MetadataUpdate) -> dict:
    """Replace the metadata (the only field OpenAI lets a client change)."""
    with request.app.state.Session.begin() as s:
        row = get_stored(s, project, completion_id)
        row.completion_metadata = body.metadata or None
        return completion_object(row)


@router.delete("/chat/completions/{completion_id}", tags=["chat"], response_model=CompletionDeleted)
def delete_stored(request: Request, project: Project, completion_id: str) -> dict:
    with request.app.state.Session.begin() as s:
        s.delete(get_stored(s, project, completion_id))
    return {"id": completion_id, "object": "chat.completion.deleted", "deleted": True}


@router.get("/chat/completions/{completion_id}/messages", tags=["chat"], response_model=StoreMessagePage)
def list_messages(request: Request, project: Project, completion_id: str, after: str | None = None,
                  limit: Annotated[int, Query(ge=1, le=100)] = 20,
                  order: Literal["asc", "desc"] = "asc") -> dict:
    with request.app.state.Session() as s:
        msgs = message_objects(get_stored(s, project, completion_id))
    if order == "desc":
        msgs.reverse()
    if after:
        ids = [m["id"] for m in msgs]
        if after not in ids:
            raise not_found("message", after, param="after")
        msgs = msgs[ids.index(after) + 1:]
    return _page(msgs[:limit], len(msgs) > limit)


# -- feedback (Honing) ----------------------------------------------------------------------------
class Feedback(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rating: Literal["up", "down"] | None = Field(None, description="Was the answer right?")
    correction: str | None = Field(None, max_length=100_000,
                                   description="The answer the model should have given (becomes training data).")
    note: str | None = Field(None, max_length=10_000)


@router.post("/chat/completions/{completion_id}/feedback", tags=["honing"], response_model=StoredChatCompletion)
def give_feedback(request: Request, project: Project, completion_id: str, body: Feedback) -> dict:
    """Honing: rate a stored completion and optionally give the corrected answer; replaces earlier
    feedback. A correction without a rating counts as a thumbs down on the model's own answer."""
    correction = body.correction.strip() if body.correction else None
    if body.rating is None and correction is None and not body.note:
        raise APIError(400, "feedback: give a rating ('up' or 'down'), a correction or a note", param="rating")
    with request.app.state.Session.begin() as s:
        row = get_stored(s, project, completion_id)
        row.rating = body.rating or ("down" if correction else None)
        row.correction, row.note, row.feedback_at = correction, body.note or None, now()
        return completion_object(row)


# -- per-project settings (Honing) ----------------------------------------------------------------
class SettingsUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    store_retention_days: int | None = Field(
        description="Stored chat completions older than this many days are deleted; null keeps them.",
        ge=1, le=36500)


def _settings_object(s, project: str) -> dict:
    return {"object": "project.settings", "project": project,
            "store_retention_days": retention_days(s, project)}


@router.get("/project/settings", tags=["honing"], response_model=ProjectSettingsOut)
def get_settings(request: Request, project: Project) -> dict:
    with request.app.state.Session() as s:
        return _settings_object(s, project)


@router.post("/project/settings", tags=["honing"], response_model=ProjectSettingsOut)
def set_settings(request: Request, project: Project, body: SettingsUpdate) -> dict:
    Session = request.app.state.Session
    with Session.begin() as s:
        row = s.get(ProjectSettings, project)
        if row is None:
            s.add(ProjectSettings(project=project, store_retention_days=body.store_retention_days,
                                  updated_at=now()))
        else:
            row.store_retention_days, row.updated_at = body.store_retention_days, now()
    sweep(Session, project=project)
    with Session() as s:
        return _settings_object(s, project)


# -- training files from traffic (Honing) ---------------------------------------------------------
def traffic(s, project: str, *, model: str | None = None, meta: dict | None = None,
            since_days: float | None = None) -> list[Traffic]:
    """The project's live stored completions that have feedback, oldest first, as training needs them."""
    q = query_stored(s, project, model=model, meta=meta, rated="rated")
    if since_days is not None:
        q = q.where(StoredCompletion.created_ts >= time.time() - since_days * DAY_S)
    out = []
    for r in s.scalars(q).all():  # every key checked here too (query_stored leaves some to Python)
        if all((r.completion_metadata or {}).get(k) == v for k, v in (meta or {}).items()):
            answer = r.response["choices"][0]["message"].get("content") or ""
            out.append(Traffic(id=r.id, model=r.model, messages=tuple(r.request["messages"]), answer=answer,
                               rating=r.rating, correction=r.correction, metadata=r.completion_metadata or {},
                               tools=tuple(r.request.get("tools") or ())))
    return out


class FromTraffic(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal[KINDS] = Field("sft", description="sft: corrected answers; kto: rated answers (TRL's unpaired "
                                 "format); dpo: corrections against the model's own answers.")
    model: str | None = Field(None, description="Only completions of this model.")
    metadata: MetadataField = Field(None, description="Only completions with all these metadata pairs.")
    since_days: float | None = Field(None, gt=0)
    eval_file: str | None = Field(None, description="A file whose prompts are left out (leakage).")
    approved: bool = Field(False, description="sft: thumbs-up answers count as examples too.")
    min_examples: int = Field(MIN_EXAMPLES, ge=1)


@router.post("/files/from_traffic", tags=["honing"], response_model=TrafficDataset)
def file_from_traffic(request: Request, project: Project, body: FromTraffic) -> dict:
    """Honing: build a fine-tune file from this project's feedback (`hone data from-traffic`): curated
    (duplicates, near-duplicates, prompts of ``eval_file``) and validated; a 400 says why when nothing
    usable is left, and no file is made."""
    settings, Session = request.app.state.settings, request.app.state.Session
    with Session() as s:
        eval_path = get_file(s, project, body.eval_file, param="eval_file").path if body.eval_file else None
        rows = traffic(s, project, model=body.model, meta=body.metadata, since_days=body.since_days)
    file_id = new_id("file")
    settings.files_dir.mkdir(parents=True, exist_ok=True)
    target = settings.files_dir / f"{file_id}.jsonl"
    summary = build_dataset(rows, body.kind, target, eval_path=eval_path, min_examples=body.min_examples)
    data = target.read_bytes()
    row = File(id=file_id, project=project, filename=f"traffic-{body.kind}.jsonl", purpose="fine-tune",
               bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), path=str(target), created_at=now(),
               validation={**summary.validation, "path": f"traffic-{body.kind}.jsonl"})
    try:
        with Session.begin() as s:
            s.add(row)
    except BaseException:
        target.unlink(missing_ok=True)  # no file without its row
        raise
    summary.path = None  # server paths never reach a client
    summary.validation = None
    return {"object": "honing.traffic_dataset", "file": file_object(row), "summary": summary.as_dict()}
