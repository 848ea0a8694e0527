"""Chat engines behind `hone serve`, chosen with ``--engine auto | llama.cpp | transformers``.

    llamacpp.py          llama.cpp in its own process: continuous batching, LoRA GGUF adapters per request
    llamacpp_worker.py   that process (llama.cpp's C API; no torch)
    gguf_cache.py        base models and adapters converted to GGUF once, by Honing's export code
    (transformers)       honing.serve.inference.ModelPool: PEFT adapters over the transformers model

Both engines answer the same calls: ``tokenizer(base)``, ``complete(target, prompt_ids, params)``,
``stream(...)``, ``unload(adapter_keys)``. :class:`Engines` routes each request to one of them: with
``auto``, llama.cpp when llama-cpp-python is installed and the base model's family and the adapter export
to GGUF, transformers otherwise (the reason is logged once per model)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from honing.errors import ConfigError
from honing.serve.errors import APIError

log = logging.getLogger("honing.serve")
KINDS = ("auto", "llama.cpp", "transformers")


class EngineChoiceError(ConfigError):
    """``--engine llama.cpp`` without llama-cpp-python, or an unknown engine name."""


class Engines:
    def __init__(self, kind: str, cache_dir: Path, adapter_cache: int = 4, *, quant: str = "f16",
                 n_ctx: int = 8192, n_seq: int = 16, threads: int | None = None):
        from honing.serve.engines.llamacpp import LlamaCppEngine, available
        from honing.serve.inference import ModelPool

        if kind not in KINDS:
            raise EngineChoiceError(f"engine: '{kind}' is not one of {', '.join(KINDS)}")
        missing = available() if kind != "transformers" else "not asked for"
        if kind == "llama.cpp" and missing:
            raise EngineChoiceError(f"engine: llama.cpp was asked for, but {missing}")
        self.kind, self.why_not_llama = kind, missing
        self.transformers = ModelPool(adapter_cache)
        self.llama = None if missing else LlamaCppEngine(cache_dir, adapter_cache, quant, n_ctx, n_seq, threads)
        self._reasons: dict[tuple, str | None] = {}  # (base, adapter key) -> why not llama.cpp (None: it can)
        self._lock = threading.Lock()

    def summary(self) -> str:
        """One line for the server's start: what serves chat, and why."""
        if self.llama is None:
            why = "" if self.kind == "transformers" else f" ({self.why_not_llama})"
            return f"transformers{why}"
        d = self.llama.describe()
        tail = "; transformers for families or adapters llama.cpp cannot load" if self.kind == "auto" else ""
        return (f"llama.cpp (llama-cpp-python, own process, {d['gguf_quant']} GGUF, {d['n_seq']} sequences, "
                f"{d['n_ctx']}-token KV cache, {d['threads']} threads){tail}")

    # -- routing ------------------------------------------------------------------------------
    def _why_not(self, base: str, adapter_dir: Path | None, key: str | None) -> str | None:
        from honing.errors import HoningError
        from honing.serve.engines.gguf_cache import check_lora, exports_to_gguf

        with self._lock:
            if (base, key) not in self._reasons:
                try:
                    reason = exports_to_gguf(base)
                    if reason is None and adapter_dir is not None and (adapter_dir / "adapter_config.json").is_file():
                        check_lora(adapter_dir)
                except HoningError as e:
                    reason = str(e)
                if reason is not None and self.kind == "auto":
                    log.warning("chat with %s%s runs on transformers: %s", base, f" ({key})" if key else "", reason)
                self._reasons[(base, key)] = reason
            return self._reasons[(base, key)]

    def engine_for(self, t, prepare: bool = True):
        """The engine that answers ``t`` (a Target). ``prepare``: convert its files for llama.cpp now, so
        that with ``auto`` a failed conversion still chooses transformers (logged)."""
        from honing.serve.engines.llamacpp import ConversionFailed

        if self.llama is None:
            return self.transformers
        reason = self._why_not(t.base, t.adapter_dir, t.adapter_key)
        if reason is None:
            if not prepare:
                return self.llama
            try:
                self.llama.prepare(t)
                return self.llama
            except ConversionFailed as e:
                if self.kind != "auto":
                    raise
                log.warning("chat with %s runs on transformers: %s", t.base, e.message)
                with self._lock:
                    reason = self._reasons[(t.base, t.adapter_key)] = e.message
        if self.kind == "llama.cpp":
            raise APIError(400, f"model: llama.cpp cannot serve this model ({reason}); start hone serve with "
                                "--engine auto or transformers", param="model", code="engine_unsupported_model")
        return self.transformers

    def name_for(self, t) -> str:
        """Which engine answers chat with ``t`` (for /v1/models; nothing is converted to find out)."""
        try:
            return self.engine_for(t, prepare=False).name
        except APIError:
            return "none"

    # -- the engine calls ---------------------------------------------------------------------
    def tokenizer(self, base: str):
        from honing.serve.inference import Target

        return self.engine_for(Target(base)).tokenizer(base)

    def complete(self, t, prompt_ids, p):
        return self.engine_for(t).complete(t, prompt_ids, p)

    def stream(self, t, prompt_ids, p):
        return self.engine_for(t).stream(t, prompt_ids, p)

    def loaded_adapters(self, base: str) -> list[str]:
        from honing.serve.inference import Target

        return self.engine_for(Target(base)).loaded_adapters(base)

    def unload(self, adapter_keys: list[str]) -> None:
        self.transformers.unload(adapter_keys)
        if self.llama is not None:
            self.llama.unload(adapter_keys)

    def close(self) -> None:
        if self.llama is not None:
            self.llama.close()
