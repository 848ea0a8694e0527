"""The typed run configuration: one schema for YAML recipes, ``--set key=value`` overrides, CLI flags and
the HTTP API. Unknown keys and bad values raise :class:`~honing.errors.ConfigError` naming the key.

Field descriptions are the documentation: ``hone train --help`` lists them (see :func:`describe_fields`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from honing.errors import ConfigError

Auto = Literal["auto"]


class _Strict(BaseModel):
    # Unknown keys are errors (a typo must never be silently ignored); assignments are re-validated.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraConfig(_Strict):
    """Low-rank adapter settings (PEFT LoRA)."""

    r: int = Field(16, ge=1, le=1024, description="LoRA rank: the inner dimension of the low-rank update.")
    alpha: float = Field(32, gt=0, description="LoRA alpha: the update is scaled by alpha/r (alpha/sqrt(r) with rslora).")
    dropout: float = Field(
        0.0, ge=0, lt=1,
        description="Dropout on the adapter's input during training. 0 (PEFT's default) keeps the fused path; "
        "0.05 measured x0.89 speed and +0.7 GB on SmolLM2 (docs/performance.md).",
    )
    target_modules: Literal["all-linear"] | list[str] = Field(
        "all-linear",
        description="Modules that get adapters: 'all-linear' (every linear layer except the output head) "
        "or a list of module-name suffixes such as [q_proj, v_proj].",
    )
    top_layers: int | None = Field(
        None, ge=1,
        description="Adapters only on the last N transformer layers (null: every layer). The backward pass then "
        "stops at the first adapted layer, so a step costs much less on CPU.",
    )
    use_rslora: bool = Field(False, description="Rank-stabilized LoRA: scale by alpha/sqrt(r) instead of alpha/r.")
    use_dora: bool = Field(False, description="DoRA: weight-decomposed LoRA (magnitude + direction); slower.")
    fused: bool = Field(
        True,
        description="Train Llama/Mistral/Qwen2 decoder layers through Honing's fused LoRA functions (same math as "
        "PEFT's modules, ~0.6x the activation memory, fewer kernels); needs dropout 0 and no DoRA. false: PEFT's modules.",
    )


class GateConfig(_Strict):
    """The release gate (``hone eval --gate``, ``hone retrain``): when may a fine-tuned model ship?
    Differences are in the evaluation's primary metric (accuracy 0.02 = 2 points), paired bootstrap."""

    margin: float = Field(
        0.0, ge=-1, le=1,
        description="The fine-tuned model must beat every cheaper approach evaluated (zero-shot, few-shot, RAG on "
        "the base model) by more than this: the lower bound of the paired-bootstrap CI of the difference must exceed it.",
    )
    baselines: list[Literal["zero-shot", "few-shot", "rag"]] | None = Field(
        None, description="The cheaper approaches the gate counts; null: every one the evaluation ran.")
    production: str | None = Field(
        None, description="Run directory of the model in production: the candidate must not be worse than it "
        "on the same eval set (see production_tolerance).",
    )
    production_tolerance: float = Field(
        0.02, ge=0, le=1,
        description="Non-inferiority to production: the lower CI bound of (candidate - production) must be above "
        "minus this.",
    )
    forgetting: bool = Field(
        True, description="Fail when forgetting crosses the thresholds below, or was not measured.")
    max_perplexity_rise: float | None = Field(
        None, gt=0, description="Largest allowed relative rise of general-text perplexity; null: the evaluation's "
        "threshold (0.20).",
    )
    max_qa_drop: float | None = Field(
        None, gt=0, le=1, description="Largest allowed drop of general-QA accuracy (absolute); null: the "
        "evaluation's threshold (0.10).",
    )
    confidence: float = Field(0.95, gt=0.5, lt=1, description="Confidence level of the gate's intervals.")


