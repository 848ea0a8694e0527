"""What every grader shares: the sample it grades, the result it returns (shaped like OpenAI's
``/fine_tuning/alpha/graders/run`` response) and the error a grader that does not validate raises."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from honing.errors import ConfigError


class GraderError(ConfigError):
    """A grader object that does not validate: the message is ``<path>: <what>``."""


def where(path: str, key: str | int) -> str:
    """The dotted path of ``key`` under ``path`` ("" is the grader object itself)."""
    return f"{path}.{key}" if path else str(key)


# The boolean flags of OpenAI's ``metadata.errors`` (openai.types.fine_tuning.alpha.GraderRunResponse).
ERROR_FLAGS = (
    "formula_parse_error",
    "invalid_variable_error",
    "model_grader_parse_error",
    "model_grader_refusal_error",
    "model_grader_server_error",
    "other_error",
    "python_grader_runtime_error",
    "python_grader_server_error",
    "sample_parse_error",
    "truncated_observation_error",
    "unresponsive_reward_error",
)
# Where OpenAI already names a field for a flag's explanation we use it; every other flag's reason goes
# to ``<flag>_details`` (an extra key: the official client's models accept extra keys).
_DETAIL_KEYS = {
    "model_grader_server_error": "model_grader_server_error_details",
    "python_grader_runtime_error": "python_grader_runtime_error_details",
}
MAX_DETAIL_CHARS = 2000


def detail_key(flag: str) -> str:
    return _DETAIL_KEYS.get(flag, f"{flag}_details")


def no_errors() -> dict:
    return {
        **{flag: False for flag in ERROR_FLAGS},
        "model_grader_server_error_details": None,
        "python_grader_runtime_error_details": None,
        "python_grader_server_error_type": None,
    }


def set_error(errors: dict, flag: str, detail: str, server_error_type: str | None = None) -> dict:
    """Raise ``flag`` with its reason (appended to an earlier reason of the same flag)."""
    errors[flag] = True
    key = detail_key(flag)
    text = detail if len(detail) <= MAX_DETAIL_CHARS else detail[: MAX_DETAIL_CHARS - 3] + "..."
    errors[key] = f"{errors[key]}; {text}" if errors.get(key) else text
    if server_error_type is not None:
        errors["python_grader_server_error_type"] = server_error_type
    return errors


def merge_errors(into: dict, other: dict) -> dict:
    """OR the flags of ``other`` into ``into`` and join their reasons (a multi grader's sub-graders)."""
    for flag in ERROR_FLAGS:
        if other.get(flag):
            set_error(into, flag, other.get(detail_key(flag)) or flag)
    if other.get("python_grader_server_error_type"):
        into["python_grader_server_error_type"] = other["python_grader_server_error_type"]
    return into


def error_reasons(errors: dict) -> list[str]:
    """Every raised flag as ``flag: reason``, for people reading a result."""
    return [f"{flag}: {errors.get(detail_key(flag)) or 'yes'}" for flag in ERROR_FLAGS if errors.get(flag)]


_NOT_JSON = object()


@dataclass(frozen=True)
class Sample:
    """One model output to grade and the dataset row (``item``) it answers.

    ``output_json`` is the output parsed as JSON (OpenAI fills it when the sample had a response format);
    left unset, it is parsed from ``output_text`` and is ``None`` when that is not JSON."""

    output_text: str
    item: dict = field(default_factory=dict)
    output_json: Any = _NOT_JSON

    def namespace(self) -> dict:
        """The ``sample`` namespace of templates and of a python grader's ``grade(sample, item)``."""
        parsed = self.output_json
        if parsed is _NOT_JSON:
            try:
                parsed = json.loads(self.output_text)
            except (ValueError, RecursionError):
                parsed = None
        return {"output_text": self.output_text, "output_json": parsed, "output_tools": [], "choices": []}


@dataclass
class GradeResult:
    """A reward (always finite; 0.0 on any error) and OpenAI's ``metadata`` for it."""

    reward: float
    metadata: dict
    sub_rewards: dict = field(default_factory=dict)
    token_usage_per_model: dict = field(default_factory=dict)

    @property
    def errors(self) -> list[str]:
        return error_reasons(self.metadata["errors"])


def metadata(name: str, type_: str, errors: dict | None = None, execution_time: float = 0.0,
             scores: dict | None = None, token_usage: int | None = None,
             sampled_model_name: str | None = None) -> dict:
    return {
        "name": name,
        "type": type_,
        "errors": errors if errors is not None else no_errors(),
        "execution_time": float(execution_time),
        "scores": scores or {},
        "token_usage": token_usage,
        "sampled_model_name": sampled_model_name,
    }


def run_result_json(result: GradeResult) -> dict:
    """OpenAI's ``/fine_tuning/alpha/graders/run`` response for one result."""
    return {
        "reward": result.reward,
        "metadata": result.metadata,
        "sub_rewards": result.sub_rewards,
        "model_grader_token_usage_per_model": result.token_usage_per_model,
    }


def as_reward(value: Any, low: float | None = None, high: float | None = None) -> tuple[float | None, str | None]:
    """``(reward, None)`` for a finite number inside [low, high], else ``(None, why not)``.

    Booleans count as 0/1 (a ``grade`` returning ``a == b`` is common)."""
    if isinstance(value, bool):
        value = float(value)
    if not isinstance(value, (int, float)):
        return None, f"returned {_short_repr(value)} ({type(value).__name__}), not a number"
    try:
        reward = float(value)
    except OverflowError:
        return None, f"returned {_short_repr(value)}, too large for a float"
    if not math.isfinite(reward):
        return None, f"returned {reward}, not a finite number"
    if (low is not None and reward < low) or (high is not None and reward > high):
        return None, f"returned {reward}, outside [{low:g}, {high:g}]"
    return reward, None


def _short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
