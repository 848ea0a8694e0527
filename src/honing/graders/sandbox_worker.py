"""The process that runs a python grader's untrusted ``grade(sample, item)``, inside the sandbox.

Standalone on purpose (standard library only, never imports honing): it runs in bubblewrap, where only
the interpreter, its standard library and a read-only copy of the site-packages are visible.

Protocol (JSON lines; the pipes are moved off fds 0/1 first so the grader's prints cannot reach them):
  in, first line: {"source": str, "limits": {...}, "uid": int | null, "site": str | null}
  out:            {"ready": true} or {"ready": false, "error": str}
  in, per sample: {"i": int, "sample": {...}, "item": {...}}
  out:            {"i": int, "reward": number} | {"i": int, "bad": str} | {"i": int, "error": str, "kind": str}
Before the grader's code runs, the limits are set (hard limits: the grader cannot raise them again) and,
when started as root, the process becomes an unprivileged uid (root is exempt from RLIMIT_NPROC).
"""

import io
import json
import math
import os
import resource
import signal
import sys
import traceback

MAX_TRACEBACK = 1500


class CpuTimeLimit(BaseException):
    """Raised by SIGXCPU: a BaseException, so a grader's ``except Exception`` does not swallow it."""


class _CappedText(io.TextIOBase):
    """A grader's prints: kept up to ``cap`` characters, the rest only counted."""

    def __init__(self, cap):
        self.cap, self.size, self.parts = cap, 0, []

    def writable(self):
        return True

    def write(self, text):
        text = str(text)
        if self.size < self.cap:
            self.parts.append(text[: self.cap - self.size])
        self.size += len(text)
        return len(text)


def _on_xcpu(signum, frame):
    raise CpuTimeLimit("CPU time limit reached")


def _confine(limits, uid):
    """Set the resource limits, then drop root (both before any grader code runs)."""
    cpu_hard = int(limits["worker_cpu_s"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_hard, cpu_hard))
    resource.setrlimit(resource.RLIMIT_AS, (limits["memory_bytes"], limits["memory_bytes"]))
    resource.setrlimit(resource.RLIMIT_NPROC, (limits["processes"], limits["processes"]))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["file_bytes"], limits["file_bytes"]))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    signal.signal(signal.SIGXCPU, _on_xcpu)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past RLIMIT_FSIZE then fails with EFBIG
    if os.getuid() == 0 and uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)  # from root to another uid: every capability is dropped with it
        if os.getuid() == 0 or os.geteuid() == 0:
            raise SystemExit("could not leave root")


def _cpu_used():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _arm_cpu(seconds):
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    resource.setrlimit(resource.RLIMIT_CPU, (min(hard, math.ceil(_cpu_used() + seconds)), hard))


def _load(source):
    namespace = {"__name__": "grader"}
    exec(compile(source, "grader.py", "exec"), namespace)  # noqa: S102 (untrusted, sandboxed: the point)
    grade = namespace.get("grade")
    if not callable(grade):
        raise TypeError("the source defines no function grade(sample, item)")
    return grade


def _tail(exc):
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    frames = traceback.extract_tb(exc.__traceback__)
    own = [f for f in frames if f.filename == "grader.py"]
    if own:
        text = f"line {own[-1].lineno}: {text}"
    return text[-MAX_TRACEBACK:]


def _grade_one(grade, request, limits):
    worker_pid = os.getpid()
    out = _CappedText(limits["output_bytes"])
    sys.stdout = sys.stderr = out
    try:
        _arm_cpu(limits["cpu_s"])
        value = grade(request["sample"], request["item"])
    except CpuTimeLimit:
        return {"error": f"used more than {limits['cpu_s']:g} s of CPU time", "kind": "timeout"}
    except MemoryError:
        return {"error": f"ran out of memory (limit {limits['memory_bytes'] >> 20} MiB)", "kind": "memory"}
    except BaseException as e:  # noqa: BLE001 (whatever the grader raises, SystemExit included, is its error)
        return {"error": _tail(e), "kind": "runtime"}
    finally:
        if os.getpid() != worker_pid:  # a process the grader forked: it must never answer
            os._exit(0)
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    if out.size > limits["output_bytes"]:
        return {"error": f"printed {out.size} characters, more than the {limits['output_bytes']} allowed",
                "kind": "output"}
    if isinstance(value, bool):
        value = float(value)
    if isinstance(value, (int, float)):
        try:
            return {"reward": float(value)}
        except OverflowError:
            pass
    return {"bad": f"{repr(value)[:80]} ({type(value).__name__})"}


def main():
    proto_in = os.fdopen(os.dup(0), "r", encoding="utf-8")
    proto_out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    setup = json.loads(proto_in.readline())
    limits = setup["limits"]
    try:
        _confine(limits, setup["uid"])
        if setup.get("site"):
            sys.path.append(setup["site"])
        grade = _load(setup["source"])
    except BaseException as e:  # noqa: BLE001 (the grader's top level failed: report it, then stop)
        proto_out.write(json.dumps({"ready": False, "error": _tail(e)}) + "\n")
        proto_out.flush()
        return
    proto_out.write('{"ready": true}\n')
    proto_out.flush()
    for line in proto_in:
        request = json.loads(line)
        reply = _grade_one(grade, request, limits)
        reply["i"] = request["i"]
        proto_out.write(json.dumps(reply) + "\n")
        proto_out.flush()


if __name__ == "__main__":
    main()
