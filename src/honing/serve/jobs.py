"""Fine-tuning jobs: OpenAI's job request mapped onto Honing's training configuration, and the job, event
and checkpoint objects the client parses.

Hyperparameters (``method.<type>.hyperparameters`` or the older top-level ``hyperparameters``); method
``supervised`` trains objective ``sft``, method ``dpo`` objective ``dpo`` (``beta`` -> ``dpo.beta``), method
``reinforcement`` objective ``grpo`` with ``method.reinforcement.grader`` (OpenAI's grader object, checked
by ``honing.graders``; ``compute_multiplier`` m -> ``grpo.group_size`` = round(4 m), at least 2;
``eval_interval`` -> ``eval_every``; ``eval_samples`` and ``reasoning_effort`` are accepted and reported as not
applicable, see :data:`NOT_APPLICABLE`):

* ``n_epochs`` -> ``epochs``; ``batch_size`` -> ``batch_size`` (``"auto"`` stays auto: Honing picks them
  from the dataset size, as ``hone train`` does);
* ``learning_rate_multiplier`` m -> ``learning_rate`` = m x the learning rate ``auto`` would pick for the
  method at the requested batch size (``honing.train.auto.auto_learning_rate``; at its reference batch
  when batch_size is auto). ``"auto"`` keeps the automatic learning rate (multiplier 1).
"""

from __future__ import annotations

from pathlib import Path

from honing.serve.db import Checkpoint, Job, JobEvent
from honing.serve.errors import APIError

TERMINAL = ("succeeded", "failed", "cancelled")
# Honing-specific training keys a job may set through the request's ``honing_config`` extension.
ALLOWED_CONFIG_KEYS = {
    "method", "lora", "max_steps", "max_length", "micro_batch_size", "lr_scheduler", "warmup_ratio",
    "weight_decay", "max_grad_norm", "packing", "eval_every", "save_every", "keep_checkpoints",
    "early_stopping_patience", "eval_max_examples", "eval_fraction", "dtype", "activation_checkpointing",
    "learning_rate", "dpo", "grpo", "kto", "orpo", "objective",
    "gate",  # a release gate: the model is promoted only when the end-of-training evaluation passes it
}


def _number(value, param: str, *, integer: bool, low: float, high: float):
    if value is None or value == "auto":
        return "auto"
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if ok and integer:
        ok = float(value).is_integer()
    if not ok or not (low <= value <= high):
        kind = "an integer" if integer else "a number"
        raise APIError(400, f"{param}: expected {kind} in [{low:g}, {high:g}] or 'auto', got {value!r}", param=param)
    return int(value) if integer else float(value)


METHODS = ("supervised", "dpo", "reinforcement")
METHOD_HYPERPARAMETERS = {
    "supervised": set(),
    "dpo": {"beta"},
    "reinforcement": {"compute_multiplier", "eval_interval", "eval_samples", "reasoning_effort"},
}
# OpenAI hyperparameters with no counterpart here: accepted (a client's request stays valid), echoed back,
# and named in a job event so nobody believes they took effect.
NOT_APPLICABLE = {
    "reasoning_effort": "Honing's models have no reasoning-effort setting",
    "eval_samples": "validation samples one completion per validation prompt (greedy: grpo.eval_temperature)",
}
GROUP_SIZE_PER_COMPUTE = 4  # completions per prompt at compute_multiplier 1 (grpo.group_size's default)


