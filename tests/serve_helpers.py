"""Helpers for tests of `hone serve`: a REAL server subprocess on a free localhost port, a throwaway
PostgreSQL cluster, and small training files.

    server = start_server(tmp_path)            # --no-auth, SQLite in tmp_path/data
    client = OpenAI(base_url=server.base_url, api_key=server.api_key)
    ...
    server.stop()                              # or server.kill9()
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HONE = [sys.executable, "-c", "from honing.cli import main; main()"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(extra: dict | None = None) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
           "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env.setdefault("HONING_CACHE_DIR", str(REPO / ".cache"))
    env.update(extra or {})
    return env


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    data_dir: Path
    db_url: str | None
    api_key: str = "none"
    log_path: Path | None = None
    args: list = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.is_file() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill9(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def wait_health(url: str, proc: subprocess.Popen | None = None, timeout: float = 120, log: Path | None = None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n" + (log.read_text() if log else ""))
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url}/health did not answer in {timeout}s")


def hone(*args, env: dict | None = None, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*HONE, *args], capture_output=True, text=True, env=_env(env), timeout=timeout,
                          check=check)


def create_key(data_dir: Path, project: str, db_url: str | None = None) -> str:
    args = ["serve", "keys", "create", "--project", project, "--data-dir", str(data_dir)]
    if db_url:
        args += ["--db", db_url]
    return hone(*args).stdout.strip().splitlines()[-1]


def start_server(tmp_path: Path, *, no_auth: bool = True, db_url: str | None = None, extra_args=(),
                 env: dict | None = None, data_dir: Path | None = None, port: int | None = None) -> Server:
    """Start `hone serve` on a free localhost port and wait for /health. ``data_dir`` defaults to
    tmp_path/data; pass the same one (and port) again to restart a server on the same state."""
    data_dir = Path(data_dir or tmp_path / "data")
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    args = ["serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir)]
    if db_url:
        args += ["--db", db_url]
    if no_auth:
        args.append("--no-auth")
    # The tests train tiny models made in their temporary directories, named by path (a trusted setup);
    # tests/test_serve_models.py checks the default, which refuses paths.
    args.append("--allow-model-paths")
    args += list(extra_args)
    log = data_dir / f"server-{port}-{time.time_ns()}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*HONE, *args], stdout=out, stderr=subprocess.STDOUT, env=_env(env),
                                stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_health(url, proc, log=log)
    except BaseException:
        proc.kill()
        raise
    return Server(url=url, proc=proc, data_dir=data_dir, db_url=db_url, log_path=log, args=args)


def chat_rows(n: int = 12, *, bad_lines: dict[int, str] | None = None) -> str:
    """A small chat JSONL (n examples); ``bad_lines`` replaces 1-based lines with raw text."""
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
             "kilo", "lima", "mike", "november", "oscar", "papa"]
    lines = []
    for i in range(n):
        w = words[i % len(words)]
        lines.append(json.dumps({"messages": [
            {"role": "user", "content": f"Say the code word number {i}."},
            {"role": "assistant", "content": f"The code word is {w} {i}."}]}))
    for ln, text in (bad_lines or {}).items():
        lines[ln - 1] = text
    return "\n".join(lines) + "\n"


# -- PostgreSQL -----------------------------------------------------------------------------------
def _pg_bin() -> Path | None:
    for pattern in ("/usr/lib/postgresql/*/bin",):
        found = sorted(Path("/").glob(pattern.lstrip("/")))
        for d in reversed(found):
            if (d / "initdb").is_file() and (d / "pg_ctl").is_file():
                return d
    which = shutil.which("initdb")
    return Path(which).parent if which else None


@dataclass
class Postgres:
    root: Path
    port: int
    socket_dir: Path
    run_as: list

    def url(self, db: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@/{db}?host={self.socket_dir}&port={self.port}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(host=str(self.socket_dir), port=self.port, user="postgres", dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        subprocess.run([*self.run_as, str(_pg_bin() / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate",
                        "stop"], capture_output=True, timeout=60, check=False)


def start_postgres(tmp_root: Path) -> Postgres:
    """initdb + pg_ctl start a throwaway cluster (unix socket in tmp_root, a free port). As root, runs the
    server as the `postgres` user (PostgreSQL refuses to run as root). Raises RuntimeError with a reason
    when PostgreSQL is not installed (scripts/system_deps.sh installs it)."""
    bindir = _pg_bin()
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed (no initdb; run scripts/system_deps.sh as root)")
    run_as: list = []
    root = Path(tmp_root)
    root.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError as e:
            raise RuntimeError("running as root and there is no 'postgres' user to run PostgreSQL") from e
        run_as = ["runuser", "-u", "postgres", "--"]
        os.chown(root, pw.pw_uid, pw.pw_gid)
        p = root
        while p != p.parent:  # the postgres user must be able to reach its directory
            p = p.parent
            if p.stat().st_uid == 0:
                os.chmod(p, p.stat().st_mode | 0o011)
    sock = root / "sock"
    data = root / "data"
    subprocess.run([*run_as, "mkdir", "-p", str(sock)], check=True)
    r = subprocess.run([*run_as, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                        "-E", "UTF8", "--no-sync"], capture_output=True, text=True, timeout=180,
                       check=False)
    if r.returncode != 0:
        raise RuntimeError(f"initdb failed: {r.stderr[-2000:]}")
    port = free_port()
    opts = f"-p {port} -k {sock} -c listen_addresses='' -c fsync=off -c max_connections=100"
    r = subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "pg.log"),
                        "-w", "-t", "120", "start"], capture_output=True, text=True,
                       timeout=180, check=False)
    if r.returncode != 0:
        log = (root / "pg.log").read_text() if (root / "pg.log").is_file() else ""
        raise RuntimeError(f"pg_ctl start failed: {r.stderr[-1000:]} {log[-1000:]}")
    return Postgres(root, port, sock, run_as)
