"""How many CPU threads torch should use, measured rather than assumed (decoding and training).

On an idle machine two threads beat one; on a machine whose cores are busy with other work, every
multi-threaded op waits at an OpenMP barrier for a thread that is not scheduled, and one thread is several
times faster (measured on a shared 2-core EPYC: 32 zero-shot prompts in 11 s on one thread vs 54 s on two;
a demo training step 27x faster on one thread at load ~18). A short race between 1 thread and torch's
default on a matmul of the job's shape decides, like ``bf16_is_fast``: decode-sized (64 rows) for
generation, step-sized (512 rows) for training.
"""

from __future__ import annotations

import contextlib
import statistics
import time

DECODE_ROWS = 64  # a batch-64 decode step
TRAIN_ROWS = 512  # a short-example training micro-batch (8 x ~64 tokens)


CLEAR_AFTER = 5  # rounds after which a race whose every sample agrees is decided (see fastest_thread_count)


def fastest_thread_count(reps: int = 15, rows: int = DECODE_ROWS) -> int:
    """1 or torch's current thread count, whichever runs a ``rows`` x 576 @ 576 x 1536 matmul (SmolLM2-135M's
    MLP shape) faster right now. More threads are kept unless one thread is clearly (>20 %) faster.
    The race stops after ``CLEAR_AFTER`` rounds when the samples do not overlap at all (on an idle machine two
    threads win every round: the other ten rounds, a third of ``hone train``'s thread choice, decide nothing)."""
    import torch
    import torch.nn.functional as F

    current = torch.get_num_threads()
    if current <= 1:
        return 1
    # A private generator: the probe runs after the user's seed and must not move the global RNG
    # (it did: LoRA's init then differed from an unprobed run, and golden losses moved).
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(rows, 576, generator=g), torch.randn(1536, 576, generator=g)
    samples: dict[int, list[float]] = {current: [], 1: []}
    try:
        for n in samples:  # warm up both settings (the first call picks kernels)
            torch.set_num_threads(n)
            F.linear(x, w)
        # Interleaved, so both settings see the same (changing) load from other processes.
        for _ in range(reps):
            for n, times in samples.items():
                torch.set_num_threads(n)
                t = time.perf_counter()
                F.linear(x, w)
                times.append(time.perf_counter() - t)
            decided = _clear_cut(samples[1], samples[current], current) if len(samples[1]) >= CLEAR_AFTER else None
            if decided is not None:
                return decided
    finally:
        torch.set_num_threads(current)
    timings = {n: statistics.median(v) for n, v in samples.items()}
    return 1 if timings[1] < 0.8 * timings[current] else current


def _clear_cut(one: list[float], more: list[float], current: int) -> int | None:
    """The race's answer when no sample contradicts it: 1 when every 1-thread time is under 0.8x every time
    with ``current`` threads, ``current`` when every 1-thread time is over every other; else None."""
    if max(one) < 0.8 * min(more):
        return 1
    if min(one) > max(more):
        return current
    return None


def training_threads(requested, recorded: int | None = None) -> tuple[int, str]:
    """(threads, why) for a training process on the CPU. ``recorded``: the count a resumed run was started
    with, kept because a different count can change the float summation order (and resume is bitwise)."""
    import torch

    if recorded:
        return int(recorded), "as recorded when the run started (resume keeps the bits)"
    if requested != "auto":
        return int(requested), "set in the config"
    default = torch.get_num_threads()
    chosen = fastest_thread_count(rows=TRAIN_ROWS)
    if chosen == default:
        return default, "torch's default; 1 thread measured no faster right now"
    return chosen, (f"measured: 1 thread runs a training-sized matmul >20% faster than {default} right now "
                    "(the cores are busy with other work)")


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with ``n`` torch threads, then restore the previous count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)