class DPOConfig(_Strict):
    """Direct preference optimization (``objective: dpo``) on chosen/rejected pairs."""

    beta: float = Field(0.1, gt=0, description="DPO beta: how far the policy may move from the reference (smaller = "
                        "further); rewards are beta x (policy - reference) log-probs.")
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust"] = Field(
        "sigmoid", description="sigmoid (the DPO paper), ipo (squared, per-token averaged log-ratios), hinge (SLiC), "
        "robust (noise-robust with label_smoothing); the same formulas as TRL's DPOTrainer.")
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="Assumed share of flipped labels (sigmoid: conservative DPO; robust: rDPO).")
    reference: Literal["auto", "adapter_disabled", "precomputed"] = Field(
        "auto", description="Reference log-probs. adapter_disabled: the same model with the adapter off, each step "
        "(no second copy); precomputed: once before training, stored in the run directory (full fine-tuning, "
        "init_from). auto: adapter_disabled for a new adapter, else precomputed.")

    @model_validator(mode="after")
    def _smoothing_applies(self):
        if self.label_smoothing and self.loss_type not in ("sigmoid", "robust"):
            raise ValueError(f"label_smoothing: only the sigmoid and robust loss types use it (loss_type is "
                             f"{self.loss_type})")
        return self


class SimPOConfig(_Strict):
    """SimPO (``objective: simpo``): reference-free preference tuning on length-averaged log-probs."""

    beta: float = Field(2.0, gt=0, description="SimPO beta: scale of the length-averaged log-prob rewards "
                        "(the paper uses 2.0-2.5).")
    gamma: float = Field(1.0, ge=0, description="Target reward margin: loss = -log sigmoid(beta x (avg chosen - avg "
                         "rejected) - gamma) (the paper: gamma/beta about 0.5).")


class CPTConfig(_Strict):
    """Continued pre-training (``objective: cpt``) on raw text."""

    block_size: int | None = Field(
        None, ge=8, description="Tokens per training block (documents joined with an end-of-text token, cut into "
        "blocks; nothing truncated away); null: max_length.")


class GRPOConfig(_Strict):
    """Reinforcement fine-tuning against a grader (``objective: grpo``; the service's ``reinforcement`` method):
    sample ``group_size`` completions per prompt from the current policy, grade them, and push up the
    completions that score above their group's mean (group-relative advantages)."""

    grader: str | dict | None = Field(
        None, description="The grader: a path to a JSON file holding OpenAI's grader object (string_check, "
        "text_similarity, python, score_model, multi), or the object itself. Required for objective grpo.")
    group_size: int = Field(4, ge=2, description="Completions sampled per prompt (TRL's num_generations); the "
                            "advantage of each is its reward against its group's.")
    max_completion_tokens: int = Field(64, ge=1, description="Longest sampled completion, in tokens.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the completions.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling: keep the smallest set of tokens whose "
                         "probability reaches top_p.")
    loss_type: Literal["grpo", "dr_grpo", "dapo"] = Field(
        "dapo", description="How token losses are averaged (TRL's formulas): grpo (per completion, then over "
        "completions), dr_grpo (summed, divided by max_completion_tokens x completions), dapo (over all completion "
        "tokens of the step; TRL's default).")
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="Divide advantages by the reward std of the group, of the whole batch, or not at all "
        "(none: Dr. GRPO's recommendation).")
    beta: float = Field(0.0, ge=0, description="Weight of the KL penalty to the reference (the base: the adapter "
                        "disabled); 0 (TRL's default) skips the reference forward.")
    epsilon: float = Field(0.2, gt=0, description="Clipping range of the probability ratio (lower side).")
    epsilon_high: float | None = Field(None, gt=0, description="Upper clipping range (DAPO's clip-higher); null: "
                                       "epsilon.")
    eval_temperature: float = Field(0.0, ge=0, description="Sampling temperature of the validation completions "
                                    "(0: greedy, so validation reward is repeatable).")


