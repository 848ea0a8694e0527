"""Response shapes of the API, as OpenAI's (and the `openai` client's types) define them: the routes
declare them so the served OpenAPI document says what the server really answers (FastAPI also checks
every response against them)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"] = "processed"
    status_details: str | None = None
    expires_at: int | None = None


class Deleted(BaseModel):
    id: str
    object: str
    deleted: bool


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class Hyperparameters(BaseModel):
    n_epochs: int | Literal["auto"] | None = None
    batch_size: int | Literal["auto"] | None = None
    learning_rate_multiplier: float | Literal["auto"] | None = None
    beta: float | Literal["auto"] | None = None


class FineTuningJob(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    model: str
    organization_id: str
    status: Literal["validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled"]
    training_file: str
    validation_file: str | None = None
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    trained_tokens: int | None = None
    error: JobError | None = None
    result_files: list[str]
    seed: int
    hyperparameters: Hyperparameters
    method: dict[str, Any]
    estimated_finish: int | None = None
    integrations: list[Any] = []
    metadata: dict[str, str] | None = None
    user_provided_suffix: str | None = None


class JobEvent(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"]
    data: dict[str, Any] = {}


class CheckpointMetrics(BaseModel):
    step: float | None = None
    train_loss: float | None = None
    train_mean_token_accuracy: float | None = None
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None
    full_valid_loss: float | None = None
    full_valid_mean_token_accuracy: float | None = None
    # Reinforcement jobs (Honing's names; OpenAI's client keeps extra keys): the step's mean reward and the
    # validation reward with its bootstrap CI.
    train_reward: float | None = None
    valid_reward: float | None = None
    valid_reward_ci_low: float | None = None
    valid_reward_ci_high: float | None = None


class JobCheckpoint(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    step_number: int
    metrics: CheckpointMetrics


class Page(BaseModel):
    object: Literal["list"] = "list"
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


class FilePage(Page):
    data: list[FileObject]


class JobPage(Page):
    data: list[FineTuningJob]


class EventPage(Page):
    data: list[JobEvent]


class CheckpointPage(Page):
    data: list[JobCheckpoint]


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    engine: str | None = Field(None, description="Honing: the engine that answers chat with this model "
                               "(llama.cpp or transformers).")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


class MetricsRows(BaseModel):
    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    total_steps: int | None = None


class ValidationProblem(BaseModel):
    line: int | None = None
    category: str
    severity: str | None = None
    message: str
    file: str | None = None


class ValidationReport(BaseModel):
    """`hone data validate --json` of one file."""

    ok: bool
    problems: list[ValidationProblem]
    stats: dict[str, Any]
    path: str | None = None
    format: str | None = None
    unit: str | None = None
    errors: int | None = None
    warnings: int | None = None
    counts: dict[str, int] = {}
    problems_truncated: dict[str, int] = {}


class ChatToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: dict[str, str]  # {"name", "arguments" (JSON text)}


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None  # None when the answer is only tool calls
    refusal: str | None = None
    tool_calls: list[ChatToolCall] | None = None


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    finish_reason: Literal["stop", "length", "tool_calls"]
    logprobs: None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    """Non-streamed answer. With ``stream: true`` the answer is ``text/event-stream`` of
    ``chat.completion.chunk`` objects ending with ``data: [DONE]``."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class Health(BaseModel):
    status: Literal["ok"]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


ERROR_RESPONSES: dict = {code: {"model": ErrorResponse, "description": desc} for code, desc in (
    (400, "Invalid request (param names the field)"), (401, "Missing or bad API key"),
    (404, "No such object in this project"), (409, "Conflict with the object's state"),
    (429, "Too many requests waiting"), (500, "Server error (no details)"))}
