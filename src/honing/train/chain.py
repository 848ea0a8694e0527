"""Chaining runs (``init_from: RUN_DIR`` / ``hone train --init-adapter RUN_DIR``): start from an earlier run's
result instead of the bare base model - SFT then DPO, continued pre-training then SFT.

=====================  ==========================  ====================================================
earlier run's result   this run's method           this run starts from
=====================  ==========================  ====================================================
adapter (LoRA/QLoRA)   lora / qlora                the same base, the earlier adapter loaded trainable
adapter                full                        the base with the earlier adapter merged in (fp32)
full model             any                         the earlier run's full model as the base
=====================  ==========================  ====================================================

The run record gets ``init_from``: the earlier run, its objective/method/data fingerprint and its own
``init_from``, so run.json holds the whole lineage from base model and data to this adapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from honing.errors import ConfigError


@dataclass
class StartingPoint:
    model_reference: str  # what to load as the base
    adapter_dir: Path | None  # an adapter to load trainable on top (lora -> lora/qlora)
    merge_adapter_dir: Path | None  # an adapter to fold into the base first (lora -> full)
    record: dict | None  # what run.json records about the chain (None: no init_from)


def starting_point(config) -> StartingPoint:
    """Where this run starts; errors name ``init_from`` and say what is wrong with the directory."""
    if not config.init_from:
        return StartingPoint(config.model, None, None, None)
    from honing.models.catalog import resolve_model
    from honing.rundir import RunDir

    path = Path(config.init_from)
    if not RunDir.is_run(path):
        raise ConfigError(f"init_from: {path} is not a Honing run directory (no run.json)")
    prev = RunDir(path)
    info = prev.record()
    if not (prev.has_adapter() or prev.has_full_model()):
        raise ConfigError(f"init_from: {path} has no result in final/ (status {info.get('status')!r}); "
                          "finish or resume that run first")
    base = prev.base_model_reference()
    wanted = resolve_model(config.model).path
    allowed = {resolve_model(base).path} | ({Path(prev.final_dir).resolve()} if prev.has_full_model() else set())
    if Path(wanted).resolve() not in {Path(a).resolve() for a in allowed}:
        raise ConfigError(f"model: {config.model} is not the base model of the init_from run {path} ({base}); "
                          "set model to that base")
    record = {"run": str(path), "objective": info.get("objective"), "method": info.get("method"),
              "base_model": info.get("base_model"), "result": str(prev.final_dir),
              "data": ((info.get("dataset") or {}).get("train") or {}).get("sha256"),
              "init_from": info.get("init_from")}
    if prev.has_full_model():
        return StartingPoint(str(prev.final_dir), None, None, record)
    if config.method in ("lora", "qlora"):
        return StartingPoint(base, prev.final_dir, None, record)
    return StartingPoint(base, None, prev.final_dir, record)


def load_starting_model(config, runtime, say):
    """(model, tokenizer, resolved, StartingPoint): the base in 4-bit for qlora, the earlier adapter merged
    in for lora -> full."""
    from honing.models.loading import load_model

    start = starting_point(config)
    if config.method == "qlora":
        from honing.train.qlora import load_quantized

        model, tokenizer, resolved = load_quantized(start.model_reference, runtime)
        say("QLoRA: base linear layers in 4-bit NF4 with double quantization (bitsandbytes)")
        if not runtime.is_cuda:
            # bitsandbytes dequantizes every 4-bit weight at each forward on a CPU: measured on a 2-core EPYC
            # (embedded model, batch 4, one thread, load ~5) 1.0-1.8x the step time of LoRA in bf16, for memory
            # that only matters where the base's weights dominate it (billions of parameters).
            say("note: on a CPU, 4-bit layers are dequantized at every forward, so QLoRA trains slower than "
                "method: lora; use it here only when the base model does not fit in memory otherwise")
    else:
        model, tokenizer, resolved = load_model(start.model_reference, dtype=runtime.load_dtype,
                                                device=runtime.device)
    if start.merge_adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(start.merge_adapter_dir)).merge_and_unload()
    if start.record is not None:
        say(f"init_from: starting from {start.record['run']} ({start.record['objective']}, "
            f"{start.record['method']}" + (", its adapter merged into the base)" if start.merge_adapter_dir else ")"))
    return model, tokenizer, resolved, start


def load_trainable_adapter(model, start: StartingPoint, config):
    """The earlier run's adapter on ``model``, trainable (its own rank and targets: the lora settings of
    this run do not apply to it); None when this run starts a new adapter."""
    if start.adapter_dir is None:
        return None
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(start.adapter_dir), is_trainable=True)
