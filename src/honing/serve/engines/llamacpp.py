"""The llama.cpp chat engine: the server side of ``llamacpp_worker``, which runs in its own process.

Prompts are rendered and answers decoded here, with the base model's Hugging Face tokenizer (the code that
rendered the training examples), so both engines see the same token ids and return the same text for
the same tokens; the worker only decodes ids. Stop strings are matched here on the decoded text (the
worker is told to cancel), stop tokens (end of turn, EOS) in the worker.

Why a process: a crash or a ``kill -9`` of llama.cpp fails the requests it was serving with an
OpenAI-shaped error (a stream ends with an error event and ``data: [DONE]``), and the next request starts
a new engine; and decoding never holds the server's GIL, so ``/health`` and the API stay quick.

Timeouts: starting the engine process waits at most ``START_TIMEOUT`` s; a request that gets no token for
``token_timeout`` s (default 300: queued behind a full engine, or a hung engine) is cancelled and answered
with a 503."""

from __future__ import annotations

import itertools
import logging
import os
import queue
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

from honing.serve.errors import APIError
from honing.serve.inference import Choice, Params, Target

log = logging.getLogger("honing.serve")
START_TIMEOUT = 120.0
_DIED = object()  # put in every open request's queue when the engine process goes away


class ConversionFailed(APIError):
    """The export could not write a model or adapter as GGUF (a 500 naming the model and the reason)."""

    def __init__(self, message: str):
        super().__init__(500, message, code="engine_conversion_failed")


