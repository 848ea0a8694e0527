"""The typed evaluation configuration: one schema for ``hone eval`` flags, an ``--config`` YAML file,
``--set key=value`` overrides and the Python API (``evaluate(config=EvalConfig(...))`` or keyword
arguments). It follows :class:`honing.config.TrainConfig`: unknown keys and bad values raise
:class:`~honing.errors.ConfigError` naming the key, and the field descriptions are the documentation
(docs/evaluation.md lists them from :func:`honing.config.describe_fields`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from honing.config import _format_validation_error, _set_dotted, load_recipe, parse_override
from honing.errors import ConfigError
from honing.evaluate.baselines import REGISTRY

# Keyword names ``evaluate()`` took before the schema existed, mapped to its keys (they keep working).
LEGACY_NAMES = {"train_path": "train_data", "docs_dir": "docs", "out_dir": "out", "write_report": "report"}


class EvalConfig(BaseModel):
    """Everything one evaluation needs: the fine-tuned run (or a base model) against the cheaper approaches
    on the same examples, each with a bootstrap CI."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    model: str = Field(..., description="A training run directory (fine-tuned vs baselines), or a base model "
                       "reference: catalog name, local directory or .gguf (baselines only).")
    data: str = Field(..., description="Evaluation examples (chat JSONL or any format `hone data` reads); the final "
                      "assistant turn of each is the reference (for tool-calling data: the last turn that calls).")
    train_data: str | None = Field(None, description="Training examples for few-shot and RAG; null: the run's "
                                   "training data from run.json.")
    baselines: list[str] = Field(
        ["zero-shot", "few-shot", "rag"],
        description=f"Approaches run on the base model, from the registry: {', '.join(REGISTRY)} (empty: none).")
    docs: str | None = Field(None, description="Folder of .txt/.md documents for the RAG baseline; null: retrieve "
                             "over the training answers.")
    metric: Literal["auto", "classification", "json", "text", "tool_call"] = Field(
        "auto", description="The task's metrics: classification, json, text or tool_call. auto: what the data's "
        "hone_eval.json declares, else tool_call for data with tools or tool calls, else detected from the "
        "references (a small label set, JSON, or free text).")
    schema_: str | dict | None = Field(
        None, alias="schema", description="JSON schema (a file path, or the object) the answers must match: adds "
        "schema_valid to the json task. null: the one hone_eval.json names, if any.")
    out: str | None = Field(None, description="Report folder; null: RUN_DIR/eval, or ./hone-eval for a base model.")
    report: bool = Field(True, description="Write eval.json, report.md and report.html into `out`.")
    max_examples: int | None = Field(None, ge=1, description="Evaluate only the first N examples; null: all.")
    max_new_tokens: int | None = Field(None, ge=1, description="Longest generated answer in tokens; null (or auto): "
                                       "p95 of the reference lengths x 1.5 + 9, at most 512.")
    k_shots: int = Field(3, ge=1, description="Training examples per few-shot prompt.")
    rag_k: int = Field(2, ge=1, description="Retrieved chunks per RAG prompt.")
    forgetting: bool = Field(True, description="Also measure general-text perplexity and general QA, base vs "
                             "fine-tuned.")
    dtype: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="Compute dtype; auto: bf16 only where this machine runs it faster (measured).")
    device: str = Field("auto", description="cpu, cuda (or cuda:N) or auto: CUDA when available.")
    threads: Literal["auto"] | int = Field(
        "auto", description="CPU threads: auto (measured: 1 when the cores are busy, else torch's default) or N.")

    @field_validator("model", "data", "train_data", "docs", "out", "schema_", mode="before")
    @classmethod
    def _paths_as_text(cls, v):
        return str(v) if isinstance(v, os.PathLike) else v

    @field_validator("model", "data")
    @classmethod
    def _nonempty(cls, v):
        if not v.strip():
            raise ValueError("must not be empty")
        return v

    @field_validator("baselines", mode="before")
    @classmethod
    def _baseline_list(cls, v):
        if isinstance(v, str):  # the CLI's comma-separated form
            v = v.split(",")
        if isinstance(v, (list, tuple)):
            v = [b.strip() if isinstance(b, str) else b for b in v]
            v = [b for b in v if b != ""]
        return v

    @field_validator("baselines")
    @classmethod
    def _known_baselines(cls, v):
        bad = [b for b in v if b not in REGISTRY]
        if bad:
            raise ValueError(f"unknown baseline(s) {', '.join(bad)}: choose from {', '.join(REGISTRY)}")
        if len(set(v)) != len(v):
            raise ValueError("a baseline is listed twice")
        return v

    @field_validator("max_new_tokens", mode="before")
    @classmethod
    def _auto_tokens(cls, v):
        return None if v == "auto" else v

    @field_validator("threads", mode="before")
    @classmethod
    def _threads(cls, v):
        if v == "auto":
            return v
        if isinstance(v, str) and v.strip().isdigit():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError("must be a positive integer or 'auto'")
        return v

    def settings_dict(self) -> dict:
        """Every key as JSON (recorded in eval.json's settings)."""
        return self.model_dump(mode="json", by_alias=True)


def validate_eval_config(raw: dict, source: str = "evaluation settings") -> EvalConfig:
    """An :class:`EvalConfig` from a dict, or a :class:`ConfigError` naming each bad key."""
    try:
        return EvalConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, source, EvalConfig)) from None


def eval_config(config_file: str | os.PathLike | None = None, overrides: list[str] | None = None,
                **values: Any) -> EvalConfig:
    """YAML file <- ``values`` (CLI flags or keyword arguments; None = not given; the old ``evaluate()``
    keyword names are accepted) <- ``--set key=value`` overrides, validated once."""
    raw: dict = load_recipe(config_file) if config_file else {}
    for key, value in values.items():
        if value is not None:
            _set_dotted(raw, LEGACY_NAMES.get(key, key), value)
    for item in overrides or []:
        _set_dotted(raw, *parse_override(item))
    return validate_eval_config(raw, str(config_file) if config_file else "evaluation settings")


def schema_object(config: EvalConfig) -> dict | None:
    """The configured JSON schema as an object (read from its file when a path)."""
    schema = config.schema_
    if schema is None or isinstance(schema, dict):
        return schema
    try:
        return json.loads(Path(schema).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"schema {schema}: cannot read a JSON schema ({e})") from e
