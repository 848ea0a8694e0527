"""The training loop: one recipe for every objective, read top to bottom.

    train():
      _setup            runtime (device, dtype, processes) -> run dir -> model (+ LoRA) -> data rendered by
                        the objective -> hyperparameters -> optimizer/scheduler -> [resume] -> objective setup
      _evaluate_base    eval metrics of the untouched model (step 0)
      for each optimizer step:
        _optimizer_step micro-batches -> objective loss sums / the step's normalizer -> backward -> clip -> step
        _after_step     eval / best / early stop -> metrics + events -> checkpoint -> pause
      _finish           best checkpoint -> final/ (+ merged/) -> loss curve, summary, run.json

The loss of a step is the sum over every normalizer unit of the step (trained tokens for SFT, pairs for
preference tuning; all micro-batches, all processes) divided by the number of those units, so batch 4 x
accumulation 1, batch 1 x accumulation 4 and 2 processes x batch 2 all compute the same gradient.

The step's loss and statistics stay on the device while its micro-batches run and are read once per
optimizer step (no host synchronisation per micro-batch).
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from honing.config import RESUME_NEUTRAL_KEYS, TrainConfig
from honing.errors import ConfigError
from honing.fileio import write_json_atomic
from honing.rundir import CHECKPOINTS, FINAL, PAUSE_FILE, RUN_RECORD, RunDir, sole_writer
from honing.train.auto import Hyperparameters, resolve_hyperparameters
from honing.train.batching import micro_batches, step_indices
from honing.train.checkpoint import (
    complete_checkpoints,
    load_checkpoint,
    load_trainable,
    prune_checkpoints,
    remove_partial_checkpoints,
    save_checkpoint,
)
from honing.train.dataset import file_sha256, held_out_split
from honing.train.errors import TrainingError
from honing.train.objectives import Objective, SetupContext
from honing.train.registry import build_objective
from honing.train.reporting import (
    EventLog,
    MetricsLog,
    Progress,
    StartupClock,
    overfitting_warning,
    plot_loss_curve,
    write_summary,
)
from honing.train.runtime import Runtime, create_runtime, seed_everything
from honing.train.sharding import full_state_dict, gradient_sync, is_fsdp, strategy_for, wrap_model

# PAUSE_FILE (honing.rundir): a file the service's worker (or a user) creates in the run directory to pause
# a run; the loop saves a checkpoint after the current step and exits with status "paused"; `--resume`
# continues bitwise.


@dataclass
class RunResult:
    """What a finished run hands back (the run directory has everything else)."""

    run_dir: Path
    status: str  # "completed" | "early_stopped" | "paused"
    final_dir: Path
    best_step: int | None
    best_eval_loss: float | None
    steps: int  # optimizer steps done
    train_losses: list[float] = field(default_factory=list)  # one per step (NaN for skipped steps)
    eval_losses: list[tuple[int, float]] = field(default_factory=list)  # (step, loss); step 0 = base model
    tokens_per_s: float = 0.0  # trained (loss-bearing) tokens per second of training
    input_tokens_per_s: float = 0.0  # all example tokens (prompt + answer, no padding) per second
    peak_memory_mb: float = 0.0  # CUDA allocator peak on a GPU, RSS high-water mark on CPU
    merged_dir: Path | None = None
    hyperparameters: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


@dataclass
class TrainerState:
    """Everything about progress that a checkpoint must carry for a bitwise resume."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    best_step: int | None = None
    best_eval_loss: float | None = None
    evals_since_best: int = 0
    nonfinite_consecutive: int = 0
    nonfinite_total: int = 0
    trained_tokens: int = 0  # loss-bearing tokens so far (both replies' completion tokens for a pair)
    input_tokens: int = 0  # all tokens through the model so far
    train_seconds: float = 0.0
    probe_base_ppl: float | None = None  # the forgetting probe's perplexity before training

    @classmethod
    def from_dict(cls, d: dict) -> TrainerState:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class Run:
    """One training run in progress: what ``_setup`` built and the parts of the loop share."""

    config: TrainConfig
    runtime: Runtime
    run_dir: Path
    say: Callable[..., None]
    events: EventLog
    model: object  # what the forward runs through (DDP/FSDP-wrapped when distributed)
    core: object  # the unwrapped model: saved, evaluated, merged
    tokenizer: object
    objective: Objective
    train_set: object
    eval_set: object | None
    hp: Hyperparameters
    optimizer: object
    scheduler: object
    params: list
    pad_id: int
    state: TrainerState
    metrics: MetricsLog | None
    bar: Progress
    info: dict  # the run record (run.json)
    warnings: list[str]
    started: float
    status: str = "running"
    probe: object | None = None  # honing.evaluate.forgetting.TextProbe, run at every eval
    replay: object | None = None  # honing.train.replay.ReplaySet, mixed into every step
    base_eval_after_first_step: bool = False  # see _base_eval_can_wait


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> RunResult:
    """Fine-tune ``config.model`` on ``config.data`` into the run directory ``config.out``.

    ``resume``: continue from the newest complete checkpoint in ``config.out`` (bitwise identical to an
    uninterrupted run on CPU). ``progress``: show a progress bar. ``log``: where messages go (rank 0
    only; default print). Works alone or under ``torchrun`` (one process per rank).
    """
    startup = _startup_clock()
    with sole_writer(config.out):  # one training process per run directory at a time
        run = _setup(config, resume=resume, progress=progress, log=log, startup=startup)
        try:
            if not run.base_eval_after_first_step:
                _evaluate_base(run)
                startup.lap("eval before training")
            run.model.train()
            while run.status == "running" and run.state.step < run.hp.total_steps:
                row = _optimizer_step(run)
                if startup.total is None:
                    startup.first_step_done()
                    run.info["startup"] = startup.record()
                    run.say(startup.sentence())
                if run.base_eval_after_first_step and run.state.step == 1:
                    _evaluate_base(run)  # the base's metrics, logged as step 0 before step 1's row
                _after_step(run, row)
        except BaseException as e:
            _fail(run, e)
            raise
        return _finish(run)


