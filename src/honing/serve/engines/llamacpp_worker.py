"""The llama.cpp engine's own process: continuous batching over llama.cpp's C API (llama-cpp-python's
ctypes bindings, not its one-sequence-at-a-time ``Llama`` class).

One llama.cpp context per base model holds up to ``n_seq`` sequences in a unified KV cache. Every step
builds one batch: the next token of each running sequence of one adapter group (a base model with one
LoRA, or none), plus prompt chunks of newly admitted sequences of that group, then decodes it once and
samples each sequence with its own sampler chain (greedy, or temperature / top-p / seeded draw). A request
joins at the next step and leaves the moment it ends: no one waits for a batch to drain.

LoRA adapters are set per context (llama.cpp applies one adapter set to a whole decode), so groups take
turns step by step; a sequence's KV cache is always computed with its own adapter. Loaded adapters are
kept least-recently-used up to ``adapter_cache`` per base model (never evicting one in use).

Prompt prefixes are computed once per adapter (chat prompts share their system prompt and template): a new
sequence takes the KV cells of the longest prefix of its prompt that another sequence of the same base and
adapter holds, running (``llama_memory_seq_cp`` adds the sequence to those cells: nothing is copied) or
ended (an ended sequence's id keeps its prompt's cells until the id or the room is needed). A sequence
whose prompt shares a longer prefix with one still being read waits a step for it. This is what
llama-cpp-python's ``Llama`` does for one sequence (it keeps the last prompt), and on the benchmark's chat
prompts (64 of ~86 tokens shared) it is most of the difference between the two. Not for models with a
sliding attention window (their cache drops old positions) or recurrent state.

The parent (``llamacpp.py``) sends ``("submit", [dict, ...])`` (a request's choices together), ``("cancel", rid)``, ``("unload", [keys])``,
``("state", rid)`` and ``("exit",)``; this process answers ``("ready", info)`` once, then
``("tokens", [(rid, token, finish or None), ...])`` per step, ``("error", rid, message)`` and
``("state", rid, {base: [adapter keys]})``. It exits when the pipe closes (the server went away).

This module imports neither torch nor transformers: it starts in about a second."""

from __future__ import annotations

import ctypes
import random
from collections import OrderedDict, deque
from dataclasses import dataclass, field

# Decoding steps an adapter group runs before the next group's turn.
QUANTUM = 4


@dataclass
class Request:
    rid: int
    base: str  # the base model's GGUF path
    adapter_key: str | None
    adapter_path: str | None  # the adapter's LoRA GGUF path
    prompt: list[int]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop_ids: tuple[int, ...] = ()


@dataclass
class _Seq:
    req: Request
    seq_id: int
    sampler: object
    fed: int = 0  # tokens of this sequence in the KV cache
    next_token: int | None = None  # sampled, not yet decoded
    generated: int = 0


@dataclass
class _Base:
    model: object
    ctx: object
    mem: object
    batch: object
    free_ids: list[int]
    share: bool  # prompt prefixes may be shared (see the module's docstring)
    kept: OrderedDict = field(default_factory=OrderedDict)  # free seq id -> (adapter key, prompt prefix in its cells)
    adapters: OrderedDict = field(default_factory=OrderedDict)  # adapter key -> llama_adapter_lora pointer
    active: object = ()  # the adapter key set on the context now (() = not set yet)
    seqs: list[_Seq] = field(default_factory=list)
    reserved: int = 0  # KV cells promised to admitted sequences (prompt + max_tokens each)


