"""Models and chat completions: base models from the catalog (and those this project's jobs train on),
this project's fine-tuned models and checkpoints; chat with any of them, streamed as server-sent events
(``data: [DONE]`` last; ``stream_options.include_usage`` adds a usage chunk)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from honing.serve import schemas as S
from honing.serve import stored
from honing.serve.api import Project
from honing.serve.db import Checkpoint, Job, new_id
from honing.serve.errors import APIError, error_body
from honing.serve.inference import Params, Target

router = APIRouter(prefix="/v1", responses=S.ERROR_RESPONSES)
# Chat requests allowed to wait for a model at once; more is a 429 (the client retries with backoff).
MAX_PENDING_CHATS = 64


def _not_found(model: str) -> APIError:
    return APIError(404, f"The model '{model}' does not exist or you do not have access to it.", param="model",
                    code="model_not_found")


def _catalog_names() -> list[str]:
    from honing.models.catalog import EMBEDDED

    return list(EMBEDDED)


def _project_bases(s, project: str) -> list[str]:
    return sorted(set(s.scalars(select(Job.model).where(Job.project == project)).all()))


def resolve_target(s, project: str, model: str) -> Target:
    """What ``model`` names for this project, or the 404 a foreign or unknown model gets."""
    if model in _catalog_names() or model in _project_bases(s, project):
        return Target(base=model)
    job = s.scalar(select(Job).where(Job.project == project, Job.fine_tuned_model == model,
                                     Job.status == "succeeded", Job.model_deleted.is_(False)))
    if job is not None:
        return Target(job.model, job.id, Path(job.run_dir) / "final")
    ck = s.scalar(select(Checkpoint).where(Checkpoint.project == project, Checkpoint.model_name == model))
    if ck is not None:
        parent = s.get(Job, ck.job_id)
        if parent is None or parent.model_deleted:
            raise _not_found(model)
        if parent.status != "succeeded":
            raise APIError(409, f"Checkpoint models of job {parent.id} can be used once the job has succeeded "
                                f"(it is {parent.status})", param="model", code="model_not_ready")
        return Target(parent.model, ck.id, Path(parent.run_dir) / "final", Path(ck.weights))
    raise _not_found(model)


def _model_obj(mid: str, created: int, owned_by: str) -> dict:
    return {"id": mid, "object": "model", "created": created, "owned_by": owned_by}


def _all_models(s, project: str) -> list[dict]:
    out = [_model_obj(m, 0, "honing") for m in _catalog_names()]
    out += [_model_obj(m, 0, "honing") for m in _project_bases(s, project) if m not in _catalog_names()]
    jobs = s.scalars(select(Job).where(Job.project == project, Job.status == "succeeded",
                                       Job.model_deleted.is_(False)).order_by(Job.created_at)).all()
    for j in jobs:
        out.append(_model_obj(j.fine_tuned_model, j.finished_at or j.created_at, project))
        for ck in s.scalars(select(Checkpoint).where(Checkpoint.job_id == j.id).order_by(Checkpoint.step)).all():
            out.append(_model_obj(ck.model_name, ck.created_at, project))
    return out


@router.get("/models", tags=["models"], response_model=S.ModelList)
def list_models(request: Request, project: Project) -> dict:
    with request.app.state.Session() as s:
        return {"object": "list", "data": _all_models(s, project)}


@router.get("/models/{model:path}", tags=["models"], response_model=S.Model)
def retrieve_model(request: Request, project: Project, model: str) -> dict:
    with request.app.state.Session() as s:
        for m in _all_models(s, project):
            if m["id"] == model:
                return m
    raise _not_found(model)


@router.delete("/models/{model:path}", tags=["models"], response_model=S.Deleted)
def delete_model(request: Request, project: Project, model: str) -> dict:
    with request.app.state.Session.begin() as s:
        job = s.scalar(select(Job).where(Job.project == project, Job.fine_tuned_model == model,
                                         Job.status == "succeeded", Job.model_deleted.is_(False)))
        if job is None:
            resolve_target(s, project, model)  # 404 for unknown or foreign names
            raise APIError(400, f"'{model}' is not a fine-tuned model of this project; only those can be deleted",
                           param="model", code="model_not_deletable")
        job.model_deleted = True
        keys = [job.id, *s.scalars(select(Checkpoint.id).where(Checkpoint.job_id == job.id)).all()]
    request.app.state.pool.unload(keys)
    return {"id": model, "object": "model", "deleted": True}


# -- chat completions -----------------------------------------------------------------------------
class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1, max_length=2000)
    messages: list[ChatMessage] = Field(min_length=1, max_length=1000)
    max_tokens: int | None = Field(None, ge=1, le=32768)
    max_completion_tokens: int | None = Field(None, ge=1, le=32768)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = Field(None, ge=1, le=16)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    store: bool | None = False  # keep request and answer (GET /v1/chat/completions; serve/stored.py)
    metadata: stored.MetadataField = None


def _messages(req: ChatRequest):
    from honing.data.conversation import Message

    out = []
    for i, m in enumerate(req.messages):
        content = m.content
        if isinstance(content, list):
            parts = []
            for part in content:
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise APIError(400, f"messages[{i}].content: only text parts are supported",
                                   param=f"messages[{i}].content")
                parts.append(part["text"])
            content = "".join(parts)
        role = "system" if m.role == "developer" else m.role
        out.append(Message(role, content or ""))
    return out


def _params(req: ChatRequest) -> Params:
    stop = req.stop if isinstance(req.stop, list) else [req.stop] if req.stop else []
    if len(stop) > 4 or any(not s for s in stop):
        raise APIError(400, "stop: up to 4 non-empty strings", param="stop")
    return Params(max_new_tokens=req.max_completion_tokens or req.max_tokens or 256,
                  temperature=1.0 if req.temperature is None else req.temperature,
                  top_p=1.0 if req.top_p is None else req.top_p, stop=tuple(stop), seed=req.seed, n=req.n or 1)


class _Gate:
    def __init__(self, limit: int):
        self.limit, self.n, self.lock = limit, 0, threading.Lock()

    def enter(self) -> None:
        with self.lock:
            if self.n >= self.limit:
                raise APIError(429, "Too many chat requests are waiting for a model; retry shortly",
                               code="rate_limit_exceeded")
            self.n += 1

    def leave(self) -> None:
        with self.lock:
            self.n -= 1


GATE = _Gate(MAX_PENDING_CHATS)


@router.post("/chat/completions", tags=["chat"], response_model=S.ChatCompletion)
def chat_completions(request: Request, project: Project, req: ChatRequest):
    from honing.data.render import render_prompt

    pool = request.app.state.pool
    with request.app.state.Session() as s:
        target = resolve_target(s, project, req.model)
    params = _params(req)
    if req.stream and params.n > 1:
        raise APIError(400, "n: streaming supports n=1 only", param="n")
    GATE.enter()
    try:
        tok = pool.tokenizer(target.base)
        prompt_ids = render_prompt(tok, _messages(req))
        cid, created = new_id("chatcmpl"), int(time.time())
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            gen = _sse(pool, target, prompt_ids, params, req.model, cid, created, include_usage or bool(req.store))
            if req.store:
                gen = stored.store_stream(request.app.state.Session, project, req, gen,
                                          client_wants_usage=include_usage)
            return StreamingResponse(_released(gen), media_type="text/event-stream")
        choices = pool.complete(target, prompt_ids, params)
    except BaseException:
        GATE.leave()
        raise
    GATE.leave()
    completion = sum(c.completion_tokens for c in choices)
    body = {
        "id": cid, "object": "chat.completion", "created": created, "model": req.model,
        "choices": [{"index": i, "message": {"role": "assistant", "content": c.text, "refusal": None},
                     "finish_reason": c.finish_reason, "logprobs": None} for i, c in enumerate(choices)],
        "usage": {"prompt_tokens": len(prompt_ids), "completion_tokens": completion,
                  "total_tokens": len(prompt_ids) + completion},
        "system_fingerprint": None,
    }
    if req.store:
        stored.save(request.app.state.Session, project, stored.request_record(req), body, req.metadata)
    return body


def _released(gen):
    try:
        yield from gen
    finally:
        GATE.leave()


def _sse(pool, target, prompt_ids, params, model, cid, created, include_usage):
    def chunk(delta: dict, finish=None, usage=None, choices=True) -> str:
        body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}] if choices
                else [], "system_fingerprint": None}
        if include_usage:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    tokens = 0
    try:
        for text, finish, tokens in pool.stream(target, prompt_ids, params):
            if finish is None:
                yield chunk({"content": text})
            else:
                yield chunk({}, finish)
    except APIError as e:
        yield f"data: {json.dumps(error_body(e.status, e.message, e.param, e.code))}\n\n"
    except Exception:
        import logging

        logging.getLogger("honing.serve").exception("stream failed")
        yield f"data: {json.dumps(error_body(500, 'The server had an error while generating.'))}\n\n"
    if include_usage:
        usage = {"prompt_tokens": len(prompt_ids), "completion_tokens": tokens,
                 "total_tokens": len(prompt_ids) + tokens}
        yield chunk({}, usage=usage, choices=False)
    yield "data: [DONE]\n\n"

