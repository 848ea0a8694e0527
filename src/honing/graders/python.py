"""``python`` graders: the user's ``grade(sample, item) -> float``, run in the sandbox (sandbox.py).

A batch is split across the workers (one thread each, requests pipelined); a sample the worker fails on
(raise, timeout, death, garbage) gets reward 0 with the reason in ``metadata.errors``, the worker is
replaced when it is gone or untrustworthy, and the rest of the batch goes on."""

from __future__ import annotations

import ast
import itertools
import json
import threading
import time
import weakref
from collections.abc import Sequence

from honing.graders.base import Grader, check_keys, grader_name
from honing.graders.core import GraderError, GradeResult, Sample, as_reward, where
from honing.graders.sandbox import SandboxLimits, Worker, WorkerFailure, check_available

MAX_SOURCE_BYTES = 256 * 1024  # OpenAI's limit for a python grader's source
REWARD_RANGE = (0.0, 1.0)  # OpenAI's graders return a grade from 0 to 1
_KIND_FLAG = {"runtime": "python_grader_runtime_error", "memory": "python_grader_runtime_error",
              "timeout": "unresponsive_reward_error", "output": "truncated_observation_error"}


class PythonGrader(Grader):
    type = "python"

    def __init__(self, spec: dict, path: str, limits: SandboxLimits | None = None, allow_unsafe: bool = False):
        # image_tag names OpenAI's grader image; the sandbox's Python is this environment's.
        check_keys(spec, path, ("source",), ("image_tag", "pass_threshold"))
        super().__init__(grader_name(spec, path))
        self.source = _checked_source(spec["source"], where(path, "source"))
        check_available(allow_unsafe)
        self.limits = limits or SandboxLimits()
        self.allow_unsafe = allow_unsafe
        self._slots: list[Worker | None] = [None] * self.limits.worker_count()
        self._broken: WorkerFailure | None = None  # the source's top level fails: every sample says so
        self._ids = itertools.count()
        self._lock = threading.Lock()
        weakref.finalize(self, _kill_all, self._slots)

    def grade(self, samples: Sequence[Sample]) -> list[GradeResult]:
        with self._lock:
            results: list[GradeResult | None] = [None] * len(samples)
            requests: list[tuple[int, str]] = []
            for k, s in enumerate(samples):
                try:
                    body = json.dumps({"sample": s.namespace(), "item": s.item}, allow_nan=False)
                except (TypeError, ValueError) as e:
                    results[k] = self.failed("sample_parse_error", f"the sample is not JSON: {e}")
                    continue
                requests.append((k, body[1:]))  # the object without its "{": the id goes first
            chunks = [requests[j::len(self._slots)] for j in range(len(self._slots))]
            threads = [threading.Thread(target=self._run, args=(j, chunk, results))
                       for j, chunk in enumerate(chunks) if chunk]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            # A grading thread that died of a bug in this module must not leave a sample without a result.
            return [r if r is not None else self.failed("python_grader_server_error", "not graded (internal error)")
                    for r in results]

    def _run(self, slot: int, requests: list[tuple[int, str]], results: list) -> None:
        """Grade ``requests`` on worker ``slot``, replacing the worker after a failure."""
        pending = list(requests)
        while pending:
            worker = self._worker(slot)
            if isinstance(worker, WorkerFailure):
                for k, _ in pending:
                    results[k] = self.failed(worker.flag, str(worker), server_error_type=worker.kind)
                return
            ids = [next(self._ids) for _ in pending]
            worker.submit([f'{{"i": {i}, {rest}' for i, (_, rest) in zip(ids, pending, strict=True)])
            done = 0
            for i, (k, _) in zip(ids, pending, strict=True):
                start = time.perf_counter()
                try:
                    reply = worker.reply(self.limits.timeout_s)
                    if reply.get("i") != i:
                        raise WorkerFailure("python_grader_server_error", "the worker answered out of turn",
                                            "protocol")
                except WorkerFailure as e:
                    results[k] = self.failed(e.flag, str(e), time.perf_counter() - start, server_error_type=e.kind)
                    worker.kill()
                    self._slots[slot] = None
                    done += 1
                    break
                results[k] = self._result(reply, time.perf_counter() - start)
                done += 1
            pending = pending[done:]

    def _worker(self, slot: int) -> Worker | WorkerFailure:
        if self._broken is not None:
            return self._broken
        worker = self._slots[slot]
        if worker is not None and worker.alive():
            return worker
        try:
            worker = Worker(self.source, self.limits, self.allow_unsafe)
        except WorkerFailure as e:
            if e.flag in ("python_grader_runtime_error", "unresponsive_reward_error"):
                self._broken = e  # the source's top level fails or hangs the same way in every new worker
            return e
        self._slots[slot] = worker
        return worker

    def _result(self, reply: dict, seconds: float) -> GradeResult:
        if "error" in reply:
            flag = _KIND_FLAG.get(reply.get("kind"), "python_grader_runtime_error")
            return self.failed(flag, f"grade() failed: {reply['error']}", seconds)
        if "bad" in reply:
            return self.failed("python_grader_runtime_error", f"grade() returned {reply['bad']}, not a number",
                               seconds)
        reward, why = as_reward(reply.get("reward"), *REWARD_RANGE)
        if why:
            return self.failed("python_grader_runtime_error", f"grade() {why}", seconds)
        return self.ok(reward, seconds)

    def close(self) -> None:
        with self._lock:
            _kill_all(self._slots)


def _kill_all(slots: list) -> None:
    for j, worker in enumerate(slots):
        if worker is not None:
            worker.kill()
            slots[j] = None


def _checked_source(source: object, path: str) -> str:
    """Syntax and a top-level ``grade`` checked here, without running anything of it."""
    if not isinstance(source, str) or not source.strip():
        raise GraderError(f"{path}: must be Python source defining grade(sample, item)")
    if len(source.encode()) > MAX_SOURCE_BYTES:
        raise GraderError(f"{path}: {len(source.encode())} bytes, more than the {MAX_SOURCE_BYTES} allowed")
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise GraderError(f"{path}: line {e.lineno}: {e.msg}") from None
    except (RecursionError, MemoryError, ValueError) as e:
        raise GraderError(f"{path}: cannot be parsed ({type(e).__name__})") from None
    if not any(_defines_grade(node) for node in tree.body):
        raise GraderError(f"{path}: defines no top-level function grade(sample, item)")
    return source


def _defines_grade(node: ast.stmt) -> bool:
    if isinstance(node, ast.FunctionDef):
        return node.name == "grade"
    if isinstance(node, ast.Assign):
        return any(isinstance(t, ast.Name) and t.id == "grade" for t in node.targets)
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return any((a.asname or a.name) == "grade" for a in node.names)
    return False