class Worker:
    def __init__(self, conn, cfg: dict):
        import llama_cpp as L

        self.L, self.conn, self.cfg = L, conn, cfg
        self.bases: dict[str, _Base] = {}
        self.waiting: deque[Request] = deque()
        self.turn, self.stay, self.current = 0, 0, None
        self.out: list[tuple] = []

    # -- messages -----------------------------------------------------------------------------
    def handle(self, msg) -> bool:
        kind = msg[0]
        if kind == "submit":
            self.waiting.extend(Request(**r) for r in msg[1])
        elif kind == "cancel":
            self._cancel(msg[1])
        elif kind == "unload":
            self._unload(set(msg[1]))
        elif kind == "state":
            self.conn.send(("state", msg[1], {b: list(x.adapters) for b, x in self.bases.items()}))
        elif kind == "exit":
            return False
        return True

    def busy(self) -> bool:
        return bool(self.waiting) or any(b.seqs for b in self.bases.values())

    def _cancel(self, rid: int) -> None:
        self.waiting = deque(r for r in self.waiting if r.rid != rid)
        for base in self.bases.values():
            for s in [s for s in base.seqs if s.req.rid == rid]:
                self._release(base, s, keep=False)

    def _unload(self, keys: set) -> None:
        for base in self.bases.values():
            in_use = {s.req.adapter_key for s in base.seqs}
            for key in [k for k in base.adapters if k in keys and k not in in_use]:
                self._free_adapter(base, key)

    def _fail(self, rid: int, message: str) -> None:
        self.conn.send(("error", rid, message))

    # -- models, contexts, adapters -----------------------------------------------------------
    def _base(self, path: str) -> _Base:
        if path in self.bases:
            return self.bases[path]
        L, cfg = self.L, self.cfg
        mp = L.llama_model_default_params()
        model = L.llama_model_load_from_file(path.encode(), mp)
        if not model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        cp = L.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch = cfg["n_ctx"], cfg["n_batch"], cfg["n_batch"]
        cp.n_seq_max, cp.kv_unified, cp.no_perf = cfg["n_seq"], True, True
        cp.n_threads = cp.n_threads_batch = cfg["n_threads"]
        ctx = L.llama_init_from_model(model, cp)
        if not ctx:
            L.llama_model_free(model)
            raise RuntimeError(f"llama.cpp could not create a context for {path} (n_ctx {cfg['n_ctx']})")
        batch = L.llama_batch_init(cfg["n_batch"] + cfg["n_seq"], 0, 1)
        share = cfg.get("share_prefixes", True) and L.llama_model_n_swa(model) == 0 and not (
            L.llama_model_is_recurrent(model) or L.llama_model_is_hybrid(model))
        self.bases[path] = _Base(model, ctx, L.llama_get_memory(ctx), batch, list(range(cfg["n_seq"])), share)
        return self.bases[path]

    def _adapter(self, base: _Base, r: Request) -> None:
        """Load ``r``'s adapter on ``base`` if needed; evict the least recently used ones not in use."""
        if r.adapter_key is None:
            return
        if r.adapter_key in base.adapters:
            base.adapters.move_to_end(r.adapter_key)
            return
        ptr = self.L.llama_adapter_lora_init(base.model, r.adapter_path.encode())
        if not ptr:
            raise RuntimeError(f"llama.cpp could not load the LoRA adapter {r.adapter_path}")
        base.adapters[r.adapter_key] = ptr
        in_use = {s.req.adapter_key for s in base.seqs} | {r.adapter_key}
        for key in [k for k in base.adapters if k not in in_use][: max(0, len(base.adapters) - self.cfg["adapter_cache"])]:
            self._free_adapter(base, key)

    def _free_adapter(self, base: _Base, key: str) -> None:
        for seq_id in [i for i, (k, _) in base.kept.items() if k == key]:  # cells computed with this adapter
            self._drop_kept(base, seq_id)
        if base.active == key:  # never leave a freed adapter set on the context
            self.L.llama_set_adapters_lora(base.ctx, None, 0, None)
            base.active = None
        self.L.llama_adapter_lora_free(base.adapters.pop(key))

    def _set_adapter(self, base: _Base, key: str | None) -> None:
        L = self.L
        if base.active == key:
            return
        if key is None:
            L.llama_set_adapters_lora(base.ctx, None, 0, None)
        else:
            ptrs = (L.llama_adapter_lora_p_ctypes * 1)(base.adapters[key])
            L.llama_set_adapters_lora(base.ctx, ptrs, 1, (ctypes.c_float * 1)(1.0))
        base.active = key

    def _sampler(self, r: Request):
        L = self.L
        chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        if r.temperature <= 0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_greedy())
            return chain
        # transformers' order (what the other engine does): temperature, then top-p, then the draw
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_temp(r.temperature))
        if r.top_p < 1:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_p(r.top_p, 1))
        seed = r.seed if r.seed is not None else random.getrandbits(32) % 0xFFFFFFFF
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        return chain

    # -- admission and release ----------------------------------------------------------------
    def admit(self) -> None:
        """Waiting requests in arrival order, while each has a free sequence and room in the KV cache
        (the parent keeps every request within n_ctx, so the head always fits once others end)."""
        while self.waiting:
            r = self.waiting[0]
            try:
                base = self._base(r.base)
            except RuntimeError as e:
                self.waiting.popleft()
                self._fail(r.rid, str(e))
                continue
            need = len(r.prompt) + r.max_tokens
            if not base.free_ids or base.reserved + need > self.cfg["n_ctx"]:
                return
            self.waiting.popleft()
            try:
                self._adapter(base, r)
            except RuntimeError as e:
                self._fail(r.rid, str(e))
                continue
            seq_id, fed = self._take_id(base, r)
            base.reserved += need
            while base.kept and base.reserved + sum(len(p) for _, p in base.kept.values()) > self.cfg["n_ctx"]:
                self._drop_kept(base, next(iter(base.kept)))  # room for the promised cells: oldest first
            base.seqs.append(_Seq(r, seq_id, self._sampler(r), fed=fed))

    def _take_id(self, base: _Base, r: Request) -> tuple[int, int]:
        """A free sequence id for ``r`` and how many of its prompt tokens that id's cells already hold: the
        ended sequence of the same adapter with the longest shared prefix, else an id holding nothing, else
        the one kept longest."""
        best, best_n = None, 0
        for seq_id, (key, prefix) in base.kept.items():
            n = _shared(prefix, r.prompt) if key == r.adapter_key else 0
            if n > best_n:
                best, best_n = seq_id, n
        if best is None:
            empty = [i for i in base.free_ids if i not in base.kept]
            best = empty[0] if empty else next(iter(base.kept))
        base.free_ids.remove(best)
        if best in base.kept:
            del base.kept[best]
            self.L.llama_memory_seq_rm(base.mem, best, best_n, -1)  # keep [0, best_n)
        return best, best_n

    def _drop_kept(self, base: _Base, seq_id: int) -> None:
        del base.kept[seq_id]
        self.L.llama_memory_seq_rm(base.mem, seq_id, -1, -1)

    def _release(self, base: _Base, s: _Seq, keep: bool = True) -> None:
        """End ``s``: its id is free again; with ``keep`` (an answer that ended well) its id keeps the
        cells of its prompt for a later request with the same prefix."""
        L = self.L
        kept = min(s.fed, len(s.req.prompt)) if keep and base.share else 0
        if kept and L.llama_memory_seq_rm(base.mem, s.seq_id, kept, -1):
            base.kept[s.seq_id] = (s.req.adapter_key, s.req.prompt[:kept])
        else:
            L.llama_memory_seq_rm(base.mem, s.seq_id, -1, -1)
        L.llama_sampler_free(s.sampler)
        base.free_ids.append(s.seq_id)
        base.reserved -= len(s.req.prompt) + s.req.max_tokens
        base.seqs.remove(s)
        if not base.seqs and not base.kept:  # idle: the next requests get the same cache cells as after any other idle time
            L.llama_memory_clear(base.mem, False)

    # -- one decoding step --------------------------------------------------------------------
    def _groups(self) -> list[tuple[_Base, str | None]]:
        seen: dict = {}
        for base in self.bases.values():
            for s in base.seqs:
                seen.setdefault((id(base), s.req.adapter_key), (base, s.req.adapter_key))
        return list(seen.values())

    def step(self) -> None:
        groups = self._groups()
        if not groups:
            return
        # A group keeps the context for QUANTUM steps: changing the adapter set makes llama.cpp rebuild its
        # compute graph on the next decode (+36% CPU for that step, measured on SmolLM2 with one thread).
        self.stay += 1
        if self.stay >= QUANTUM or self.current not in groups:
            self.stay = 0
            self.turn = (self.turn + 1) % len(groups)
            self.current = groups[self.turn]
        base, key = self.current
        seqs = [s for s in base.seqs if s.req.adapter_key == key]
        self._set_adapter(base, key)
        outputs = self._fill(base, seqs)
        rc = self.L.llama_decode(base.ctx, base.batch)
        if rc != 0:
            for s in seqs:
                self._fail(s.req.rid, f"llama_decode failed ({rc})")
                self._release(base, s, keep=False)
            return
        for s, idx in outputs:
            self._sampled(base, s, self.L.llama_sampler_sample(s.sampler, base.ctx, idx))

    def _fill(self, base: _Base, seqs: list[_Seq]) -> list[tuple[_Seq, int]]:
        """The batch: each decoding sequence's next token, then prompt chunks within n_batch; returns the
        sequences whose logits this step yields, with their batch index."""
        b, n, outputs = base.batch, 0, []
        # prompt tokens in the cache before this step (put() counts those of this batch, not decoded yet)
        cached = {s.seq_id: min(s.fed, len(s.req.prompt)) for s in seqs}

        def put(token: int, s: _Seq, logits: bool) -> None:
            nonlocal n
            b.token[n], b.pos[n], b.n_seq_id[n], b.logits[n] = token, s.fed, 1, logits
            b.seq_id[n][0] = s.seq_id
            s.fed += 1
            if logits:
                outputs.append((s, n))
            n += 1

        for s in seqs:
            if s.next_token is not None:
                put(s.next_token, s, True)
                s.next_token = None
        budget = self.cfg["n_batch"]
        for i, s in enumerate(seqs):
            prompt = s.req.prompt
            if s.fed < len(prompt) and base.share and self._share_prefix(base, s, seqs[:i], seqs, cached):
                continue  # waits for a sequence still reading the same prefix
            while s.fed < len(prompt) and budget > 0:
                put(prompt[s.fed], s, s.fed == len(prompt) - 1)
                budget -= 1
        b.n_tokens = n
        return outputs

    def _share_prefix(self, base: _Base, s: _Seq, before: list[_Seq], group: list[_Seq], cached: dict) -> bool:
        """Give ``s`` the cells of the longest prefix of its prompt that a sequence of its group holds
        (``cached``: seq id -> prompt tokens in its cells); True when ``s`` should rather wait for a
        sequence ahead of it that is still reading a longer one."""
        best, best_n = None, s.fed
        for d in group:
            if d is not s:
                n = _shared(d.req.prompt[: cached[d.seq_id]], s.req.prompt)
                if n > best_n:
                    best, best_n = d, n
        if best is not None:
            self.L.llama_memory_seq_cp(base.mem, best.seq_id, s.seq_id, s.fed, best_n)
            s.fed = best_n
        return any(cached[e.seq_id] < len(e.req.prompt) and _shared(e.req.prompt, s.req.prompt) > s.fed
                   for e in before)

    def _sampled(self, base: _Base, s: _Seq, token: int) -> None:
        s.generated += 1
        finish = "stop" if token in s.req.stop_ids else "length" if s.generated >= s.req.max_tokens else None
        self.out.append((s.req.rid, int(token), finish))
        if finish is None:
            s.next_token = token
        else:
            self._release(base, s)

    def flush(self) -> None:
        if self.out:
            self.conn.send(("tokens", self.out))
            self.out = []

    def close(self) -> None:
        L = self.L
        for base in self.bases.values():
            L.llama_batch_free(base.batch)
            L.llama_free(base.ctx)
            L.llama_model_free(base.model)  # frees its adapters too