# ----------------------------------------------------------------------------------------------- setup
def _startup_clock() -> StartupClock:
    from honing.startup import take_command_start

    origin = take_command_start()
    clock = StartupClock(origin, "the process's start") if origin else StartupClock(time.time(), "the train() call")
    clock.lap("interpreter, imports, configuration")
    return clock


def _setup(config: TrainConfig, *, resume: bool, progress: bool, log, startup: StartupClock | None = None) -> Run:
    from honing.train.chain import load_starting_model

    startup = startup or _startup_clock()
    runtime = create_runtime(config)
    dist = runtime.dist
    started = time.time()
    run_dir, ckpt = _prepare_run_dir(config, resume, dist)
    events = EventLog(run_dir, enabled=dist.is_main)
    say = _sayer(log or print, events, dist.is_main)
    if resume and ckpt is None:
        say(f"--resume: no complete checkpoint in {run_dir}; starting from the beginning")
    (run_dir / PAUSE_FILE).unlink(missing_ok=True)  # a resume continues a paused run

    # Seed before anything random is created (LoRA init, dropout) so runs are reproducible.
    seed_everything(config.seed)
    say(runtime.describe() + (" (dtype auto: measured on this machine)" if config.dtype == "auto" else ""))
    # A resumed run keeps its thread count (it can change float summation order, and resume is bitwise).
    threads_line = runtime.choose_threads(config.threads, RunDir(run_dir).record().get("threads") if ckpt else None)
    if threads_line:
        say(threads_line)
    startup.lap("device, dtype and threads")
    # The base (4-bit for qlora), or an earlier run's result with init_from.
    model, tokenizer, resolved, start = load_starting_model(config, runtime, say)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    startup.lap("model and tokenizer")

    objective = build_objective(config)
    train_set, eval_set = _load_datasets(config, objective, tokenizer, say)
    startup.lap("data")
    warnings = list(train_set.warnings) + (list(eval_set.warnings) if eval_set else [])
    for w in warnings:
        say(f"warning: {w}", level="warning")
    mean_tokens = sum(objective.tokens(item) for item in train_set.items) / max(1, len(train_set))
    from honing.evaluate.forgetting import PROBE_TOKENS
    from honing.train.auto import measure_cpu_token_budget

    # What one eval reads (eval set + forgetting probe): auto keeps the eval cadence's cost bounded.
    eval_tokens = sum(objective.tokens(it) for it in eval_set.items) + PROBE_TOKENS if eval_set else None
    # A resumed run keeps the micro-batch it was measured with (the loss sums, hence the bits, depend on it).
    recorded = RunDir(run_dir).record().get("hyperparameters") if ckpt is not None else None
    # The token-budget probe's result is kept per machine for these weights (honing.machine).
    model_key = {"base": resolved.identity(), "method": config.method, "init_from": (start.record or {}).get("run")}
    hp = resolve_hyperparameters(config, len(train_set), dist.world_size, mean_tokens, on_gpu=runtime.is_cuda,
                                 measure_budget=lambda: measure_cpu_token_budget(model, mean_tokens, model_key),
                                 eval_tokens=eval_tokens, recorded=recorded)
    trained = train_set.source.get("trained_tokens")
    say(f"training {len(train_set)} examples "
        + (f"({trained} trained tokens)" if trained is not None else "(completions sampled during training)") + ", "
        f"eval {len(eval_set) if eval_set else 0}; {hp.describe()}")
    for line in hp.explain():
        say(line)
    startup.lap("hyperparameters")

    core = _prepare_trainable(model, config, say, start)
    say(_compute_paths(core, config))
    n_trainable = sum(p.numel() for p in core.parameters() if p.requires_grad)
    n_total = sum(p.numel() for p in core.parameters())
    say(f"trainable parameters: {n_trainable:,} of {n_total:,} ({100 * n_trainable / n_total:.2f}%)")
    strategy = strategy_for(config, runtime)
    # Wrap before building the optimizer: FSDP2 replaces the parameters with sharded ones.
    wrapped = wrap_model(core, runtime, strategy)
    if strategy != "none":
        say(f"distributed: {strategy} over {dist.world_size} processes ({dist.backend})")
    params = [p for p in core.parameters() if p.requires_grad]
    optimizer, scheduler = _optimizer_and_schedule(config, hp, params)

    state = TrainerState()
    if ckpt is not None:
        state = TrainerState.from_dict(load_checkpoint(ckpt, core, optimizer, scheduler, dist.rank))
        say(f"resuming from {ckpt} (step {state.step} of {hp.total_steps})")
    objective.setup(SetupContext(model=core, tokenizer=tokenizer, run_dir=run_dir, train_set=train_set, eval_set=eval_set,
                                 runtime=runtime, config=config, resumed=ckpt is not None, log=say))
    from honing.evaluate.forgetting import TextProbe
    from honing.train.replay import build_replay

    replay, replay_line = build_replay(config, objective, tokenizer)
    if replay_line:
        say(replay_line)
    probe = TextProbe(tokenizer) if eval_set is not None else None

    info = {
        "base_model": resolved.identity(), "method": config.method, "objective": config.objective,
        "config": config.resolved_dict(), "dtype": runtime.dtype_name, "device": str(runtime.device),
        "hyperparameters": hp.as_dict(), "versions": library_versions(),
        "dataset": {"train": train_set.source, "eval": eval_set.source if eval_set else None},
        "world_size": dist.world_size, "threads": runtime.threads, "status": "running", "best": None, "started": started,
        "init_from": start.record,
    }
    if dist.is_main:
        write_json_atomic(run_dir / RUN_RECORD, info)
    metrics = MetricsLog(run_dir, config.tensorboard, resume_step=state.step) if dist.is_main else None
    bar = Progress(hp.total_steps, state.step, progress and dist.is_main, label=objective.progress_label)
    startup.lap("adapter, optimizer, objective")
    return Run(config=config, runtime=runtime, run_dir=run_dir, say=say, events=events, model=wrapped, core=core,
               tokenizer=tokenizer, objective=objective, train_set=train_set, eval_set=eval_set, hp=hp,
               optimizer=optimizer, scheduler=scheduler, params=params, pad_id=pad_id, state=state,
               metrics=metrics, bar=bar, info=info, warnings=warnings, started=started, probe=probe, replay=replay,
               base_eval_after_first_step=_base_eval_can_wait(config, start, objective, state, dist))