def available() -> str | None:
    """None when llama-cpp-python is importable, else why not (without importing it: it loads a library)."""
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python is not installed (build it with `make llama-cpp`)"
    return None


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class LlamaCppEngine:
    name = "llama.cpp"

    def __init__(self, cache_dir: Path, adapter_cache: int = 4, quant: str = "f16", n_ctx: int = 8192,
                 n_seq: int = 16, threads: int | None = None, token_timeout: float = 300.0):
        from honing.models.catalog import cache_root

        self.cache_dir = Path(cache_dir)  # adapters (a project's data stays in the data dir)
        self.base_cache = cache_root() / "serve-gguf"  # base models, shared by every data dir (like their conversion)
        self.quant, self.token_timeout = quant, token_timeout
        self.cfg = {"n_ctx": n_ctx, "n_seq": n_seq, "n_batch": 512, "n_threads": threads or default_threads(),
                    "adapter_cache": max(1, adapter_cache)}
        self._tokenizers: dict = {}
        self._stop_ids: dict[str, tuple[int, ...]] = {}  # per base: ~0.1 s of Python to find, so found once
        self._proc = self._conn = None
        self._version = None
        self._queues: dict[int, queue.Queue] = {}
        self._sent_to: dict[int, object] = {}  # request id -> the engine connection it was sent to
        self._rids = itertools.count(1)
        self._lock = threading.Lock()  # starting the process, sending to it
        self.restarts = 0

    def describe(self) -> dict:
        return {"engine": self.name, "gguf_quant": self.quant, **{k: self.cfg[k] for k in ("n_ctx", "n_seq")},
                "threads": self.cfg["n_threads"]}

    # -- the process ----------------------------------------------------------------------------
    def _ensure_started(self) -> None:
        """Under self._lock: a running engine process (a new one after the last one died)."""
        if self._proc is not None and self._proc.poll() is None:
            return
        if self._proc is not None:
            self.restarts += 1
            log.warning("llama.cpp engine process exited (code %s); starting a new one", self._proc.returncode)
        proc, parent = _spawn(self.cfg)
        if not parent.poll(START_TIMEOUT):
            proc.kill()
            raise APIError(503, f"The llama.cpp engine did not start within {START_TIMEOUT:.0f} s",
                           code="engine_unavailable")
        try:
            ready = parent.recv()
        except EOFError:
            raise APIError(503, f"The llama.cpp engine exited at start (code {proc.wait(5)}); see the server log",
                           code="engine_unavailable") from None
        self._version = ready[1].get("llama_cpp_python")
        self._proc, self._conn = proc, parent
        threading.Thread(target=self._read, args=(proc, parent), daemon=True, name="hone-llama.cpp-reader").start()

    def _read(self, proc, conn) -> None:
        """Route the engine's messages to the requests' queues until its pipe closes."""
        try:
            while True:
                msg = conn.recv()
                if msg[0] == "tokens":
                    for rid, token, finish in msg[1]:
                        q = self._queues.get(rid)
                        if q is not None:
                            q.put((token, finish))
                elif msg[0] in ("error", "state"):
                    q = self._queues.get(msg[1])
                    if q is not None:
                        q.put(msg)
        except (EOFError, OSError):
            pass
        proc.wait()
        with self._lock:
            if self._proc is proc:
                self._conn = None
            # only this engine's requests: those sent to a newer engine are still being answered
            for rid in [r for r, c in self._sent_to.items() if c is conn]:
                q = self._queues.get(rid)
                if q is not None:
                    q.put(_DIED)

    def _send(self, msg, rids: list[int]) -> None:
        with self._lock:
            self._ensure_started()
            for rid in rids:
                self._sent_to[rid] = self._conn
            self._conn.send(msg)

    def _cancel(self, rid: int) -> None:
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.send(("cancel", rid))
                except OSError:
                    pass

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.send(("exit",))
                except OSError:
                    pass
            if self._proc is not None:
                try:
                    self._proc.wait(10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
            self._proc = self._conn = None

    # -- models -------------------------------------------------------------------------------
    def tokenizer(self, base: str):
        if base not in self._tokenizers:
            from honing.models.loading import load_tokenizer

            self._tokenizers[base] = load_tokenizer(base)
        return self._tokenizers[base]

    def stop_ids(self, base: str) -> tuple[int, ...]:
        """The tokens that end an answer (end of turn, EOS). Looked up once per base: the lookup holds the
        server's GIL ~0.1 s (SmolLM2), which at every request stalled /health and every other thread."""
        if base not in self._stop_ids:
            from honing.evaluate.generation import stop_token_ids

            self._stop_ids[base] = tuple(stop_token_ids(self.tokenizer(base)))
        return self._stop_ids[base]

    def _files(self, t: Target) -> tuple[str, str | None]:
        from honing.errors import HoningError
        from honing.serve.engines.gguf_cache import base_gguf, lora_gguf

        try:
            base = base_gguf(self.base_cache, t.base, self.quant)
            if t.adapter_key is None:
                return str(base), None
            if not (t.adapter_dir / "adapter_config.json").is_file():
                raise APIError(409, "This model's adapter is not available on the server (was its run removed?)",
                               code="model_not_ready")
            return str(base), str(lora_gguf(self.cache_dir, t.base, t.adapter_key, t.adapter_dir, t.weights))
        except HoningError as e:
            raise ConversionFailed(f"Converting '{t.base}'{f' ({t.adapter_key})' if t.adapter_key else ''} for "
                                   f"llama.cpp failed: {e}") from None

    def prepare(self, t: Target) -> None:
        """Convert ``t``'s base model and adapter to GGUF now (a ConversionFailed says why not)."""
        self._files(t)

    def unload(self, adapter_keys: list[str]) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.send(("unload", list(adapter_keys)))

    def loaded_adapters(self, base: str) -> list[str]:
        """The adapter keys the engine holds on ``base``'s model, least recently used first."""
        rid, q = next(self._rids), queue.Queue()
        self._queues[rid] = q
        try:
            self._send(("state", rid), [rid])
            msg = q.get(timeout=30)
        finally:
            self._queues.pop(rid, None)
            self._sent_to.pop(rid, None)
        if msg is _DIED:
            return []
        path = str(self._files(Target(base))[0])
        return msg[2].get(path, [])

    # -- generation ---------------------------------------------------------------------------
    def _submit(self, t: Target, prompt_ids: list[int], p: Params, seeds: list[int | None]
                ) -> list[tuple[int, queue.Queue]]:
        """One sequence per seed, sent in ONE message: the engine admits them in the same step, so a
        request's choices are batched alike every time (llama.cpp's rounding depends on the batch: with a
        seed, the same request alone gets the same answers)."""
        n_ctx = self.cfg["n_ctx"]
        if len(prompt_ids) >= n_ctx:
            raise APIError(400, f"messages: the prompt is {len(prompt_ids)} tokens; the engine's context holds "
                                f"{n_ctx} (hone serve --engine-ctx)", param="messages", code="context_length_exceeded")
        base, adapter = self._files(t)
        stop_ids = self.stop_ids(t.base)
        out, reqs = [], []
        for seed in seeds:
            rid, q = next(self._rids), queue.Queue()
            self._queues[rid] = q
            out.append((rid, q))
            reqs.append({"rid": rid, "base": base, "adapter_key": t.adapter_key, "adapter_path": adapter,
                         "prompt": list(prompt_ids), "max_tokens": min(p.max_new_tokens, n_ctx - len(prompt_ids)),
                         "temperature": p.temperature, "top_p": p.top_p, "seed": seed, "stop_ids": stop_ids})
        try:
            self._send(("submit", reqs), [rid for rid, _ in out])
        except BaseException:
            for rid, _ in out:
                self._queues.pop(rid, None)
                self._sent_to.pop(rid, None)
            raise
        return out

    def _tokens(self, rid: int, q: queue.Queue) -> Iterator[tuple[int, str | None]]:
        while True:
            try:
                msg = q.get(timeout=self.token_timeout)
            except queue.Empty:
                raise APIError(503, f"The llama.cpp engine produced no token for {self.token_timeout:.0f} s; "
                                    "the request was cancelled", code="engine_timeout") from None
            if msg is _DIED:
                raise APIError(503, "The llama.cpp engine process stopped while generating; retry the request "
                                    "(a new engine starts)", code="engine_error")
            if msg[0] == "error":
                raise APIError(500, f"llama.cpp: {msg[2]}", code="engine_error")
            yield msg

    def _decode(self, t: Target, rid: int, q: queue.Queue, p: Params, whole: bool = False
                ) -> Iterator[tuple[str, str | None, int]]:
        """(text delta, finish_reason or None, completion tokens so far) of one submitted sequence. ``whole``
        (an answer not streamed, without stop strings): the text is decoded once, at the end, not at each
        token (with many requests at once, the server's threads then do not wake to decode at every step)."""
        tok = self.tokenizer(t.base)
        ids: list[int] = []
        count, sent, hold = 0, 0, max((len(s) for s in p.stop), default=1) - 1
        specials = set(tok.all_special_ids)
        whole = whole and not p.stop
        try:
            for token, finish in self._tokens(rid, q):
                count += 1
                if token not in specials and finish != "stop":  # the stop token itself is not text
                    ids.append(token)
                if whole and finish is None:
                    continue
                text = tok.decode(ids, skip_special_tokens=True)
                cut = _cut_at_stop(text, p.stop)
                if cut is not None:
                    yield cut[sent:], "stop", count
                    return
                if finish is not None:  # the engine has already freed the sequence: nothing to cancel
                    self._queues.pop(rid, None)
                    yield text[sent:], finish, count
                    return
                safe = len(text) - hold
                while safe > sent and text[safe - 1] == "\ufffd":  # half a UTF-8 character: wait for the rest
                    safe -= 1
                if safe > sent:
                    yield text[sent:safe], None, count
                    sent = safe
        finally:
            self._forget(rid)

    def _forget(self, rid: int) -> None:
        """A request that ended early (stop string, client gone, error) frees its sequence in the engine."""
        if self._queues.pop(rid, None) is not None:
            self._cancel(rid)
        self._sent_to.pop(rid, None)

    def stream(self, t: Target, prompt_ids: list[int], p: Params) -> Iterator[tuple[str, str | None, int]]:
        ((rid, q),) = self._submit(t, prompt_ids, p, [p.seed])
        yield from self._decode(t, rid, q, p)

    def complete(self, t: Target, prompt_ids: list[int], p: Params) -> list[Choice]:
        """All ``n`` choices decode at once (sampled: seeds seed, seed+1, ...; greedy: one run, repeated)."""
        runs = 1 if p.temperature <= 0 else p.n
        submitted = self._submit(t, prompt_ids, p, [None if p.seed is None else p.seed + i for i in range(runs)])
        try:
            choices = [_collect(self._decode(t, rid, q, p, whole=True)) for rid, q in submitted]
        finally:
            for rid, _ in submitted:
                self._forget(rid)
        return (choices * p.n)[: p.n]


def _spawn(cfg: dict):
    """The worker as a plain subprocess (``python -m``; multiprocessing's spawn would re-run the server's
    main module) talking over one end of a socket pair: (process, connection)."""
    import json
    import socket
    import sys
    from multiprocessing.connection import Connection

    ours, theirs = socket.socketpair()
    fd = theirs.fileno()
    proc = subprocess.Popen([sys.executable, "-m", "honing.serve.engines.llamacpp_worker", str(fd), json.dumps(cfg)],
                            pass_fds=(fd,), stdin=subprocess.DEVNULL)
    theirs.close()
    return proc, Connection(ours.detach())


def _collect(parts) -> Choice:
    text, finish, tokens = "", "length", 0
    for delta, fin, count in parts:
        text += delta
        tokens = count
        if fin is not None:
            finish = fin
    return Choice(text, finish, tokens)


def _cut_at_stop(text: str, stops: tuple[str, ...]) -> str | None:
    idx = [text.find(s) for s in stops if s and s in text]
    return text[: min(idx)] if idx else None