def hyperparameters_of(body: dict) -> tuple[dict, dict]:
    """(method object as echoed back, requested hyperparameters {n_epochs, batch_size,
    learning_rate_multiplier[, beta | grader, compute_multiplier, eval_interval, not_applicable]}) from a
    create request; 400 for what this server cannot train."""
    method = body.get("method") or {"type": "supervised"}
    if not isinstance(method, dict):
        raise APIError(400, "method: expected an object", param="method")
    mtype = method.get("type", "supervised")
    if mtype not in METHODS:
        raise APIError(400, f"method.type: {mtype!r} is not supported by this server (supported: "
                            f"{', '.join(repr(m) for m in METHODS)}; Honing's other objectives: honing_config)",
                       param="method.type")
    section = method.get(mtype) or {}
    hp = (section.get("hyperparameters") if isinstance(section, dict) else None) or {}
    legacy = body.get("hyperparameters") or {}
    if not isinstance(legacy, dict) or not isinstance(hp, dict):
        raise APIError(400, "hyperparameters: expected an object", param="hyperparameters")
    hp = dict(hp)
    for k, v in legacy.items():
        hp.setdefault(k, v)
    allowed = {"n_epochs", "batch_size", "learning_rate_multiplier"} | METHOD_HYPERPARAMETERS[mtype]
    unknown = sorted(set(hp) - allowed)
    if unknown:
        raise APIError(400, f"hyperparameters: unknown key(s) {unknown} for method {mtype} (supported: "
                            f"{', '.join(sorted(allowed))})", param="hyperparameters")
    requested = {
        "n_epochs": _number(hp.get("n_epochs"), "hyperparameters.n_epochs", integer=True, low=1, high=50),
        "batch_size": _number(hp.get("batch_size"), "hyperparameters.batch_size", integer=True, low=1, high=256),
        "learning_rate_multiplier": _number(hp.get("learning_rate_multiplier"),
                                            "hyperparameters.learning_rate_multiplier", integer=False,
                                            low=1e-3, high=50),
    }
    if mtype == "dpo":
        requested["beta"] = _number(hp.get("beta"), "hyperparameters.beta", integer=False, low=1e-4, high=10)
    echoed = {"type": mtype, mtype: {"hyperparameters": dict(requested)}}
    if mtype == "reinforcement":
        grader = _reinforcement(section, hp, requested)
        echoed[mtype] = {"grader": grader, "hyperparameters": {k: v for k, v in requested.items()
                                                               if k not in ("grader", "not_applicable")}}
    return echoed, requested


def _reinforcement(section: dict, hp: dict, requested: dict) -> dict:
    """Check ``method.reinforcement``'s grader and its hyperparameters into ``requested``; the grader."""
    from honing.graders import GraderError, load_grader

    grader = section.get("grader")
    if not isinstance(grader, dict):
        raise APIError(400, "method.reinforcement.grader: required (OpenAI's grader object: string_check, "
                            "text_similarity, python, score_model or multi)", param="method.reinforcement.grader")
    try:
        load_grader(grader, path="method.reinforcement.grader").close()
    except GraderError as e:
        raise APIError(400, str(e), param="method.reinforcement.grader") from None
    requested["grader"] = grader
    requested["compute_multiplier"] = _number(hp.get("compute_multiplier"), "hyperparameters.compute_multiplier",
                                              integer=False, low=0.5, high=16)
    requested["eval_interval"] = _number(hp.get("eval_interval"), "hyperparameters.eval_interval", integer=True,
                                         low=1, high=100_000)
    effort = hp.get("reasoning_effort", "default")
    if effort not in ("default", "low", "medium", "high"):
        raise APIError(400, f"hyperparameters.reasoning_effort: expected default, low, medium or high, got "
                            f"{effort!r}", param="hyperparameters.reasoning_effort")
    requested["reasoning_effort"] = effort
    requested["eval_samples"] = _number(hp.get("eval_samples"), "hyperparameters.eval_samples", integer=True,
                                        low=1, high=1000)
    requested["not_applicable"] = sorted(k for k in NOT_APPLICABLE if k in hp)
    return grader


def base_learning_rate(method: str, batch_size) -> float:
    from honing.train.auto import LR_REFERENCE_BATCH, auto_learning_rate

    return auto_learning_rate(method, batch_size if isinstance(batch_size, int) else LR_REFERENCE_BATCH)


def training_config(requested: dict, seed: int, extra: dict, base_path: str | None = None) -> dict:
    """The job's training keys (the worker adds the files and run directory and writes the whole configuration
    into the run directory: ``RUN/config.yaml``). ``base_path``: where an operator's named base model is (the
    job keeps the name the client used; ``model`` here is what training loads)."""
    config = {k: v for k, v in extra.items()}
    if base_path is not None:
        config["model"] = base_path
    config["seed"] = seed
    config["epochs"] = requested["n_epochs"]
    config["batch_size"] = requested["batch_size"]
    if "beta" in requested:  # method dpo: the preference objective (honing.train.preference)
        config["objective"] = "dpo"
        if requested["beta"] != "auto":
            config["dpo"] = {**config.get("dpo", {}), "beta": requested["beta"]}
    if "grader" in requested:  # method reinforcement: GRPO against the grader (honing.train.grpo)
        config["objective"] = "grpo"
        grpo = {**config.get("grpo", {}), "grader": requested["grader"]}
        if requested["compute_multiplier"] != "auto":
            grpo["group_size"] = max(2, round(GROUP_SIZE_PER_COMPUTE * requested["compute_multiplier"]))
        config["grpo"] = grpo
        if requested["eval_interval"] != "auto" and "eval_every" not in extra:
            config["eval_every"] = requested["eval_interval"]
    m = requested["learning_rate_multiplier"]
    if m != "auto" and "learning_rate" not in extra:
        config["learning_rate"] = m * base_learning_rate(str(extra.get("method", "lora")), requested["batch_size"])
    return config