def _shared(prefix: list[int], prompt: list[int]) -> int:
    """How many first tokens of ``prompt`` equal ``prefix``'s, leaving its last token to be decoded (its
    logits give the first answer token)."""
    n, most = 0, min(len(prefix), len(prompt) - 1)
    while n < most and prefix[n] == prompt[n]:
        n += 1
    return n


def _quiet_llama_cpp(L) -> None:
    # llama.cpp logs every load to stderr; the server's log keeps only its errors.
    import llama_cpp._logger as logger

    logger.set_verbose(False)


def main(conn, cfg: dict) -> None:
    import llama_cpp as L

    _quiet_llama_cpp(L)
    L.llama_backend_init()
    worker = Worker(conn, cfg)
    conn.send(("ready", {"llama_cpp_python": L.__version__}))
    try:
        while True:
            if not worker.busy() and not conn.poll(None):
                continue
            while conn.poll(0):
                if not worker.handle(conn.recv()):
                    return
            worker.admit()
            worker.step()
            worker.flush()
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return  # the server went away
    finally:
        worker.close()


if __name__ == "__main__":  # python -m honing.serve.engines.llamacpp_worker FD CONFIG_JSON (llamacpp.py)
    import json
    import sys
    from multiprocessing.connection import Connection

    main(Connection(int(sys.argv[1])), json.loads(sys.argv[2]))