class KTOConfig(_Strict):
    """KTO (``objective: kto``): unpaired examples labelled desirable or not, against a reference."""

    beta: float = Field(0.1, gt=0, description="KTO beta: how far the policy may move from the reference.")
    desirable_weight: float = Field(1.0, gt=0, description="Weight of desirable examples' losses (raise it when "
                                    "they are fewer than undesirable ones; TRL's recommendation: keep "
                                    "desirable_weight x desirable / (undesirable_weight x undesirable) in [1, 4/3]).")
    undesirable_weight: float = Field(1.0, gt=0, description="Weight of undesirable examples' losses.")


class ORPOConfig(_Strict):
    """ORPO (``objective: orpo``): reference-free, supervised loss on the chosen reply plus an odds-ratio term."""

    beta: float = Field(0.1, gt=0, description="ORPO lambda: weight of the odds-ratio term against the chosen "
                        "reply's NLL (TRL's beta).")


class ReplayConfig(_Strict):
    """Replay of general instruction data during supervised training, against forgetting (honing.train.replay)."""

    fraction: Annotated[float, Field(ge=0, lt=1)] | Auto = Field(
        "auto",
        description="Share of each step's loss spent on general instructions (0: off). The step minimises "
        "(1 - fraction) x task loss + fraction x replay loss, each a mean over its own trained tokens. "
        "auto: 0.2 for supervised training where the replay answers are the model's own (the embedded default "
        "model with the shipped set, or any model with replay.data), else 0.",
    )
    examples_per_step: int = Field(1, ge=1, description="Replay examples per process per replay step.")
    every: int = Field(
        1, ge=1, description="Replay on every k-th optimizer step only, at k times the weight, so that over k steps "
        "the mix is still (1 - fraction) x task + fraction x replay. The replay example goes through the model "
        "alone and costs a whole forward: ~40% of a step of four ~40-token chats (docs/performance.md).")
    data: str | None = Field(
        None, description="Chat examples to replay (JSONL, ...); null: the general set shipped with Honing.")


