"""Choosing the compute dtype for this machine.

bf16 halves memory traffic and, on CPUs with native bf16 matrix units (AVX512-BF16 / AMX) or on
recent GPUs, runs matmuls several times faster than fp32. On CPUs without them (e.g. AVX2-only
machines) PyTorch emulates bf16 and it is *dozens* of times slower (measured on a 2-core AVX2 EPYC:
fp32 32 GFLOP/s, bf16 0.6 GFLOP/s). Whether bf16 is fast is therefore measured, not assumed: a
few-millisecond matmul race, measured once per machine (honing.machine: keyed by the CPU and torch's
version) and cached for the process.
"""

from __future__ import annotations

import functools
import time

# bf16 must run the race in under this share of fp32's time to be chosen; a verdict is kept for the machine
# only when it is clear-cut (native bf16 units: 2-4x faster; emulation: dozens of times slower).
BF16_WINS_BELOW, DECISIVE_BELOW, DECISIVE_ABOVE = 0.8, 0.65, 1.5


@functools.cache
def bf16_is_fast(device: str = "cpu") -> bool:
    """True when bf16 matmuls beat fp32 on ``device`` (always True on bf16-capable CUDA)."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    from honing.machine import measured_once

    ratio, _ = measured_once("bf16_time_ratio", {"device": "cpu"}, bf16_race,
                             decisive=lambda r: r < DECISIVE_BELOW or r > DECISIVE_ABOVE)
    return ratio < BF16_WINS_BELOW


def bf16_race(reps: int = 7) -> float:
    """bf16's time over fp32's for a 256 x 256 matmul: the fastest of ``reps`` runs each, interleaved, so a
    busy machine's pauses (which only ever add time) fall on both and the minimum is the machine's speed."""
    import torch

    n = 256
    g = torch.Generator().manual_seed(0)  # private: a probe never moves the global (seeded) RNG
    pairs = {dtype: (torch.randn(n, n, generator=g).to(dtype), torch.randn(n, n, generator=g).to(dtype))
             for dtype in (torch.bfloat16, torch.float32)}
    best = dict.fromkeys(pairs, float("inf"))
    for a, b in pairs.values():
        a @ b  # warm up (the first call picks kernels)
    for _ in range(reps):
        for dtype, (a, b) in pairs.items():
            t = time.perf_counter()
            a @ b
            best[dtype] = min(best[dtype], time.perf_counter() - t)
    return best[torch.bfloat16] / max(best[torch.float32], 1e-9)


def auto_dtype(requested: str = "auto", device: str = "cpu"):
    """Resolve a dtype name ('auto', 'bf16', 'fp32', 'fp16', ...) to a torch dtype for ``device``."""
    import torch

    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if requested != "auto":
        return names[requested]
    return torch.bfloat16 if bf16_is_fast(device) else torch.float32
