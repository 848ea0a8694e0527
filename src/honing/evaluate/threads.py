"""How many CPU threads decoding should use, measured rather than assumed.

Greedy decoding runs many small matmuls (one decode step of a 64-row batch through a 135M model is a
few MFLOP each). On an idle machine two threads beat one; on a machine whose cores are busy with other
work, every multi-threaded op waits at an OpenMP barrier for a thread that is not scheduled, and one
thread is several times faster (measured on a shared 2-core EPYC: 32 zero-shot prompts in 11 s on one
thread vs 54 s on two). A ~50 ms race on a decode-sized matmul decides, like ``bf16_is_fast``.
"""

from __future__ import annotations

import contextlib
import statistics
import time


def fastest_thread_count(reps: int = 15) -> int:
    """1 or torch's current thread count, whichever runs a decode-sized matmul faster right now.
    More threads are kept unless one thread is clearly (>20 %) faster."""
    import torch
    import torch.nn.functional as F

    current = torch.get_num_threads()
    if current <= 1:
        return 1
    x, w = torch.randn(64, 576), torch.randn(1536, 576)  # a batch-64 decode step, SmolLM2-135M MLP shape
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
    finally:
        torch.set_num_threads(current)
    timings = {n: statistics.median(v) for n, v in samples.items()}
    return 1 if timings[1] < 0.8 * timings[current] else current


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