def _base_eval_can_wait(config: TrainConfig, start, objective: Objective, state: TrainerState, dist) -> bool:
    """True when the eval before training can run after the first optimizer step, with the adapter disabled,
    so that the first step is not behind it (it was a fifth of ``hone train``'s time to first step on the
    embedded model). Only where the adapter disabled is exactly the starting model: a new LoRA adapter
    (not init_from's, not QLoRA, whose 4-bit layers must not see an eval before training's first backward),
    one process, and an objective whose eval is its loss and uses no adapter switching of its own (SFT, CPT:
    preference objectives disable the adapter for their reference). Its metrics are logged as step 0 before
    step 1's row, so metrics.jsonl, events and the progress line keep their order; the eval reads no random
    numbers, so a resumed run stays bitwise equal."""
    return (state.step == 0 and config.method == "lora" and start.adapter_dir is None and not dist.enabled
            and config.objective in ("sft", "cpt") and type(objective).evaluate is Objective.evaluate)


def _sayer(log, events: EventLog, is_main: bool):
    """Messages go to the user (``log``) and to events.jsonl; other processes stay silent."""
    if not is_main:
        return lambda _msg, level="info": None

    def say(msg: str, level: str = "info") -> None:
        log(msg)
        events.message(msg, level=level)

    return say


def _prepare_run_dir(config: TrainConfig, resume: bool, dist) -> tuple[Path, Path | None]:
    """(run dir, checkpoint to resume from or None). Refuses to overwrite a run unless resuming."""
    run_dir = Path(config.out)
    ckpt = None
    if resume and RunDir.is_run(run_dir):
        previous = RunDir(run_dir).record()
        before = {k: v for k, v in previous.get("config", {}).items() if k not in RESUME_NEUTRAL_KEYS}
        now = {k: v for k, v in config.resolved_dict().items() if k not in RESUME_NEUTRAL_KEYS}
        changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
        if changed:
            raise ConfigError(
                f"resume: the configuration differs from the run in {run_dir} in: {', '.join(changed)} "
                "(a resumed run must train with the same settings)"
            )
        dist.barrier()  # every rank must list checkpoints before rank 0 cleans partial ones
        if dist.is_main:
            remove_partial_checkpoints(run_dir)
        dist.barrier()
        found = complete_checkpoints(run_dir)
        ckpt = found[-1] if found else None
    elif RunDir.is_run(run_dir):
        raise ConfigError(f"out: {run_dir} already holds a run; resume it (hone train --resume), or choose another out directory")
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    return run_dir, ckpt


def _load_datasets(config: TrainConfig, objective: Objective, tokenizer, say):
    """(train set, eval set or None), rendered by the objective. Without eval_data a seeded share of the
    training examples is held out; a large eval file is cut to a seeded subset (eval cost stays bounded)."""
    train_examples = objective.read_examples(config.data, config.data_format)
    train_sha = file_sha256(config.data)
    if config.eval_data:
        eval_examples = objective.read_examples(config.eval_data, config.data_format)
        eval_path, eval_sha, split = config.eval_data, file_sha256(config.eval_data), None
        if len(eval_examples) > config.eval_max_examples:
            _, keep = held_out_split(len(eval_examples), 1.0, config.eval_max_examples, config.seed)
            split = {"subset_of": config.eval_data, "examples": len(eval_examples), "seed": config.seed}
            eval_examples = [eval_examples[i] for i in keep]
            say(f"eval loss on a seeded subset of {len(eval_examples)} of the {split['examples']} eval examples "
                "(eval_max_examples)")
    else:
        tr_idx, ev_idx = held_out_split(len(train_examples), config.eval_fraction, config.eval_max_examples,
                                        config.seed)
        eval_examples = [train_examples[i] for i in ev_idx]
        train_examples = [train_examples[i] for i in tr_idx]
        eval_path, eval_sha = config.data, train_sha
        split = {"held_out_of": config.data, "fraction": config.eval_fraction, "seed": config.seed,
                 "lines": [getattr(e, "line", None) for e in eval_examples]}
        if eval_examples:
            say(f"no eval_data: holding out {len(eval_examples)} of {len(tr_idx) + len(ev_idx)} examples "
                f"(seed {config.seed}) for eval loss")
    train_set = objective.render_set(tokenizer, train_examples, config.data, train_sha)
    eval_set = None
    if eval_examples:
        eval_set = objective.render_set(tokenizer, eval_examples, eval_path, eval_sha)
        if split:
            eval_set.source["split"] = split
    return train_set, eval_set


def _prepare_trainable(model, config: TrainConfig, say, start=None):
    """Attach LoRA (or continue init_from's adapter; fused layers where eligible) or unfreeze everything;
    activation checkpointing."""
    if config.method in ("lora", "qlora"):
        from honing.train.chain import load_trainable_adapter

        model = (load_trainable_adapter(model, start, config) if start else None) or _attach_lora(model, config)
        say(_enable_fused_lora(model, config, recompute_mlp=config.activation_checkpointing == "mlp"))
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    model.config.use_cache = False
    if config.activation_checkpointing == "mlp" and config.method == "full":
        say("activation_checkpointing: mlp applies to the fused LoRA layers only; full fine-tuning runs without it")
    if config.activation_checkpointing == "layers":
        # Non-reentrant: works with frozen inputs (no enable_input_require_grads) and with the fused layers.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        say("activation checkpointing: layers (each decoder layer recomputed in the backward)")
    return model


