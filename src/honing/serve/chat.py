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

from honing.data.tools import TOOL_CALL_OPEN, read_tool_calls, read_tools, split_tool_calls
from honing.rundir import RunDir
from honing.serve import jobs as J
from honing.serve import schemas as S
from honing.serve import stored
from honing.serve.auth import Project
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


def _project_bases(s, project: str) -> dict[str, str]:
    """The base models this project's jobs trained on: name -> what it loads."""
    return {j.model: J.base_of(j) for j in s.scalars(select(Job).where(Job.project == project)).all()}


def _bases(s, project: str, settings) -> dict[str, str]:
    """Every base model this project may chat with (name -> what it loads): the catalog, the operator's
    models offered to it, and those its jobs trained on. Any other name is the same 404."""
    out = {m: m for m in _catalog_names()}
    out.update({m: settings.base_model_ref(project, m) for m in settings.offered_base_models(project)})
    for name, ref in _project_bases(s, project).items():
        out.setdefault(name, ref)
    return out


def resolve_target(s, project: str, model: str, settings) -> Target:
    """What ``model`` names for this project, or the 404 a foreign or unknown model gets."""
    base = _bases(s, project, settings).get(model)
    if base is not None:
        return Target(base=base)
    job = s.scalar(select(Job).where(Job.project == project, Job.fine_tuned_model == model,
                                     Job.status == "succeeded", Job.model_deleted.is_(False)))
    if job is not None:
        run = RunDir(job.run_dir)
        if run.has_full_model():
            return Target(base=str(run.final_dir))  # method full: the result is a whole model, served as a base
        return Target(J.base_of(job), job.id, run.final_dir)
    ck = s.scalar(select(Checkpoint).where(Checkpoint.project == project, Checkpoint.model_name == model))
    if ck is not None:
        parent = s.get(Job, ck.job_id)
        if parent is None or parent.model_deleted:
            raise _not_found(model)
        if parent.status != "succeeded":
            raise APIError(409, f"Checkpoint models of job {parent.id} can be used once the job has succeeded "
                                f"(it is {parent.status})", param="model", code="model_not_ready")
        run = RunDir(parent.run_dir)
        if run.has_full_model():
            raise APIError(409, f"Checkpoints of a full fine-tuning job are not served; chat with the job's model "
                                f"({parent.fine_tuned_model}) instead", param="model", code="model_not_ready")
        return Target(J.base_of(parent), ck.id, run.final_dir, Path(ck.weights))
    raise _not_found(model)


def _model_obj(mid: str, created: int, owned_by: str, engine: str | None = None) -> dict:
    return {"id": mid, "object": "model", "created": created, "owned_by": owned_by, "engine": engine}


def _all_models(s, project: str, engines, settings) -> list[dict]:
    """Every model this project may chat with, each with the engine that answers it (serve/engines)."""
    out = [_model_obj(m, 0, "honing", engines.name_for(Target(ref))) for m, ref in _bases(s, project, settings).items()]
    jobs = s.scalars(select(Job).where(Job.project == project, Job.status == "succeeded",
                                       Job.model_deleted.is_(False)).order_by(Job.created_at)).all()
    for j in jobs:
        engine = engines.name_for(Target(J.base_of(j), j.id, RunDir(j.run_dir).final_dir))
        out.append(_model_obj(j.fine_tuned_model, j.finished_at or j.created_at, project, engine))
        for ck in s.scalars(select(Checkpoint).where(Checkpoint.job_id == j.id).order_by(Checkpoint.step)).all():
            out.append(_model_obj(ck.model_name, ck.created_at, project, engine))
    return out


@router.get("/models", tags=["models"], response_model=S.ModelList)
def list_models(request: Request, project: Project) -> dict:
    with request.app.state.Session() as s:
        return {"object": "list", "data": _all_models(s, project, request.app.state.pool, request.app.state.settings)}


@router.get("/models/{model:path}", tags=["models"], response_model=S.Model)
def retrieve_model(request: Request, project: Project, model: str) -> dict:
    with request.app.state.Session() as s:
        for m in _all_models(s, project, request.app.state.pool, request.app.state.settings):
            if m["id"] == model:
                return m
    raise _not_found(model)


@router.delete("/models/{model:path}", tags=["models"], response_model=S.Deleted)
def delete_model(request: Request, project: Project, model: str) -> dict:
    with request.app.state.Session.begin() as s:
        job = s.scalar(select(Job).where(Job.project == project, Job.fine_tuned_model == model,
                                         Job.status == "succeeded", Job.model_deleted.is_(False)))
        if job is None:
            resolve_target(s, project, model, request.app.state.settings)  # 404 for unknown or foreign names
            raise APIError(400, f"'{model}' is not a fine-tuned model of this project; only those can be deleted",
                           param="model", code="model_not_deletable")
        job.model_deleted = True
        keys = [job.id, *s.scalars(select(Checkpoint.id).where(Checkpoint.job_id == job.id)).all()]
    request.app.state.pool.unload(keys)
    return {"id": model, "object": "model", "deleted": True}


# -- chat completions -----------------------------------------------------------------------------
class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[Any] | None = None  # checked by honing.data.tools, as in training files
    tool_call_id: str | None = None


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
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    metadata: stored.MetadataField = None