class TrainConfig(_Strict):
    """Everything a fine-tuning run needs. ``auto`` values are resolved from the dataset size before
    training starts (see :mod:`honing.train.auto`) and printed."""

    # --- what to train
    model: str = Field("smollm2-135m-instruct", description="Base model: catalog name, local HF directory or .gguf file.")
    data: str = Field(..., description="Training examples (JSONL/CSV/Parquet: chat, prompt/completion, Alpaca, ...).")
    eval_data: str | None = Field(
        None, description="Held-out examples for eval loss; default: a seeded split of `data` (see eval_fraction)."
    )
    data_format: str = Field("auto", description="Format of the data files ('auto' detects it from the content).")
    out: str = Field("runs/latest", description="Run directory: config, metrics, checkpoints and the result.")
    method: Literal["lora", "qlora", "full"] = Field(
        "lora", description="lora: train a PEFT adapter; qlora: the same over a frozen 4-bit NF4 base "
        "(bitsandbytes, double quantization); full: train every weight.")
    objective: Literal["sft", "dpo", "simpo", "cpt", "grpo", "kto", "orpo"] = Field(
        "sft", description="Training objective: sft (supervised, assistant tokens only), dpo (preference pairs "
        "against a reference), simpo (preference pairs, no reference), cpt (continued pre-training on raw text), "
        "grpo (reinforcement against a grader: prompts, sampled completions, rewards), kto (unpaired examples "
        "labelled good or bad), orpo (preference pairs, supervised and odds-ratio loss in one).")
    init_from: str | None = Field(
        None, description="Start from an earlier run directory's result (its adapter, or its full weights): SFT "
        "then DPO, continued pre-training then SFT. run.json records the chain.")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA settings (used when method is lora or qlora).")
    dpo: DPOConfig = Field(default_factory=DPOConfig, description="DPO settings (used when objective is dpo).")
    simpo: SimPOConfig = Field(default_factory=SimPOConfig, description="SimPO settings (used when objective is simpo).")
    cpt: CPTConfig = Field(default_factory=CPTConfig, description="Continued pre-training settings (objective cpt).")
    grpo: GRPOConfig = Field(default_factory=GRPOConfig, description="Reinforcement settings (objective grpo).")
    kto: KTOConfig = Field(default_factory=KTOConfig, description="KTO settings (objective kto).")
    orpo: ORPOConfig = Field(default_factory=ORPOConfig, description="ORPO settings (objective orpo).")

    # --- how long and how hard
    epochs: int | Auto = Field("auto", description="Passes over the training data; auto: from dataset size.")
    batch_size: int | Auto = Field(
        "auto", description="Examples per optimizer step, across all processes and accumulation; auto: from dataset size."
    )
    micro_batch_size: int | Auto = Field(
        "auto",
        description="Examples per forward pass per process; gradient accumulation = "
        "batch_size / (micro_batch_size x processes). auto: min(batch_size per process, 8).",
    )
    learning_rate: float | Auto = Field("auto", description="Peak learning rate; auto: by method and batch size.")
    lr_scheduler: Literal["linear", "cosine", "constant"] = Field("linear", description="Decay after warmup.")
    warmup_ratio: float = Field(0.03, ge=0, le=0.5, description="Fraction of steps spent warming the LR up from 0.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Clip the global gradient norm to this; null: no clipping.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (overrides epochs).")
    max_length: int = Field(1024, ge=8, description="Longest example in tokens; longer ones are truncated (warned).")

    # --- where and how it computes
    device: str = Field(
        "auto", description="cpu, cuda (or cuda:N) or auto: CUDA when this torch sees a GPU, else the CPU. Under "
        "torchrun each process takes cuda:LOCAL_RANK.",
    )
    distributed: Literal["auto", "ddp", "fsdp"] = Field(
        "auto", description="Under torchrun: ddp (a full copy per process, gradients all-reduced) or fsdp "
        "(FSDP2: parameters, gradients and optimizer state sharded across processes, for models that do not fit "
        "one device). auto: ddp.",
    )

    # --- numerics and speed
    dtype: Literal["auto", "bf16", "fp32"] = Field(
        "auto",
        description="Compute dtype. auto: bf16 where this machine runs bf16 matmuls faster than fp32 (measured; "
        "CPUs without bf16 units emulate it dozens of times slower), else fp32. bf16: bf16 base weights with "
        "fp32 LoRA weights (autocast with fp32 master weights for full).",
    )
    threads: Literal["auto"] | int = Field(
        "auto", description="CPU threads for torch (one process on the CPU). auto: torch's default (one per core) "
        "unless 1 thread measures clearly faster right now, as on a machine busy with other work, where one thread "
        "can be many times faster. Recorded in run.json; a resume keeps the recorded count.",
    )
    packing: bool = Field(True, description="Pack several examples into one row (attention kept within each example).")
    activation_checkpointing: Literal["off", "mlp", "layers"] = Field(
        "off",
        description="Trade compute for memory. mlp: the fused LoRA layers recompute the MLP's gate/up in the "
        "backward (about half the activation memory for ~5% more compute); layers: recompute every decoder layer "
        "(a few % of the activation memory for about a third more compute). true = layers, false = off.",
    )
    seed: int = Field(42, description="Seeds data order, the held-out split, adapter init and dropout.")

    # --- validation and overfitting
    eval_fraction: float = Field(
        0.1, ge=0, lt=1, description="Without eval_data: this fraction (at least 1, at most eval_max_examples) is held out."
    )
    eval_max_examples: int = Field(
        200, ge=1, description="At most this many eval examples (a seeded subset of eval_data, or the held-out "
        "split's size) are used for eval loss, which bounds the cost of each eval."
    )
    eval_every: int | Auto = Field("auto", description="Eval loss every N optimizer steps; auto: ~8 times per run.")
    forgetting_budget: float | None = Field(
        None, gt=0,
        description="Stop when the general-text perplexity probe (measured at every eval) rises by more than this "
        "fraction over the base model (0.15 = +15%); the result is the best checkpoint within the budget. "
        "null: measure and report only.",
    )
    replay: ReplayConfig = Field(default_factory=ReplayConfig, description="Replay of general instruction data.")
    early_stopping_patience: int | None = Field(
        3, ge=1, description="Stop after this many evals without a new best eval loss; null: never stop early."
    )

    # --- checkpoints and results
    save_every: int | Auto = Field("auto", description="Checkpoint every N steps; auto: at every eval.")
    keep_checkpoints: int = Field(2, ge=1, description="Keep the last K checkpoints (the best one is always kept too).")
    max_nonfinite_steps: int = Field(
        3, ge=1, description="Stop with an error after this many consecutive steps with a NaN/inf loss or gradient."
    )
    merge: bool = Field(False, description="Also write merged/: the base model with the adapter folded in.")
    tensorboard: bool = Field(True, description="Write TensorBoard event files to <out>/tensorboard.")
    gate: GateConfig = Field(
        default_factory=GateConfig,
        description="Release gate checked by `hone eval --gate` and `hone retrain` (training ignores it).",
    )

    # "before" validators: one clear message instead of pydantic's one-per-union-member.
    @field_validator("activation_checkpointing", mode="before")
    @classmethod
    def _checkpointing_bool(cls, v):
        return {True: "layers", False: "off"}.get(v, v) if isinstance(v, bool) else v

    @field_validator("epochs", "batch_size", "micro_batch_size", "eval_every", "save_every", "threads",
                     mode="before")
    @classmethod
    def _positive_or_auto(cls, v):
        if v == "auto":
            return v
        if isinstance(v, str) and v.strip().isdigit():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError("must be a positive integer or 'auto'")
        return v

    @field_validator("learning_rate", mode="before")
    @classmethod
    def _lr(cls, v):
        if v == "auto":
            return v
        try:
            f = float(v)
        except (TypeError, ValueError):
            f = float("nan")
        if isinstance(v, bool) or not (0 < f < 1):
            raise ValueError("must be a number in (0, 1) or 'auto'")
        return f

    @field_validator("data")
    @classmethod
    def _nonempty(cls, v):
        if not str(v).strip():
            raise ValueError("must name a data file")
        return v

    @model_validator(mode="after")
    def _consistent(self):
        both_set = isinstance(self.batch_size, int) and isinstance(self.micro_batch_size, int)
        if both_set and self.micro_batch_size > self.batch_size:
            raise ValueError(
                f"micro_batch_size: {self.micro_batch_size} cannot exceed batch_size ({self.batch_size})"
            )
        if self.replay.fraction not in ("auto", 0) and self.objective != "sft":
            raise ValueError(f"replay.fraction: replay mixes chat examples into supervised training (objective sft); "
                             f"objective {self.objective} does not take them (set replay.fraction: 0)")
        if self.objective == "grpo" and self.grpo.grader is None:
            raise ValueError("grpo.grader: objective grpo needs a grader (--grader grader.json, or grpo.grader in the "
                             "recipe: OpenAI's grader object)")
        return self

    def resolved_dict(self) -> dict:
        """Plain JSON-able dict of every key (recorded in run.json)."""
        return self.model_dump(mode="json")


