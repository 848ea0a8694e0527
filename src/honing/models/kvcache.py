"""The KV cache's keyword across transformers 5 releases: newer ones name it ``cache`` (and warn about
``past_key_values``), older 5.x releases only know ``past_key_values``. One place decides, so decoding code
neither breaks on the older releases nor prints the deprecation warning on the newer ones."""

from __future__ import annotations

import functools
import inspect


@functools.cache
def _keyword_of(cls: type) -> str:
    params = inspect.signature(cls.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_keyword(model) -> str:
    """``cache`` or ``past_key_values``: what ``model``'s forward (its base model's, under PEFT) calls it."""
    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _keyword_of(type(core))


def output_cache(out):
    """The KV cache a forward returned."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


__all__ = ["cache_keyword", "output_cache"]