def check_extra_config(extra) -> dict:
    """The ``honing_config`` extension: a few training keys, checked against the real schema."""
    if extra is None:
        return {}
    if not isinstance(extra, dict):
        raise APIError(400, "honing_config: expected an object of training keys", param="honing_config")
    unknown = sorted(set(extra) - ALLOWED_CONFIG_KEYS)
    if unknown:
        raise APIError(400, f"honing_config: key(s) {unknown} cannot be set per job (allowed: "
                            f"{', '.join(sorted(ALLOWED_CONFIG_KEYS))})", param="honing_config")
    from honing.config import build_config
    from honing.errors import ConfigError

    try:
        build_config(None, overrides=[], values={"data": "x.jsonl", **extra})
    except ConfigError as e:
        raise APIError(400, str(e), param="honing_config") from None
    return extra


def model_label(model: str) -> str:
    """The base model's name inside ``ft:<base>:...``: a catalog name as is, a path by its last part."""
    name = Path(model).name if ("/" in model or model.startswith(".")) else model
    return name.replace(":", "-") or "model"


def fine_tuned_name(job: Job) -> str:
    suffix = job.suffix or "honing"
    return f"ft:{model_label(job.model)}:{job.project}:{suffix}:{job.id}"


def checkpoint_name(job: Job, step: int) -> str:
    return f"{fine_tuned_name(job)}:ckpt-step-{step}"


def resolved_hyperparameters(job: Job) -> dict:
    """As requested until the loop resolves them; then the values it trains with."""
    mtype = job.method.get("type", "supervised")
    hp = dict(job.method[mtype]["hyperparameters"])
    r = job.resolved or {}
    if r:
        hp["n_epochs"] = r.get("epochs", hp["n_epochs"])
        hp["batch_size"] = r.get("batch_size", hp["batch_size"])
        lr = r.get("learning_rate")
        if lr:
            base = base_learning_rate(str(job.config.get("method", "lora")),
                                      job.method[mtype]["hyperparameters"]["batch_size"])
            hp["learning_rate_multiplier"] = round(lr / base, 6)
    return hp


def job_object(job: Job) -> dict:
    hp = resolved_hyperparameters(job)
    return {
        "id": job.id, "object": "fine_tuning.job", "created_at": job.created_at, "model": job.model,
        "organization_id": job.project, "status": job.status,
        "training_file": job.training_file, "validation_file": job.validation_file,
        "fine_tuned_model": job.fine_tuned_model if job.status == "succeeded" else None,
        "finished_at": job.finished_at, "trained_tokens": job.trained_tokens,
        "error": job.error, "result_files": job.result_files or [], "seed": job.seed,
        "hyperparameters": {k: hp[k] for k in ("n_epochs", "batch_size", "learning_rate_multiplier")},
        "method": _method_object(job, hp),
        "estimated_finish": job.estimated_finish if job.status == "running" else None,
        "integrations": [], "metadata": job.job_metadata, "user_provided_suffix": job.suffix,
    }


def _method_object(job: Job, hp: dict) -> dict:
    """The job's method as OpenAI echoes it: its type, and its section with the resolved hyperparameters
    (the reinforcement section keeps its grader)."""
    mtype = job.method.get("type", "supervised")
    return {"type": mtype, mtype: {**job.method.get(mtype, {}), "hyperparameters": hp}}


def event_object(e: JobEvent) -> dict:
    return {"id": e.id, "object": "fine_tuning.job.event", "created_at": e.created_at, "level": e.level,
            "message": e.message, "type": e.type, "data": e.data or {}}


def checkpoint_object(c: Checkpoint) -> dict:
    return {"id": c.id, "object": "fine_tuning.job.checkpoint", "created_at": c.created_at,
            "fine_tuned_model_checkpoint": c.model_name, "fine_tuning_job_id": c.job_id,
            "step_number": c.step, "metrics": c.metrics}


def base_of(job: Job) -> str:
    """What the job's base model loads: the operator's path for a named model, else the name itself."""
    return (job.config or {}).get("model") or job.model