# Keys that may differ between a run and its resume (they do not change the numerics).
RESUME_NEUTRAL_KEYS = {"merge", "tensorboard", "device", "gate", "threads"}


def _format_validation_error(err: ValidationError, source: str, schema: type[BaseModel] | None = None) -> str:
    """One line naming every bad key of ``schema`` (default :class:`TrainConfig`; evaluation's ``EvalConfig``
    reports through this too)."""
    schema = schema or TrainConfig
    by_key: dict[str, list[str]] = {}
    for e in err.errors():
        key = _key_of(e["loc"], schema)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
            close = _close_keys(key, schema)
            if close:
                msg += f" (did you mean {close}?)"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif "input" in e and e["loc"]:
            msg += f" (got {e['input']!r})"
        by_key.setdefault(key, []).append(msg)
    # One entry per key (a union field fails once per member); cross-key checks name their keys themselves.
    parts = [f"{key}: {' or '.join(msgs)}" if key else "; ".join(msgs) for key, msgs in by_key.items()]
    return f"invalid configuration ({source}): " + "; ".join(parts)


def _key_of(loc: tuple, schema: type[BaseModel] | None = None) -> str:
    """The configuration key of an error location: pydantic appends union members (``int``,
    ``literal['auto']``) and list indices to the path; keep only the schema's own field names (and an
    unknown key itself)."""
    model: type[BaseModel] | None = schema or TrainConfig
    parts = []
    for item in loc:
        if model is None or not isinstance(item, str):
            break
        parts.append(item)
        if item not in model.model_fields:
            break  # an unknown key
        ann = model.model_fields[item].annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return ".".join(parts)


