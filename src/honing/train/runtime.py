"""The runtime: where and how a run computes, chosen once per process.

One object owns every device-dependent decision, so nothing below it says ``"cpu"`` or ``"cuda"``
(the way torchtune's recipes take ``device`` from the config and move each batch with one helper):

* the device (``device: auto | cpu | cuda``; auto = CUDA when this torch sees a GPU; under torchrun
  each process takes ``cuda:LOCAL_RANK``),
* the compute dtype (bf16 on CUDA with fp32 adapter/master weights; on CPU the measured choice,
  because AVX2-only CPUs emulate bf16 dozens of times slower),
* autocast, moving a batch to the device (one helper),
* RNG state capture/restore for Python, NumPy, the CPU and every CUDA device (resume stays exact),
* memory reporting (peak RSS; on CUDA also ``max_memory_allocated``/``max_memory_reserved``),
* the CPU thread count (measured: 1 thread wins on a busy machine; kept on resume),
* the allocator policy on glibc (return freed heap pages to the OS only when it pays),
* the distributed context (``honing.train.distributed``).
"""

from __future__ import annotations

import contextlib
import os
import random
import resource
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from honing.errors import ConfigError
from honing.train.distributed import DistContext, setup_distributed


def resolve_device(requested: str = "auto", local_rank: int = 0):
    """``auto`` -> ``cuda:LOCAL_RANK`` when CUDA is usable, else ``cpu``. ``cuda`` without a usable GPU is a
    ConfigError that says why (a CPU build of torch, or no device visible)."""
    import torch

    if requested not in ("auto", "cpu", "cuda") and not requested.startswith("cuda:"):
        raise ConfigError(f"device: expected auto, cpu or cuda, got {requested!r}")
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        why = ("this torch is a CPU build (torch.version.cuda is None)" if torch.version.cuda is None
               else "no CUDA device is visible (check CUDA_VISIBLE_DEVICES and the driver)")
        raise ConfigError(f"device: cuda was requested but {why}; use device: cpu or auto")
    if requested.startswith("cuda:"):
        return torch.device(requested)
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def current_rss_mb() -> float:
    """Resident set size now (not the peak), from /proc: cheap enough to read every step."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()


def peak_rss_mb() -> float:
    # ru_maxrss is in kilobytes on Linux, bytes on macOS.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024, 1)


class HeapTrimmer:
    """glibc only: give freed heap pages back to the OS when the heap has grown, not after every step.

    Without any trimming, fragmented freed activations make peak RSS creep up step after step
    (3.1 -> 4.2 GB over two identical 900-token steps of SmolLM2-135M). Trimming after *every* step
    stops that, but on short steps it hands back memory the next step faults straight back in: a
    1,200 x 60-token run spent half its CPU time in the kernel (~51,000 minor page faults/s). So: trim
    when RSS has grown by ``growth`` (fraction) plus ``slack_mb`` since the last trim; a run whose steps
    reuse the same memory stops trimming after the first steps. HONING_MALLOC_MMAP_THRESHOLD=<bytes>
    also serves allocations of at least that size with mmap (tighter memory, ~20-30% slower).
    """

    def __init__(self, growth: float = 0.10, slack_mb: float = 64.0, rss: Callable[[], float] = current_rss_mb):
        self.growth, self.slack_mb, self.rss = growth, slack_mb, rss
        self.baseline_mb: float | None = None
        self.trims = 0
        self._trim = self._libc_trim()

    @staticmethod
    def _libc_trim():
        if not sys.platform.startswith("linux"):
            return None
        import ctypes

        try:
            libc = ctypes.CDLL("libc.so.6")
            trim = libc.malloc_trim
        except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
            return None
        threshold = int(os.environ.get("HONING_MALLOC_MMAP_THRESHOLD", "0"))
        if threshold > 0:
            libc.mallopt(-3, threshold)  # -3 = M_MMAP_THRESHOLD (malloc.h)
        return lambda: trim(0)

    def after_step(self) -> bool:
        """Call once per optimizer step; returns True when it trimmed."""
        if self._trim is None:
            return False
        now = self.rss()
        if self.baseline_mb is not None and now <= self.baseline_mb * (1 + self.growth) + self.slack_mb:
            return False
        self._trim()
        self.trims += 1
        self.baseline_mb = self.rss()
        return True


@dataclass
class Runtime:
    device: object  # torch.device
    dtype_name: str  # "bf16" | "fp32": what the run computes in
    load_dtype: object  # torch dtype of the base weights as loaded
    autocast_dtype: object | None  # autocast dtype, or None for no autocast
    dist: DistContext = field(default_factory=DistContext)
    heap: HeapTrimmer = field(default_factory=HeapTrimmer)
    threads: int | None = None  # torch CPU threads, once choose_threads has run
    _threads_before: int | None = None

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def describe(self) -> str:
        where = str(self.device)
        if self.is_cuda:
            import torch

            where += f" ({torch.cuda.get_device_name(self.device)})"
        procs = f", {self.dist.world_size} processes ({self.dist.backend})" if self.dist.enabled else ""
        return f"device: {where}; compute dtype: {self.dtype_name}{procs}"

    def choose_threads(self, requested, recorded: int | None) -> str | None:
        """Set torch's CPU thread count for this run (``threads:`` in the config; see ``honing.threads``) and
        say why, or None where it does not apply: on a GPU, or under torchrun on the CPU with ``auto``
        (there torchrun's OMP_NUM_THREADS already splits the cores between the processes)."""
        import torch

        if self.is_cuda or (self.dist.enabled and requested == "auto" and not recorded):
            return None
        from honing.threads import training_threads

        self.threads, why = training_threads(requested, recorded)
        self._threads_before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        return f"CPU threads: {self.threads} ({why})"

    def to_device(self, batch: dict) -> dict:
        """The one place a batch moves to the device (non_blocking: pinned-free copies overlap on CUDA)."""
        if self.device.type == "cpu":
            return batch
        return {k: (v.to(self.device, non_blocking=True) if hasattr(v, "to") else v) for k, v in batch.items()}

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        import torch

        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def memory(self) -> dict:
        """Peak memory of this process: RSS always; CUDA allocator peaks on a GPU (MB)."""
        out = {"peak_rss_mb": peak_rss_mb()}
        if self.is_cuda:
            import torch

            out["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
            out["cuda_max_reserved_mb"] = round(torch.cuda.max_memory_reserved(self.device) / 2**20, 1)
        return out

    def peak_memory_mb(self) -> float:
        """The memory figure a user compares: GPU allocator peak on CUDA, RSS on CPU."""
        m = self.memory()
        return m.get("cuda_max_allocated_mb", m["peak_rss_mb"])

    def after_step(self) -> None:
        if self.device.type == "cpu":
            self.heap.after_step()

    def close(self) -> None:
        """Leave the process as it was found: the process group and torch's thread count."""
        self.dist.close()
        if self._threads_before is not None:
            import torch

            torch.set_num_threads(self._threads_before)


def compute_dtypes(requested: str, method: str, device) -> tuple[str, object, object | None]:
    """(name "bf16"|"fp32", dtype to load the base weights in, autocast dtype or None).

    ``auto``: bf16 on a bf16-capable GPU; on CPU only where bf16 matmuls measure faster than fp32.
    LoRA/QLoRA + bf16: frozen base weights in bf16 (half the memory) while PEFT keeps the adapter
    weights - the only ones the optimizer updates - in fp32, under bf16 autocast on CUDA so the adapter
    matmuls run on tensor cores too. Full + bf16: fp32 master weights with bf16 autocast, because AdamW
    updates are lost in bf16's 8-bit mantissa.
    """
    import torch

    from honing.precision import auto_dtype

    resolved = auto_dtype(requested, device.type)
    if resolved != torch.bfloat16:
        return "fp32", torch.float32, None
    if method != "full":
        return "bf16", torch.bfloat16, (torch.bfloat16 if device.type == "cuda" else None)
    return "bf16", torch.float32, torch.bfloat16


def create_runtime(config) -> Runtime:
    """Join the process group (under torchrun), pick the device and the dtypes."""
    requested = getattr(config, "device", "auto")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(requested, local_rank)
    if device.type == "cuda":
        import torch

        torch.cuda.set_device(device)
    dist = setup_distributed(device)
    name, load_dtype, autocast_dtype = compute_dtypes(config.dtype, config.method, device)
    return Runtime(device=device, dtype_name=name, load_dtype=load_dtype, autocast_dtype=autocast_dtype, dist=dist)


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too


def capture_rng() -> dict:
    """Every RNG a run draws from: Python, NumPy, the CPU generator and each initialised CUDA device."""
    import numpy as np
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype("uint32"), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = list(state["cuda"])
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