def _messages(req: ChatRequest):
    from honing.data.conversation import Message

    out = []
    for i, m in enumerate(req.messages):
        calls = read_tool_calls(m.tool_calls, _bad(f"messages[{i}].tool_calls"), f"messages[{i}]") \
            if m.tool_calls else ()
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
        if role == "tool" and not m.tool_call_id:
            raise APIError(400, f"messages[{i}]: a tool message needs 'tool_call_id'", param=f"messages[{i}]")
        out.append(Message(role, content or "", tool_calls=calls, tool_call_id=m.tool_call_id))
    return out


def _bad(param: str):
    """An ``add(category, message)`` for honing.data.tools' checks that answers 400 at the first problem."""
    def add(category: str, message: str) -> None:
        raise APIError(400, f"{param}: {message}", param=param)
    return add


def _tools(req: ChatRequest) -> tuple[dict, ...]:
    """The tools the model is told about: none with tool_choice "none"; only the named one when the
    choice names a function (and :func:`_forced_start` makes the reply begin that call)."""
    if not req.tools or req.tool_choice == "none":
        return ()
    tools = read_tools(req.tools, _bad("tools"))
    choice = req.tool_choice
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        tools = tuple(t for t in tools if t["function"]["name"] == name)
        if not tools:
            raise APIError(400, f"tool_choice: no tool named {name!r} in tools", param="tool_choice")
    elif choice not in (None, "auto", "required"):
        raise APIError(400, "tool_choice: 'none', 'auto', 'required' or {\"type\": \"function\", ...}",
                       param="tool_choice")
    return tools


def _forced_start(req: ChatRequest, tools: tuple[dict, ...]) -> str:
    """The text the reply is made to begin with, written into the prompt after the assistant's header:
    ``tool_choice: "required"`` opens a call (and names the tool when there is one), a named function opens a
    call to it, so the model continues the call instead of choosing whether to make one. Which tool among
    several and the arguments are still the model's: a model that then writes no valid call returns its text
    as content."""
    if not tools or req.tool_choice in (None, "auto"):
        return ""
    if req.tool_choice == "required" and len(tools) > 1:
        return f'{TOOL_CALL_OPEN}\n{{"name": "'  # the model names one of the tools
    # a named function, or "required" with one tool: the only call there can be
    return f'{TOOL_CALL_OPEN}\n{{"name": {json.dumps(tools[0]["function"]["name"])}, "arguments": '


def _answer(text: str, finish: str, tools_on: bool) -> tuple[dict, str]:
    """(message, finish_reason): text in the fallback tool format becomes OpenAI's ``tool_calls``."""
    calls = split_tool_calls(text)[1] if tools_on else None
    if not calls:
        return {"role": "assistant", "content": text, "refusal": None}, finish
    return ({"role": "assistant", "content": split_tool_calls(text)[0] or None, "refusal": None,
             "tool_calls": _openai_calls(calls)}, "tool_calls")


def _openai_calls(calls: list[dict]) -> list[dict]:
    return [{"id": new_id("call"), "type": "function", "function": c} for c in calls]


def _held_back(text: str) -> int:
    """How much of streamed ``text`` may be sent as content: up to a ``<tool_call>``, or short of a suffix
    that could be its beginning."""
    start = text.find(TOOL_CALL_OPEN)
    if start >= 0:
        return start
    for k in range(min(len(TOOL_CALL_OPEN) - 1, len(text)), 0, -1):
        if text.endswith(TOOL_CALL_OPEN[:k]):
            return len(text) - k
    return len(text)


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
        target = resolve_target(s, project, req.model, request.app.state.settings)
    params = _params(req)
    if req.stream and params.n > 1:
        raise APIError(400, "n: streaming supports n=1 only", param="n")
    GATE.enter()
    try:
        tok = pool.tokenizer(target.base)
        tools = _tools(req)
        forced = _forced_start(req, tools)
        prompt_ids = render_prompt(tok, _messages(req), tools)
        if forced:
            prompt_ids = [*prompt_ids, *tok.encode(forced, add_special_tokens=False)]
        cid, created = new_id("chatcmpl"), int(time.time())
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            gen = _sse(pool, target, prompt_ids, params, req.model, cid, created, include_usage or bool(req.store),
                       tools_on=bool(tools), forced=forced)
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
        "choices": [dict(zip(("message", "finish_reason"), _answer(forced + c.text, c.finish_reason, bool(tools))),
                         index=i, logprobs=None) for i, c in enumerate(choices)],
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


def _sse(pool, target, prompt_ids, params, model, cid, created, include_usage, tools_on=False, forced=""):
    def chunk(delta: dict, finish=None, usage=None, choices=True) -> str:
        body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}] if choices
                else [], "system_fingerprint": None}
        if include_usage:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    tokens = 0
    text, sent = forced, 0  # with tools: content is held back from a <tool_call> on, parsed at the end
    try:
        for delta, finish, tokens in pool.stream(target, prompt_ids, params):
            text += delta
            calls = split_tool_calls(text)[1] if tools_on and finish is not None else None
            upto = _held_back(text) if tools_on and (finish is None or calls) else len(text)
            if upto > sent:
                yield chunk({"content": text[sent:upto]})
                sent = upto
            if calls:  # the calls whole, in one delta (the client accumulates deltas by index either way)
                yield chunk({"tool_calls": [dict(c, index=j) for j, c in enumerate(_openai_calls(calls))]})
                finish = "tool_calls"
            if finish is not None:
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