def _all_keys(model: type[BaseModel] = TrainConfig, prefix: str = "") -> list[str]:
    keys = []
    for name, f in model.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += _all_keys(ann, prefix + name + ".")
        else:
            keys.append(prefix + name)
    return keys


def _close_keys(key: str, schema: type[BaseModel] | None = None) -> str:
    import difflib

    matches = difflib.get_close_matches(key, _all_keys(schema or TrainConfig), n=1, cutoff=0.6)
    return matches[0] if matches else ""


def parse_override(item: str) -> tuple[str, Any]:
    """``"lora.r=8"`` -> (``"lora.r"``, 8). The value is parsed as YAML, so 8, 1e-4, true, null and
    [q_proj, v_proj] get their natural types; anything else stays a string."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def _set_dotted(d: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    cur = d
    for p in parts[:-1]:
        nxt = cur.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {key}: '{p}' is not a section")
        cur = nxt
    cur[parts[-1]] = value


def load_recipe(path: str | os.PathLike) -> dict:
    """Read a YAML recipe into a dict. Relative data/eval_data/out/model paths stay relative to the
    working directory (the recipe is run from the project root, like a Makefile)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"recipe not found: {p}")
    try:
        loaded = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{p}{where}: not valid YAML ({getattr(e, 'problem', e)})") from e
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{p}: a recipe must be a mapping of keys to values, got {type(loaded).__name__}")
    return loaded


def apply_overrides(raw: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """``raw`` with ``--set key=value`` items applied (values parsed as YAML, as on the command line)."""
    for item in overrides:
        _set_dotted(raw, *parse_override(item))
    return raw


def save_recipe(config: TrainConfig, path: str | os.PathLike) -> Path:
    """Write ``config`` (every key, resolved) as a YAML recipe that :func:`load_recipe` reads back to the same
    values and types: strings that YAML would read as something else ("null", "on", "1e3") are quoted by
    the dumper. Atomic: a reader sees the whole file or none."""
    from honing.fileio import write_text_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, yaml.safe_dump(config.resolved_dict(), sort_keys=False, allow_unicode=True))
    return path


def build_config(
    recipe: str | os.PathLike | None = None,
    overrides: list[str] | None = None,
    values: dict | None = None,
) -> TrainConfig:
    """Recipe (YAML) <- ``values`` (e.g. CLI flags, dotted keys) <- ``--set`` overrides, then validate."""
    raw: dict = load_recipe(recipe) if recipe else {}
    source = str(recipe) if recipe else "command line"
    for key, value in (values or {}).items():
        if value is not None:
            _set_dotted(raw, key, value)
    for item in overrides or []:
        _set_dotted(raw, *parse_override(item))
    return validate_config(raw, source)


def validate_config(raw: dict, source: str = "configuration") -> TrainConfig:
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, source)) from None


def describe_fields(model: type[BaseModel] = TrainConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, description) for every key, nested ones dotted: the schema's documentation."""
    rows = []
    for name, f in model.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows += describe_fields(ann, prefix + name + ".")
            continue
        if f.is_required():
            default = "(required)"
        else:
            d = f.get_default(call_default_factory=True)
            default = "null" if d is None else str(d).lower() if isinstance(d, bool) else str(d)
        rows.append((prefix + (f.alias or name), default, f.description or ""))  # the key users write
    return rows
