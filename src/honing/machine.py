"""Facts measured about this machine, kept across processes: whether bf16 matmuls beat fp32, the forward
rates behind the CPU token budget. Each is a short race that costs a fraction of a second to seconds at
every start; measured once per machine and reused, a run starts training sooner (``hone train``'s time to
first step).

The cache is keyed by the machine (CPU model name, CPU flags, core count) and torch's version, so a new
CPU, a VM moved to other hardware or a torch upgrade measures again. One JSON file per machine under the
Honing cache dir (``HONING_CACHE_DIR``, ``probes/``), written atomically; a lost race between two
processes only costs a measurement. ``HONING_PROBE_CACHE=0`` measures every time.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MAX_ENTRIES = 200  # oldest dropped first: model directories of tests and experiments come and go


@functools.cache
def machine_identity() -> dict:
    """What makes a measurement valid here: the CPU (model name, flags, cores) and torch's version."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    model, flags = "", ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = value.strip()  # a VM may name only the family ("AMD EPYC"): bf16 units differ
    except OSError:  # not Linux: what platform says
        pass
    model = model or platform.processor() or platform.machine()
    try:
        torch_version = version("torch")  # the installed one, without importing torch
    except PackageNotFoundError:
        torch_version = "none"
    return {"cpu": model, "flags_sha": hashlib.sha256(flags.encode()).hexdigest()[:16], "cores": os.cpu_count(),
            "torch": torch_version}


def quiet_enough() -> bool:
    """Whether the machine is calm enough for a timing to be kept: a 1-minute load average within the core
    count (this process's own work included). On a busier machine other processes decide a race's result
    (a 2-thread forward measured 50x slower than on an idle machine beside three other jobs), and a result
    kept for good must not be one of those."""
    try:
        return os.getloadavg()[0] <= (os.cpu_count() or 1)
    except OSError:
        return True


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _cache_file() -> Path:
    from honing.models.catalog import cache_root

    return cache_root() / "probes" / f"machine-{_digest(machine_identity())}.json"


def _enabled() -> bool:
    return os.environ.get("HONING_PROBE_CACHE", "1").strip().lower() not in ("0", "false", "no", "off")


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) and isinstance(data.get("entries"), dict) else {}
    except (OSError, ValueError):
        return {}  # absent, or cut by a crash before the atomic write existed: measure again


def measured_once(kind: str, key: dict, measure: Callable[[], Any],
                  decisive: Callable[[Any], bool] = lambda _v: True) -> tuple[Any, bool]:
    """(value, from_cache): the cached result of ``measure`` for ``kind`` and ``key`` on this machine, or a
    fresh measurement, stored when ``decisive(value)`` (a close call, which the machine's load may have
    decided, is used for this process only and measured again next time). ``value`` must be JSON (lists
    come back as lists)."""
    if not _enabled():
        return measure(), False
    path = _cache_file()
    entry_key = f"{kind}:{_digest(key)}"
    entry = _read(path).get("entries", {}).get(entry_key)
    if entry is not None and "value" in entry:
        return entry["value"], True
    value = measure()
    if not decisive(value):
        return value, False
    from honing.fileio import write_json_atomic

    data = _read(path) or {"machine": machine_identity(), "entries": {}}
    entries = data["entries"]
    entries[entry_key] = {"kind": kind, "key": key, "value": value, "measured_at": round(time.time(), 3)}
    if len(entries) > MAX_ENTRIES:
        for old in sorted(entries, key=lambda k: entries[k].get("measured_at", 0))[: len(entries) - MAX_ENTRIES]:
            del entries[old]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, data)
    except OSError:  # a read-only cache dir: the run goes on, measuring again next time
        pass
    return value, False
