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
