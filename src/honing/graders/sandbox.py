"""The sandbox python graders run in: bubblewrap (``bwrap``) around a worker process that grades many
samples, one JSON line each (``sandbox_worker.py``).

What the grader's code sees and may do:

* files: a read-only root with only ``/usr`` (and the ``/bin``, ``/lib*`` links), the Python interpreter
  and its standard library, and a read-only copy of the environment's site-packages (so numpy,
  rapidfuzz, jsonschema... import, as in OpenAI's grader image); an empty 16 MiB ``/tmp``. No data
  directory, no project, no home, no ``/etc``;
* no network (a new network namespace), no other process (a new PID namespace), a clean environment;
* limits set before its code runs, as hard limits it cannot raise: CPU seconds per sample (SIGXCPU,
  then SIGKILL over the worker's life), address space, processes (RLIMIT_NPROC; started as root the
  worker first becomes uid 65534, as root is exempt), file size 0 (no file can be written), 64 files;
  ``no_new_privs`` (set by bwrap) makes setuid programs useless;
* a wall-clock timeout per sample and a cap on its printed output and its reply.

A worker that dies, hangs or breaks the protocol is killed (with its whole PID namespace) and a new one
grades the remaining samples. The parent never trusts a reply beyond checking it is a finite number.
"""

from __future__ import annotations

import functools
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from honing.graders.core import GraderError