def _compute_paths(core, config: TrainConfig) -> str:
    """One line naming the attention and loss paths this run takes (nothing falls back silently)."""
    from honing.train.losses import _plain_head, _unwrap

    inner = _unwrap(core)
    attn = getattr(inner.config, "_attn_implementation", None) or "default"
    rows = ("packed rows, attention kept inside each example by position ids" if config.packing
            else "padded rows with an attention mask")
    if not _plain_head(inner):
        loss = "the model's own logits (its output head is not a plain Linear)"
    elif config.objective in ("dpo", "simpo", "orpo"):
        loss = ("reply log-probabilities through the output head in chunks of trained positions, each pair's prompt "
                "once with a mask keeping each reply off the other (honing.train.preference)")
    elif config.objective == "kto":
        loss = "reply log-probabilities through the output head in chunks of trained positions (honing.train.preference)"
    elif config.objective == "grpo":
        loss = ("completions sampled with the KV cache, each prompt computed once for its group (honing.train.sampler); "
                "per-token log-probabilities through the output head in chunks (honing.train.grpo)")
    else:
        loss = "chunked linear cross-entropy over trained positions (honing.train.losses)"
    return f"attention: {attn}, {rows}; loss: {loss}"


FUSED_ADAMW = True  # the lever (benchmarks/profile_step.py --undo fused-adamw)


def _optimizer_and_schedule(config: TrainConfig, hp: Hyperparameters, params: list):
    import torch
    from transformers import get_scheduler

    # torch's fused AdamW: one kernel over all parameters instead of ~10 per tensor (LoRA r 16 on SmolLM2:
    # 420 tensors, 38 -> 7 CPU ms per step on a 2-core EPYC, ~5% of a batch-1 step). Sharded (DTensor)
    # parameters keep the default implementation.
    fused = FUSED_ADAMW and all(type(p.data) is torch.Tensor for p in params)
    optimizer = torch.optim.AdamW(params, lr=hp.learning_rate, weight_decay=config.weight_decay,
                                  fused=fused or None)
    scheduler = get_scheduler(
        config.lr_scheduler, optimizer, num_warmup_steps=int(config.warmup_ratio * hp.total_steps),
        num_training_steps=hp.total_steps,
    )
    return optimizer, scheduler


# ----------------------------------------------------------------------------------------------- steps
def _evaluate_base(run: Run) -> None:
    """Eval metrics of the model before any update (step 0 of the curves): before the first step, or just
    after it with the adapter disabled (``_base_eval_can_wait``)."""
    if run.eval_set is None:
        return
    if not run.base_eval_after_first_step:
        if run.state.step != 0:
            return
        metrics = _evaluate(run)
    else:
        with run.core.disable_adapter():  # the model as it was before step 1: the base
            metrics = _evaluate(run)
    if run.metrics is not None:
        run.metrics.log({"step": 0, "epoch": 0, **metrics})
        run.events.metrics({"step": 0, **metrics}, run.hp.total_steps)
    run.bar.update(0, eval_loss=metrics.get(run.objective.eval_metric))
    name, value = run.objective.eval_metric, metrics.get(run.objective.eval_metric)
    shown = f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else str(value)
    run.say(f"{name.replace('_', ' ')} before training: {shown}")


