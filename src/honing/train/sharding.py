"""Training across processes: DDP for models that fit one device, FSDP2 for those that do not.

DDP keeps a full copy of the model on every process and all-reduces gradients. FSDP2
(``torch.distributed.fsdp.fully_shard``) shards parameters, gradients and optimizer state across the
processes: each decoder layer is its own unit (gathered for its forward and backward, resharded after),
then the root. Both are torch's own engines; nothing here is home-made beyond choosing and wiring them.

Under FSDP2 the model's parameters are DTensors, so saving goes through
``torch.distributed.checkpoint``: sharded checkpoints (each process writes its shards; a run resumes
with the same number of processes) and, for ``final/``, a full state dict gathered to rank 0 and saved
in the same PEFT adapter / transformers format as a single-process run.
"""

from __future__ import annotations

import contextlib


def strategy_for(config, runtime) -> str:
    """"none" alone; under torchrun ``distributed`` (auto = ddp)."""
    if not runtime.dist.enabled:
        return "none"
    return "ddp" if config.distributed == "auto" else config.distributed


def wrap_model(core, runtime, strategy: str):
    """The module the forward runs through: the model itself, DDP around it, or the model sharded in
    place by FSDP2 (apply the fused LoRA patch before: it is kept, see fused_lora._eligible_layer)."""
    if strategy == "none":
        return core
    if strategy == "fsdp":
        return shard_fsdp2(core, runtime)
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(core, device_ids=[runtime.device.index] if runtime.is_cuda else None)


def decoder_layers(model) -> list:
    from honing.train.losses import _unwrap

    inner = _unwrap(model)
    decoder = inner.get_decoder() if hasattr(inner, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if layers is None:
        from honing.errors import ConfigError

        raise ConfigError(f"distributed: fsdp needs a model with decoder layers; {type(inner).__name__} has none")
    return list(layers)


def shard_fsdp2(core, runtime):
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = None
    if runtime.is_cuda and runtime.autocast_dtype is not None:
        import torch

        # bf16 compute and all-gathers, fp32 gradient reduction (the master weights stay fp32).
        mp = MixedPrecisionPolicy(param_dtype=runtime.autocast_dtype, reduce_dtype=torch.float32)
    kwargs = {"mp_policy": mp} if mp is not None else {}
    for layer in decoder_layers(core):
        fully_shard(layer, **kwargs)
    fully_shard(core, **kwargs)
    return core


def is_fsdp(model) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return False
    return isinstance(model, FSDPModule)


def gradient_sync(model, sync: bool):
    """Context for one micro-batch's backward: skip the gradient all-reduce except on the step's last
    micro-batch (DDP: no_sync; FSDP2: set_requires_gradient_sync)."""
    if sync:
        return contextlib.nullcontext()
    if hasattr(model, "no_sync"):
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):
        return _fsdp_no_sync(model)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _fsdp_no_sync(model):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # Frozen base weights never change: a LoRA checkpoint holds only the adapter.
    return StateDictOptions(ignore_frozen_params=True, **kw)


def save_sharded(model, optimizer, path) -> None:
    """Every process writes its shards of the trainable weights and the optimizer state into ``path``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(model, optimizer, options=_options())
    dcp.save({"model": msd, "optimizer": osd}, checkpoint_id=str(path))


def load_sharded(model, optimizer, path) -> None:
    """Restore the trainable weights (and the optimizer state when given) from ``save_sharded``'s files."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_state_dict,
        set_model_state_dict,
        set_state_dict,
    )

    if optimizer is None:
        msd = get_model_state_dict(model, options=_options())
        dcp.load({"model": msd}, checkpoint_id=str(path))
        set_model_state_dict(model, msd, options=_options(strict=False))
        return
    msd, osd = get_state_dict(model, optimizer, options=_options())
    state = {"model": msd, "optimizer": osd}
    dcp.load(state, checkpoint_id=str(path))
    # strict=False: the frozen base weights are not in the checkpoint (they come from the base model).
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                   options=_options(strict=False))


def full_state_dict(model, trainable_only: bool) -> dict:
    """The whole (or trainable) state gathered to rank 0 on the CPU; a collective: every process calls it
    (the other ranks get an empty dict)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(
        full_state_dict=True, cpu_offload=True, ignore_frozen_params=trainable_only))
