"""Models: the catalog (embedded default, cached conversions, local paths, GGUF files) and loading."""

from honing.models.catalog import (
    DEFAULT_MODEL,
    ResolvedModel,
    cache_root,
    list_models,
    resolve_model,
)
from honing.models.loading import load_model, load_tokenizer

__all__ = [
    "DEFAULT_MODEL",
    "ResolvedModel",
    "cache_root",
    "list_models",
    "load_model",
    "load_tokenizer",
    "resolve_model",
]
