"""Atomic checkpoints: everything a bitwise-identical resume needs.

``checkpoints/step-N/`` holds

* ``trainable.safetensors``: the trainable parameters by their exact ``named_parameters()`` names;
* ``optimizer.pt`` / ``scheduler.pt``: their ``state_dict()`` (tensors and plain values only, so they
  load with ``torch.load(weights_only=True)``);
* ``rng-rank{R}.pt``: each process's torch (CPU and CUDA), Python and NumPy RNG states;
* ``trainer_state.json``: global step, epoch, position in the epoch, seed, best eval loss, counters;
* ``COMPLETE``: written last. A directory without it is never read.

A save writes into ``checkpoints/.tmp-step-N`` and renames it into place, so ``kill -9`` at any moment
leaves either the previous checkpoints or the new complete one; leftovers are removed on resume.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from honing.rundir import CHECKPOINTS, COMPLETE, complete_checkpoints
from honing.train.errors import TrainingError
from honing.train.runtime import capture_rng, restore_rng

# Test hook: seconds to sleep in the middle of a save (after the weights, before COMPLETE), so a test can
# kill the process while a checkpoint is half written.
SAVE_DELAY_ENV = "HONING_TEST_SAVE_DELAY"


def trainable_state(model) -> dict:
    return {n: p.detach().contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}


def assert_finite_weights(model) -> None:
    """Every trainable parameter finite (under FSDP: this process's shards)."""
    assert_finite_tensors({n: p for n, p in model.named_parameters() if p.requires_grad})


def assert_finite_tensors(tensors: dict) -> None:
    import torch

    for n, t in tensors.items():
        local = t.to_local() if hasattr(t, "to_local") else t  # a DTensor: check this process's shard
        if local.is_floating_point() and not torch.isfinite(local).all():
            raise TrainingError(f"parameter {n} holds NaN/inf values; refusing to save it")


def remove_partial_checkpoints(run_dir: Path) -> list[str]:
    """Delete half-written saves (a kill during a save); return their names."""
    root = run_dir / CHECKPOINTS
    removed = []
    if root.is_dir():
        for d in root.iterdir():
            if d.name.startswith(".tmp-") or (d.name.startswith("step-") and not (d / COMPLETE).is_file()):
                shutil.rmtree(d, ignore_errors=True)
                removed.append(d.name)
    return removed


def save_checkpoint(run_dir: Path, step: int, model, optimizer, scheduler, trainer_state: dict, dist) -> Path | None:
    """Write ``checkpoints/step-<step>`` atomically. Every process calls it (each saves its RNG);
    rank 0 writes the rest. Returns the directory on rank 0."""
    import torch
    from safetensors.torch import save_file

    from honing.train.sharding import is_fsdp, save_sharded

    root = run_dir / CHECKPOINTS
    tmp = root / f".tmp-step-{step}"
    final = root / f"step-{step}"
    sharded = is_fsdp(model)
    if dist.is_main or sharded:
        assert_finite_weights(model)
    if dist.is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    dist.barrier()
    torch.save(capture_rng(), tmp / f"rng-rank{dist.rank}.pt")
    if sharded:  # FSDP2: each process writes its own shards (torch.distributed.checkpoint)
        save_sharded(model, optimizer, tmp / "sharded")
    dist.barrier()
    if not dist.is_main:
        dist.barrier()
        return None
    if not sharded:
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
    delay = float(os.environ.get(SAVE_DELAY_ENV, "0") or 0)
    if delay:
        time.sleep(delay)
    if not sharded:
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2))
    _fsync_dir_files(tmp)
    (tmp / COMPLETE).write_text(f"step {step}\n")
    if final.exists():  # a save of the same step by an earlier, interrupted attempt
        shutil.rmtree(final)
    os.rename(tmp, final)
    dist.barrier()
    return final


def _fsync_dir_files(d: Path) -> None:
    for f in d.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def prune_checkpoints(run_dir: Path, keep_last: int, best_step: int | None) -> None:
    """Keep the newest ``keep_last`` complete checkpoints and the best one."""
    ckpts = complete_checkpoints(run_dir)
    keep = {d.name for d in ckpts[-keep_last:]}
    if best_step is not None:
        keep.add(f"step-{best_step}")
    for d in ckpts:
        if d.name not in keep:
            shutil.rmtree(d, ignore_errors=True)


def load_trainable(model, ckpt: Path) -> None:
    """Copy a checkpoint's trainable tensors into ``model`` (names must match exactly)."""
    import torch
    from safetensors.torch import load_file

    from honing.train.sharding import is_fsdp, load_sharded

    if is_fsdp(model):
        load_sharded(model, None, ckpt / "sharded")
        return

    saved = load_file(str(ckpt / "trainable.safetensors"))
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in saved]
    unknown = [n for n in saved if n not in params]
    if missing or unknown:
        raise TrainingError(
            f"{ckpt} does not match this model (missing {missing[:3]}, unexpected {unknown[:3]}); "
            "was the run's configuration changed?"
        )
    with torch.no_grad():
        for n, t in saved.items():
            params[n].copy_(t)


def load_checkpoint(ckpt: Path, model, optimizer, scheduler, rank: int) -> dict:
    """Restore everything from ``ckpt``; return its trainer state."""
    import torch

    from honing.train.sharding import is_fsdp, load_sharded

    if is_fsdp(model):
        if not (ckpt / "sharded").is_dir():
            raise TrainingError(f"{ckpt} is not a sharded (FSDP) checkpoint: resume with the same distributed setting")
        load_sharded(model, optimizer, ckpt / "sharded")
    else:
        load_trainable(model, ckpt)
        optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))
    rng_file = ckpt / f"rng-rank{rank}.pt"
    if not rng_file.is_file():
        raise TrainingError(f"{ckpt} has no RNG state for process {rank}: resume with the same number of processes")
    restore_rng(torch.load(rng_file, weights_only=True))
    return json.loads((ckpt / "trainer_state.json").read_text())