def _evaluate(run: Run) -> dict:
    """The objective's loss and statistics over the eval set, as ``eval_*`` metrics; each process takes
    every world_size-th example."""
    import torch

    dist, objective, items = run.runtime.dist, run.objective, run.eval_set.items
    own = objective.evaluate(items)
    if own is not None:
        return {**own, **_forgetting_probe(run)}
    run.core.eval()
    mine = list(range(dist.rank, len(items), dist.world_size))
    chunk = max(1, run.hp.micro_batch_size)
    # Sharded (FSDP) forwards are collectives: every process runs the same number, the short ones on a
    # stand-in batch whose result is dropped.
    per_rank = -(-len(items) // dist.world_size) if is_fsdp(run.core) else len(mine)
    loss_sum, norm, stats = 0.0, 0, {}
    with torch.no_grad(), run.runtime.autocast():
        for i in range(0, per_rank, chunk):
            part = [items[j] for j in mine[i : i + chunk]]
            out = objective.loss(run.core, run.runtime.to_device(objective.collate(part or [items[0]], run.pad_id)))
            if not part:
                continue
            loss_sum = loss_sum + out.loss_sum.detach()
            norm += sum(objective.normalizer(it) for it in part)
            for k, v in out.stats.items():
                stats[k] = stats.get(k, 0.0) + v
    keys = sorted(stats)
    totals = dist.all_reduce_sum([loss_sum, norm, *[stats[k] for k in keys]])
    probe = _forgetting_probe(run)
    run.core.train()
    loss_total, norm_total = totals[0], totals[1]
    out = {"eval_loss": loss_total / norm_total if norm_total else None}
    out.update({f"eval_{k}": v / norm_total for k, v in zip(keys, totals[2:]) if norm_total})
    return {**out, **probe}


def _forgetting_probe(run: Run) -> dict:
    """General-text perplexity on the probe's fixed slice, and its ratio to the value before training (the
    first probe of a run; carried in the checkpoint so a resumed run keeps the same reference)."""
    if run.probe is None:
        return {}
    if run.state.probe_base_ppl is None and run.base_eval_after_first_step:
        ppl = _base_probe_perplexity(run)
    else:
        ppl = run.probe.perplexity(run.core)
    if run.state.probe_base_ppl is None:
        run.state.probe_base_ppl = ppl
    return {"forgetting_ppl": round(ppl, 4), "forgetting_ppl_ratio": round(ppl / run.state.probe_base_ppl, 4)}


def _base_probe_perplexity(run: Run) -> float:
    """The base model's probe perplexity (adapter disabled, see ``_base_eval_can_wait``), measured once per
    machine (honing.machine, whose file is per CPU and torch version): it depends only on the base's weights,
    the dtype, the thread count, the libraries and the probe's text, not on the run, and it was half of the
    eval before training (the 512-token forward). Only for weights known by their hash (a model Honing
    converted from a GGUF): a directory's weights may change under the same path."""
    import hashlib

    from honing import machine

    base = run.info["base_model"]
    measure = lambda: run.probe.perplexity(run.core)
    if not base.get("source_sha256"):
        return measure()
    key = {"model": base, "dtype": run.runtime.dtype_name, "threads": run.runtime.threads,
           "device": str(run.runtime.device), "versions": run.info["versions"],
           "probe": hashlib.sha256(repr(run.probe.windows).encode()).hexdigest()[:16]}
    ppl, _cached = machine.measured_once("base_probe_perplexity", key, measure)
    return float(ppl)


def _optimizer_step(run: Run) -> dict:
    """One optimizer step: its micro-batches forward and backward, then clip and update. Returns the
    step's metrics row."""
    import torch

    cfg, hp, dist, objective, items = run.config, run.hp, run.runtime.dist, run.objective, run.train_set.items
    step = run.state.step
    t0 = time.perf_counter()
    epoch, indices = step_indices(len(items), hp.batch_size, cfg.seed, step)
    mine = micro_batches(indices, hp.grad_accumulation, hp.micro_batch_size, dist.rank, dist.world_size)
    # An objective that makes its training data on the fly (GRPO samples and grades) does it here, before
    # anything is counted.
    batches, filler, step_stats = _prepare_step(run, step, [[items[i] for i in mb] for mb in mine])
    local_norm = sum(objective.normalizer(it) for b in batches for it in b)
    local_tokens = sum(objective.tokens(it) for b in batches for it in b)
    local_trained = sum(objective.trained_tokens(it) for b in batches for it in b)
    replay = run.replay.for_step(step, dist.rank, dist.world_size) if run.replay is not None else []
    local_replay_norm = sum(objective.normalizer(it) for it in replay)
    local_tokens += sum(objective.tokens(it) for it in replay)
    global_norm, global_tokens, global_trained, replay_norm = dist.all_reduce_sum(
        [local_norm, local_tokens, local_trained, local_replay_norm])
    # DDP averages gradients over processes; scaling by world_size turns that into a sum, so the
    # gradient is (sum over all normalizer units) / global_norm. With replay, the task's share of the loss
    # is 1 - fraction and the replay items carry the rest (replay.every = k: the task keeps 1 - fraction on
    # every step, the replay steps carry k x fraction): as extra rows of a task micro-batch's forward, each
    # row set weighted apart, or in a forward of their own before the task's (never the syncing one).
    task_share = run.replay.task_share if run.replay is not None else 1.0
    scale = task_share * dist.world_size / max(global_norm, 1)
    loss_total = torch.zeros((), dtype=torch.float64, device=run.runtime.device)
    stats: dict = {}
    fold_into = _replay_fold_target(run, batches, replay)
    replay_loss = _replay_backward(run, replay, replay_norm) if replay and fold_into is None else None
    for j, mb in enumerate(batches):
        if not mb and not dist.enabled:
            continue
        # An empty shard (epoch end) still joins the gradient all-reduce, with zero weight.
        batch_items = mb or [filler]
        weight = scale if mb else 0.0
        sync = (j == len(mine) - 1) or not dist.enabled
        with gradient_sync(run.model, sync):
            with run.runtime.autocast():
                batch = (objective.collate_with_replay(batch_items, replay, run.pad_id) if j == fold_into
                         else objective.collate(batch_items, run.pad_id))
                out = objective.loss(run.model, run.runtime.to_device(batch))
            loss = out.loss_sum * weight
            if j == fold_into:  # the replay rows at the weight _replay_backward gives them
                loss = loss + out.replay_sum * _replay_weight(run, replay_norm)
            loss.backward()
        if j == fold_into:
            replay_loss = _replay_loss(run, out.replay_sum, replay_norm)
        keep = 1.0 if mb else 0.0
        loss_total = loss_total + out.loss_sum.detach() * keep
        for k, v in out.stats.items():
            stats[k] = stats.get(k, 0.0) + v * keep
    keys = sorted(stats)
    # The one host read of the step: loss and statistics summed over micro-batches and processes.
    totals = dist.all_reduce_sum([loss_total, *[stats[k] for k in keys]])
    train_loss = totals[0] / max(global_norm, 1)  # the task's loss alone (replay is logged apart)
    grad_norm = _clip_and_update(run, train_loss)
    lr = run.scheduler.get_last_lr()[0]
    run.scheduler.step()
    run.runtime.after_step()

    s = run.state
    s.step, s.epoch, s.step_in_epoch = step + 1, epoch, step % hp.steps_per_epoch + 1
    s.trained_tokens += int(global_trained)
    s.input_tokens += int(global_tokens)
    dt = time.perf_counter() - t0
    s.train_seconds += dt
    row = {"step": s.step, "epoch": round(epoch + s.step_in_epoch / hp.steps_per_epoch, 4),
           "train_loss": train_loss if math.isfinite(train_loss) else None, "lr": lr,
           "grad_norm": grad_norm if math.isfinite(grad_norm) else None,
           "tokens_per_s": round(global_trained / dt, 1) if dt > 0 else None,
           "input_tokens_per_s": round(global_tokens / dt, 1) if dt > 0 else None,
           "examples_per_s": round(len(indices) / dt, 2) if dt > 0 else None,
           "trained_tokens": s.trained_tokens, "step_seconds": round(dt, 4)}
    row.update({f"train_{k}": v / max(global_norm, 1) for k, v in zip(keys, totals[1:])})
    row.update(_step_statistics(dist, step_stats))
    if replay_loss is not None:
        row["replay_loss"] = replay_loss
    # The data file lines of this step's examples: the data order, auditable after a resume.
    row["lines"] = [run.train_set.lines[i] for i in indices]
    return row


def _prepare_step(run: Run, step: int, raw: list[list]) -> tuple[list[list], object, dict]:
    """(micro-batches as the objective prepared them, a stand-in item for an empty shard's zero-weight
    forward, the step's statistics). ``prepare_step`` runs exactly once per process per step (an objective
    may all-reduce inside it): when this process has an empty shard (an epoch's end under torchrun), the
    stand-in is prepared in the same call, as one more micro-batch (it may join that step's statistics)."""
    objective, items = run.objective, run.train_set.items
    needs_filler = run.runtime.dist.enabled and any(not b for b in raw)
    if not needs_filler:
        batches, stats = objective.prepare_step(step, raw)
        return batches, None, stats
    if type(objective).prepare_step is Objective.prepare_step:  # items are trained as they are
        batches, stats = objective.prepare_step(step, raw)
        return batches, next((b[0] for b in batches if b), items[0]), stats
    batches, stats = objective.prepare_step(step, raw + [[items[0]]])
    return batches[:-1], batches[-1][0], stats


def _step_statistics(dist, sums: dict) -> dict:
    """``train_<name>``: an objective's step statistics ({name: (sum, count)}) over every process."""
    keys = sorted(sums)
    if not keys:
        return {}
    totals = dist.all_reduce_sum([x for k in keys for x in sums[k]])
    return {f"train_{k}": round(totals[2 * i] / totals[2 * i + 1], 4) if totals[2 * i + 1] else None
            for i, k in enumerate(keys)}


# Replay items share a task micro-batch's forward where that is valid (``_replay_fold_target``); False: always
# a forward of their own (benchmarks/profile_step.py --undo replay-fold measures the difference).
FOLD_REPLAY = True


def _replay_fold_target(run: Run, batches: list[list], replay: list) -> int | None:
    """The micro-batch whose forward also carries this step's replay items (as extra rows, or the packed
    row's tail), or None: they run in a forward of their own (``_replay_backward``), which pays a whole
    forward's fixed cost (per-op work over every layer): folding takes back ~1/7 of a short-example step on
    CPU (docs/performance.md, "Second round").

    Not folded: an objective whose loss does not split by rows (``Objective.folds_replay``); torchrun (the
    replay's gradient timing against the gradient sync and FSDP's collective forwards are verified for the
    separate forward only); and a padded joint forward whose added padding (a long replay row padding every
    task row, or short replay rows padded to long task rows) exceeds the replay's own tokens. Measured: the
    demo's padded steps (8 x ~89 tokens, one 38-107-token replay row; 159 of its 184 steps fold under this
    rule) x1.07 CPU s; a packed row adds no padding (the short case: x1.14-1.16). Padding four 40-token rows
    to one 90-token replay row (450 tokens for 250) is not measured and not done."""
    if not (FOLD_REPLAY and replay and run.objective.folds_replay) or run.runtime.dist.enabled:
        return None
    replay_tokens = _forward_tokens(run, replay)
    for j, mb in enumerate(batches):
        if not mb:
            continue
        padding_added = _forward_tokens(run, mb + replay) - _forward_tokens(run, mb) - replay_tokens
        if padding_added <= replay_tokens:
            return j
    return None


def _forward_tokens(run: Run, items: list) -> int:
    """Tokens one forward of ``items`` computes: their sum in a packed row, rows x the longest when padded."""
    objective = run.objective
    lengths = [objective.tokens(it) for it in items]
    packed = run.config.packing and objective.packing_supported
    return sum(lengths) if packed else len(lengths) * max(lengths, default=0)


def _replay_weight(run: Run, replay_norm: float) -> float:
    """The replay loss sum's weight: ``replay_weight`` of the step's loss as a mean over the replay's trained
    tokens of all processes (x world_size: DDP averages gradients)."""
    return run.replay.replay_weight * run.runtime.dist.world_size / max(replay_norm, 1)


def _replay_loss(run: Run, replay_sum, replay_norm: float) -> float:
    """The logged replay loss: the mean over the replay's trained tokens of all processes."""
    (total,) = run.runtime.dist.all_reduce_sum([replay_sum.detach()])
    return float(total) / max(replay_norm, 1)


def _replay_backward(run: Run, replay: list, replay_norm: float) -> float:
    """Forward and backward of this process's replay items alone, weighted so that they carry ``fraction`` of
    the step's loss; gradients accumulate locally (the task's last micro-batch syncs). Returns the replay loss
    (mean over the replay's trained tokens of all processes)."""
    dist, objective = run.runtime.dist, run.objective
    with gradient_sync(run.model, not dist.enabled):
        with run.runtime.autocast():
            out = objective.loss(run.model, run.runtime.to_device(objective.collate(replay, run.pad_id)))
        (out.loss_sum * _replay_weight(run, replay_norm)).backward()
    return _replay_loss(run, out.loss_sum, replay_norm)


def _clip_and_update(run: Run, train_loss: float) -> float:
    """Clip the gradient and step the optimizer; a step with a NaN/inf loss or gradient is skipped (its
    data is consumed: the order stays fixed) and too many in a row stop the run. Returns the grad norm."""
    import torch

    max_norm = run.config.max_grad_norm if run.config.max_grad_norm is not None else float("inf")
    norm = torch.nn.utils.clip_grad_norm_(run.params, max_norm)
    grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # FSDP: a DTensor
    s = run.state
    if math.isfinite(train_loss) and math.isfinite(grad_norm):
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
        s.nonfinite_consecutive = 0
        return grad_norm
    run.optimizer.zero_grad(set_to_none=True)
    s.nonfinite_consecutive += 1
    s.nonfinite_total += 1
    run.say(f"warning: step {s.step + 1}: non-finite loss ({train_loss}) or gradient norm ({grad_norm}); "
            "step skipped", level="warning")
    if s.nonfinite_consecutive >= run.config.max_nonfinite_steps:
        raise TrainingError(
            f"{s.nonfinite_consecutive} consecutive steps had a NaN/inf loss or gradient (last at step "
            f"{s.step + 1}); lower learning_rate, check the data, or use dtype fp32"
        )
    return grad_norm


def _after_step(run: Run, row: dict) -> None:
    """Eval when due, track the best checkpoint and early stopping, log, checkpoint, honour a pause."""
    s, hp = run.state, run.hp
    last = s.step == hp.total_steps
    new_best = stop_early = over_budget = False
    if run.eval_set is not None and (s.step % hp.eval_every == 0 or last):
        row.update(_evaluate(run))
        over_budget = _over_forgetting_budget(run, row)
        # An eval past the forgetting budget is never the best: the result stays within the budget.
        value = row.get(run.objective.eval_metric)
        if value is not None and run.objective.eval_higher_is_better:
            value = -value  # best = lowest
        new_best, stop_early = (False, True) if over_budget else _track_best(run, value)
    if run.metrics is not None:
        run.metrics.log(row)
        run.events.metrics(row, hp.total_steps)
        warn = overfitting_warning(run.metrics.rows)
        if warn and warn not in run.warnings:
            run.warnings.append(warn)
            run.say(f"warning: {warn}", level="warning")
    run.bar.update(s.step, loss=row.get(run.objective.progress_metric), eval_loss=row.get(run.objective.eval_metric),
                   tps=row["input_tokens_per_s"],
                   eps=row.get("examples_per_s"), forgetting=row.get("forgetting_ppl_ratio"))
    pause = (run.run_dir / PAUSE_FILE).exists()
    if run.runtime.dist.enabled:  # every process must agree: saving is collective
        pause = run.runtime.dist.all_reduce_sum([float(pause)])[0] > 0
    if s.step % hp.save_every == 0 or new_best or last or stop_early or pause:
        save_checkpoint(run.run_dir, s.step, run.core, run.optimizer, run.scheduler, asdict(s), run.runtime.dist)
        if run.runtime.dist.is_main:
            prune_checkpoints(run.run_dir, run.config.keep_checkpoints, s.best_step)
    if stop_early and over_budget:
        run.status = "early_stopped"
        run.say(f"early stopping at step {s.step}: general-text perplexity probe x{row['forgetting_ppl_ratio']:.3f} "
                f"of the base model's, past forgetting_budget {run.config.forgetting_budget:+.0%}; the result is "
                + (f"the best checkpoint within it (step {s.best_step})" if s.best_step else "the last weights (no eval within it)"))
    elif stop_early:
        run.status = "early_stopped"
        run.say(f"early stopping at step {s.step}: no better {run.objective.eval_metric} in "
                f"{run.config.early_stopping_patience} evals (best {_best_value(run):.4f} at step {s.best_step})")
    elif pause and not last:
        run.status = "paused"
        run.say(f"paused at step {s.step} of {hp.total_steps} (checkpoint saved); resume to continue")


def _over_forgetting_budget(run: Run, row: dict) -> bool:
    budget, ratio = run.config.forgetting_budget, row.get("forgetting_ppl_ratio")
    return budget is not None and ratio is not None and ratio > 1.0 + budget


def _best_value(run: Run) -> float | None:
    """The best eval's value of the objective's eval metric (the state keeps it negated when higher is better,
    so that "best" is always the lowest)."""
    v = run.state.best_eval_loss
    return -v if v is not None and run.objective.eval_higher_is_better else v


def _track_best(run: Run, value: float | None) -> tuple[bool, bool]:
    """(new best, stop early) after an eval whose selection metric is ``value`` (lower is better)."""
    s = run.state
    if value is not None and math.isfinite(value) and (s.best_eval_loss is None or value < s.best_eval_loss):
        s.best_eval_loss, s.best_step, s.evals_since_best = value, s.step, 0
        return True, False
    s.evals_since_best += 1
    patience = run.config.early_stopping_patience
    return False, patience is not None and s.evals_since_best >= patience


# ----------------------------------------------------------------------------------------------- finish
def _fail(run: Run, error: BaseException) -> None:
    run.bar.close()
    run.objective.close()
    if run.runtime.dist.is_main:
        run.info.update(status="failed", error=f"{type(error).__name__}: {error}")
        write_json_atomic(run.run_dir / RUN_RECORD, run.info)
        run.events.message(f"failed: {type(error).__name__}: {error}", level="error")
    if run.metrics is not None:
        run.metrics.close()
    run.runtime.close()


def _finish(run: Run) -> RunResult:
    """The result is the best checkpoint by the eval metric (the last weights without an eval set)."""
    run.bar.close()
    run.objective.close()
    s, dist = run.state, run.runtime.dist
    final_dir, merged_dir = run.run_dir / FINAL, None
    secs = s.train_seconds
    tokens_per_s = round(s.trained_tokens / secs, 1) if secs else 0.0
    input_tokens_per_s = round(s.input_tokens / secs, 1) if secs else 0.0  # prompts too: compare with other trainers
    rows = run.metrics.rows if run.metrics else []
    if run.status != "paused":
        if s.best_step is not None and s.best_step != s.step:
            load_trainable(run.core, run.run_dir / CHECKPOINTS / f"step-{s.best_step}")
        # Under FSDP the weights are sharded: gather them to rank 0 (a collective) before saving.
        gathered = full_state_dict(run.core, run.config.method != "full") if is_fsdp(run.core) else None
        if dist.is_main:
            _save_final(run.core, run.tokenizer, final_dir, gathered)
            if run.config.merge and run.config.method in ("lora", "qlora"):
                from honing.export.merge import merge_run

                run.info["status"] = run.status  # merge reads run.json for the base model
                write_json_atomic(run.run_dir / RUN_RECORD, run.info)
                merged_dir = merge_run(run.run_dir)
            if rows:
                plot_loss_curve(rows, run.run_dir / "loss_curve.png")
    if dist.is_main:
        status = run.status if run.status != "running" else "completed"
        run.info.update(
            status=status, steps_done=s.step, best={"step": s.best_step, "metric": run.objective.eval_metric, "value": _best_value(run),
                  "eval_loss": s.best_eval_loss if run.objective.eval_metric == "eval_loss" else None},
            final_train_loss=next((r["train_loss"] for r in reversed(rows) if r.get("train_loss") is not None), None),
            peak_memory_mb=run.runtime.peak_memory_mb(), memory=run.runtime.memory(), tokens_per_s=tokens_per_s,
            input_tokens_per_s=input_tokens_per_s, merged=merged_dir is not None,
            nonfinite_steps=s.nonfinite_total, warnings=run.warnings, finished=time.time(),
            wall_seconds=round(time.time() - run.started, 1),
        )
        write_json_atomic(run.run_dir / RUN_RECORD, run.info)
        if status != "paused":
            run.say(write_summary(run.run_dir, run.info, run.hp.as_dict(), run.warnings).rstrip())
        run.events.emit("message", f"run {status}", {"status": status, "steps_done": s.step})
        if run.metrics is not None:
            run.metrics.close()
    dist.barrier()
    run.runtime.close()
    return RunResult(
        run_dir=run.run_dir, status=run.status if run.status != "running" else "completed", final_dir=final_dir,
        best_step=s.best_step, best_eval_loss=s.best_eval_loss, steps=s.step,
        train_losses=[r["train_loss"] if r.get("train_loss") is not None else float("nan")
                      for r in rows if "train_loss" in r],
        eval_losses=[(r["step"], r["eval_loss"]) for r in rows if r.get("eval_loss") is not None],
        tokens_per_s=tokens_per_s, input_tokens_per_s=input_tokens_per_s,
        peak_memory_mb=run.runtime.peak_memory_mb(), merged_dir=merged_dir,
        hyperparameters=run.hp.as_dict(), warnings=run.warnings,
    )


def _save_final(core, tokenizer, final_dir: Path, state_dict: dict | None = None) -> None:
    """final/: a PEFT adapter (or full model) + tokenizer, written to a temp dir then renamed.
    ``state_dict``: the gathered weights of a sharded model (else the model's own)."""
    from honing.fileio import atomic_path
    from honing.train.checkpoint import assert_finite_tensors, assert_finite_weights

    if state_dict is None:
        assert_finite_weights(core)
    else:
        assert_finite_tensors(state_dict)
    extra = {"state_dict": state_dict} if state_dict is not None else {}
    with atomic_path(final_dir, overwrite=True) as tmp:
        core.save_pretrained(str(tmp), safe_serialization=True, **extra)
        tokenizer.save_pretrained(str(tmp))


# ----------------------------------------------------------------------------------------------- helpers
def library_versions() -> dict:
    import peft
    import torch
    import transformers

    import honing

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "honing": honing.__version__,
    }