WORKER_SCRIPT = Path(__file__).with_name("sandbox_worker.py")
SANDBOX_UID = 65534  # "nobody": what a worker started as root becomes before the grader's code runs
UNSAFE_ENV = "HONING_UNSAFE_PYTHON_GRADER"
INSTALL_HINT = "install bubblewrap: `sh scripts/system_deps.sh` (as root) or `apt-get install bubblewrap`"
MAX_REPLY_BYTES = 64 * 1024
_INNER_WORKER = "/opt/honing/worker.py"
_INNER_SITE = "/opt/honing/site-packages"


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 10.0  # wall clock per sample
    cpu_s: float = 10.0  # CPU time per sample
    worker_cpu_s: int = 3600  # CPU time over a worker's life (then it is killed and replaced)
    memory_bytes: int = 2 << 30  # address space (OpenAI's python graders get 2 GB)
    processes: int = 16  # RLIMIT_NPROC (threads count too)
    file_bytes: int = 0  # RLIMIT_FSIZE: no file can be written
    output_bytes: int = 64 * 1024  # what a grader may print per sample
    startup_s: float = 30.0  # starting the sandbox and running the source's top level
    workers: int = 0  # worker processes (0: up to 4, one per two cores)

    def worker_count(self) -> int:
        return self.workers or max(1, min(4, (os.cpu_count() or 2) // 2))


class WorkerFailure(Exception):
    """A sample the worker did not answer properly; ``flag`` is the metadata.errors flag."""

    def __init__(self, flag: str, detail: str, kind: str | None = None):
        super().__init__(detail)
        self.flag, self.kind = flag, kind


def _unsafe_allowed() -> bool:
    return os.environ.get(UNSAFE_ENV) == "1"


def sandbox_unsafe() -> bool:
    """True when python graders loaded with allow_unsafe would run without the sandbox."""
    return _unsafe_allowed() and _probe() is not None


def check_available(allow_unsafe: bool = False) -> None:
    """Raise GraderError (saying how to install it) unless python graders can run sandboxed here.
    ``allow_unsafe`` (the CLI only, never the service) runs them unsandboxed when HONING_UNSAFE_PYTHON_GRADER=1."""
    if allow_unsafe and _unsafe_allowed():
        return
    problem = _probe()
    if problem:
        raise GraderError(f"python graders run only inside the bubblewrap sandbox, and {problem}: {INSTALL_HINT}")


@functools.lru_cache(maxsize=1)
def _probe() -> str | None:
    """None when bwrap starts a sandboxed interpreter here, else what is wrong (checked once)."""
    if shutil.which("bwrap") is None:
        return "`bwrap` is not installed"
    argv = bwrap_argv() + [_python(), "-I", "-S", "-c", "print(6 * 7)"]
    try:
        done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"bwrap could not start ({e})"
    if done.stdout.strip() != "42":
        return f"bwrap fails here ({(done.stderr or done.stdout).strip()[-300:]})"
    return None


def _python() -> str:
    """The base interpreter (a venv's python is a symlink into the venv, which the sandbox does not show)."""
    base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    return str(base if base.exists() else Path(sys.executable).resolve())


def _site_packages() -> str | None:
    site = sysconfig.get_paths()["purelib"]
    return site if Path(site).is_dir() else None


def bwrap_argv() -> list[str]:
    argv = ["bwrap", "--die-with-parent", "--new-session", "--unshare-net", "--unshare-pid", "--unshare-ipc",
            "--unshare-uts", "--unshare-cgroup-try", "--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64"):
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    prefix = str(Path(sys.base_prefix).resolve())
    if prefix != "/usr" and not prefix.startswith("/usr/"):
        argv += _ro_bind(prefix, prefix)  # the interpreter stays where its libpython rpath expects it
    site = _site_packages()
    if site:
        argv += _ro_bind(site, _INNER_SITE)
    argv += _ro_bind(str(WORKER_SCRIPT), _INNER_WORKER)
    argv += ["--proc", "/proc", "--dev", "/dev", "--size", str(16 << 20), "--perms", "1777", "--tmpfs", "/tmp", "--chdir", "/tmp",
             "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp",
             "--setenv", "LANG", "C.UTF-8", "--setenv", "PYTHONDONTWRITEBYTECODE", "1"]
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # one thread: RLIMIT_NPROC
        argv += ["--setenv", var, "1"]
    if os.geteuid() == 0:  # keep only what the worker needs to become uid 65534, and drop it with root
        argv += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    return argv + ["--remount-ro", "/"]


def _ro_bind(source: str, target: str) -> list[str]:
    """Bind ``source`` read-only at ``target``, creating target's parents traversable (mode 0755), so the
    unprivileged uid can reach it (bwrap would make a parent like /root 0700, as on the host)."""
    parents = list(reversed(Path(target).parents))[1:]  # without "/"
    out: list[str] = []
    for p in parents:
        out += ["--perms", "0755", "--dir", str(p)]
    return out + ["--ro-bind", source, target]


def worker_argv(allow_unsafe: bool) -> tuple[list[str], str, str | None]:
    """(argv, the worker script's path inside, the site-packages path inside)."""
    if allow_unsafe and sandbox_unsafe():
        return [_python(), "-I", "-S", "-B", str(WORKER_SCRIPT)], str(WORKER_SCRIPT), _site_packages()
    return (bwrap_argv() + [_python(), "-I", "-S", "-B", _INNER_WORKER], _INNER_WORKER,
            _INNER_SITE if _site_packages() else None)


def _signal_name(signum: int) -> str:
    try:
        name = signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
    return {"SIGKILL": "SIGKILL (CPU or memory limit, or killed)", "SIGXCPU": "SIGXCPU (CPU time limit)"}.get(name, name)


class _Spawner:
    """Starts every worker from one long-lived thread. bwrap's --die-with-parent (PR_SET_PDEATHSIG) fires
    when the *thread* that started it ends, and grading threads are short-lived."""

    def __init__(self) -> None:
        self.requests: queue.Queue = queue.Queue()
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def spawn(self, argv: list[str]) -> subprocess.Popen:
        with self.lock:
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._serve, name="grader-sandbox-spawner", daemon=True)
                self.thread.start()
        done: queue.Queue = queue.Queue()
        self.requests.put((argv, done))
        result = done.get()
        if isinstance(result, BaseException):
            raise result
        return result

    def _serve(self) -> None:
        while True:
            argv, done = self.requests.get()
            try:
                done.put(subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, start_new_session=True, close_fds=True))
            except OSError as e:
                done.put(e)


