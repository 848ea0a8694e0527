"""Choosing the compute dtype for this machine.

bf16 halves memory traffic and, on CPUs with native bf16 matrix units (AVX512-BF16 / AMX) or on
recent GPUs, runs matmuls several times faster than fp32. On CPUs without them (e.g. AVX2-only
machines) PyTorch emulates bf16 and it is *dozens* of times slower (measured on a 2-core AVX2 EPYC:
fp32 32 GFLOP/s, bf16 0.6 GFLOP/s). Whether bf16 is fast is therefore measured, not assumed: a
few-millisecond matmul race, cached for the process.
"""

from __future__ import annotations

import functools
import time


@functools.cache
def bf16_is_fast(device: str = "cpu") -> bool:
    """True when bf16 matmuls beat fp32 on ``device`` (always True on bf16-capable CUDA)."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    n = 256
    g = torch.Generator().manual_seed(0)  # private: a probe never moves the global (seeded) RNG

    def rate(dtype) -> float:
        a = torch.randn(n, n, generator=g).to(dtype)
        b = torch.randn(n, n, generator=g).to(dtype)
        a @ b  # warm up (first call picks kernels)
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t)
        return best

    # Require a clear win: equal speed is not worth bf16's rounding.
    return rate(torch.bfloat16) < 0.8 * rate(torch.float32)


def auto_dtype(requested: str = "auto", device: str = "cpu"):
    """Resolve a dtype name ('auto', 'bf16', 'fp32', 'fp16', ...) to a torch dtype for ``device``."""
    import torch

    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if requested != "auto":
        return names[requested]
    return torch.bfloat16 if bf16_is_fast(device) else torch.float32