def _attach_lora(model, config: TrainConfig):
    from peft import LoraConfig, get_peft_model

    lc = config.lora
    layers = None
    if lc.top_layers is not None:
        n_layers = getattr(model.config, "num_hidden_layers", None)
        if n_layers is None:
            raise ConfigError("lora.top_layers: this model's config does not say how many layers it has")
        if lc.top_layers > n_layers:
            raise ConfigError(f"lora.top_layers: {lc.top_layers} exceeds the model's {n_layers} layers")
        layers = list(range(n_layers - lc.top_layers, n_layers))
    targets = lc.target_modules
    if layers is not None and targets == "all-linear":
        targets = _linear_module_names(model)  # PEFT takes layers_to_transform only with explicit names
    peft_config = LoraConfig(
        layers_to_transform=layers,
        r=lc.r,
        lora_alpha=lc.alpha,
        lora_dropout=lc.dropout,
        target_modules=targets,
        use_rslora=lc.use_rslora,
        use_dora=lc.use_dora,
        task_type="CAUSAL_LM",
    )
    try:
        # autocast_adapter_dtype (the default) keeps adapter weights fp32 over a bf16 base.
        return get_peft_model(model, peft_config)
    except ValueError as e:
        raise ConfigError(f"lora.target_modules: {e}") from e