_spawn = _Spawner().spawn


class Worker:
    """One sandboxed worker process: write requests, read replies with a timeout each."""

    def __init__(self, source: str, limits: SandboxLimits, allow_unsafe: bool = False):
        self.limits = limits
        argv, _, site = worker_argv(allow_unsafe)
        try:
            self.proc = _spawn(argv)
        except OSError as e:
            raise WorkerFailure("python_grader_server_error", f"cannot start the sandbox: {e}", "start") from None
        self.replies: queue.Queue = queue.Queue()
        self.stderr_tail = b""
        threading.Thread(target=self._read_replies, daemon=True).start()
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        # Unsandboxed (the CLI's explicit opt-in), the real paths are used and may be root's: stay as we are.
        uid = None if argv[0] != "bwrap" else SANDBOX_UID
        setup = {"source": source, "limits": asdict(limits), "uid": uid, "site": site}
        self._write([json.dumps(setup)])
        try:
            ready = self.reply(limits.startup_s, "starting the worker and running the source's top level")
        except WorkerFailure:
            self.kill()
            raise
        if not ready.get("ready"):
            self.kill()
            raise WorkerFailure("python_grader_runtime_error", f"the grader's source failed: {ready.get('error')}")

    def _read_replies(self) -> None:
        stream = self.proc.stdout
        while True:
            line = stream.readline(MAX_REPLY_BYTES + 1)
            self.replies.put(line or None)
            if not line or not line.endswith(b"\n"):  # ended, or too long: nothing after it aligns
                stream.close()
                return

    def _drain_stderr(self) -> None:
        for chunk in iter(lambda: self.proc.stderr.read1(4096), b""):
            self.stderr_tail = (self.stderr_tail + chunk)[-2000:]
        self.proc.stderr.close()

    def _write(self, lines: list[str]) -> None:
        try:
            self.proc.stdin.write("".join(line + "\n" for line in lines).encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            pass  # the worker is gone: reading its reply says so

    def submit(self, lines: list[str]) -> None:
        """Send requests from a thread: a worker busy on a slow sample must not block the reader."""
        threading.Thread(target=self._write, args=(lines,), daemon=True).start()

    def reply(self, timeout: float, doing: str = "grading the sample") -> dict:
        try:
            line = self.replies.get(timeout=timeout)
        except queue.Empty:
            raise WorkerFailure("unresponsive_reward_error", f"no answer within {timeout:g} s while {doing}",
                                "timeout") from None
        if line is None:
            raise WorkerFailure("python_grader_server_error", self._death(), "worker_died")
        if not line.endswith(b"\n"):
            raise WorkerFailure("truncated_observation_error",
                                f"the worker's reply was longer than {MAX_REPLY_BYTES} bytes", "protocol")
        try:
            reply = json.loads(line)
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            raise WorkerFailure("python_grader_server_error",
                                f"the worker wrote something that is not a reply: {line[:80]!r}", "protocol")
        return reply

    def _death(self) -> str:
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        # bwrap exits 128 + N when the grader's process died of signal N
        signum = -code if code is not None and code < 0 else code - 128 if code is not None and code > 128 else None
        why = f"was killed by {_signal_name(signum)}" if signum else f"exited with status {code}"
        tail = self.stderr_tail.decode(errors="replace").strip()[-300:]
        return f"the grader's process {why}" + (f": {tail}" if tail else "")

    def kill(self) -> None:
        """Kill bwrap; the PID namespace, and every process the grader started in it, goes with it."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 9)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        try:
            self.proc.stdin.close()  # stdout and stderr: their reader threads close them at EOF
        except OSError:
            pass

    def alive(self) -> bool:
        return self.proc.poll() is None
