"""When the user's command started, for ``hone train``'s "time to first step": counted from the process's
start (interpreter and imports included), which is what a user waits for. A library call of ``train()``
has no such moment of its own (the process may be a notebook or a test runner started long before): it
counts from the call."""

from __future__ import annotations

import os
import time

_command_started: float | None = None


def process_started_at() -> float | None:
    """Unix time this process started (Linux /proc), or None where that cannot be read."""
    try:
        with open("/proc/self/stat") as f:
            # Field 22 (starttime, clock ticks after boot); the command name before it may hold spaces.
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])  # 10 ms resolution (/proc/stat's btime has whole seconds)
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def mark_command_start() -> None:
    """Called by a CLI command that trains: its time to first step counts from the process's start."""
    global _command_started
    _command_started = process_started_at() or time.time()


def take_command_start() -> float | None:
    """The command's start, once: a later ``train()`` call in the same process counts from its own call."""
    global _command_started
    started, _command_started = _command_started, None
    return started


def skip_compiler_imports(method: str, environ=None) -> bool:
    """Turn torch.compile into a no-op for a run that is not QLoRA; True when this call did. Honing compiles
    nothing, but importing PEFT imports bitsandbytes, whose CPU kernels are wrapped in ``torch.compile`` at
    import, and that loads torch's inductor: ~1.4 s of ``hone train``'s start (PEFT's import 5.0-5.4 s ->
    3.8 s at load ~6 on 2 cores). QLoRA runs those kernels, so it keeps them compiled; a value the user set
    is left alone. Read by torch each time ``torch.compile`` is called, so setting it before PEFT's import
    is enough."""
    import os

    env = os.environ if environ is None else environ
    if method == "qlora" or "TORCHDYNAMO_DISABLE" in env:
        return False
    env["TORCHDYNAMO_DISABLE"] = "1"
    return True


def prepare_imports(method: str) -> None:
    """What ``hone train`` sets before its heavy imports, for a faster start (see ``skip_compiler_imports``);
    benchmarks/time_to_first_step.py calls it too, so that its timed imports load what a real run loads.
    Also defers the heavy modules a run of one process never uses (honing.deferred_imports)."""
    skip_compiler_imports(method)
    defer_unused_imports(method)


def defer_unused_imports(method: str, environ=None) -> bool:
    """Install honing.deferred_imports: the deferral for a run that needs none of its modules (True when this
    call deferred them), the cached index of transformers' model folders for every run. Only before torch's
    import: later there is little to save, and a process that imported them already (a test runner, a
    notebook, a second ``hone train`` command in one process) is left as it is."""
    import sys

    from honing import deferred_imports

    if "torch" in sys.modules:
        return False
    return deferred_imports.install(defer=deferred_imports.wanted(method, environ))