def _enable_fused_lora(model, config: TrainConfig, recompute_mlp: bool) -> str:
    """Route eligible decoder layers through honing.train.fused_lora; returns the line to print."""
    if not config.lora.fused:
        return "LoRA layers: PEFT's modules (lora.fused: false)"
    from honing.train.fused_lora import enable_fused_lora

    n = enable_fused_lora(model, recompute_mlp=recompute_mlp)
    total = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    why = []
    if config.lora.dropout:
        why.append(f"lora.dropout is {config.lora.dropout}")
    if config.lora.use_dora:
        why.append("DoRA")
    if config.method == "qlora":
        why.append("the 4-bit base layers run PEFT's bitsandbytes modules")
    if n:
        mlp = ", MLP gate/up recomputed in the backward" if recompute_mlp else ""
        rest = ""
        if total and n < total:  # e.g. adapted layers with dropout: they run PEFT's modules
            rest = f"; the other {total - n} run PEFT's modules" + (f" ({', '.join(why)})" if why else "")
        return f"LoRA layers: fused path on {n} of {total or n} decoder layers (honing.train.fused_lora{mlp}){rest}"
    reason = ", ".join(why) or "this architecture is not Llama/Mistral/Qwen2-shaped or does not use sdpa"
    note = "; activation_checkpointing: mlp needs the fused path and does nothing here" if recompute_mlp else ""
    return f"LoRA layers: PEFT's modules (fused path off: {reason}){note}"


def _linear_module_names(model) -> list[str]:
    """Leaf names of the Linear layers (q_proj, down_proj, ...), the output head excluded: what PEFT's
    'all-linear' means."""
    import torch

    head = model.get_output_embeddings()
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head}
    return sorted(names)


__all__ = ["PAUSE_FILE", "RunResult", "TrainerState", "train"]
