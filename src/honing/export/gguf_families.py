"""What each model family adds to a GGUF beyond the common Llama-style keys: RoPE scaling, sliding-window
attention, logit soft-capping, Gemma's norm offset and Phi-3's partial rotary dimensions.

Every rule mirrors llama.cpp's own converter (``convert_hf_to_gguf.py`` and its ``conversion/`` modules,
as vendored by llama-cpp-python 0.3.36) and what its graph then reads (``src/models/<arch>.cpp``):

* RoPE scaling ``llama3`` (Llama 3.1-3.3): llama.cpp's Llama graph divides each rotary frequency by
  the matching entry of a ``rope_freqs.weight`` tensor. The factors written here are the model's own:
  the unscaled inverse frequencies over the ones transformers computed for this config
  (``rotary_emb.inv_freq``), so llama.cpp rotates exactly as training did.
* ``linear``: ``rope.scaling.type = linear`` + ``rope.scaling.factor`` (positions divided by it).
* ``yarn``: type, factor, the original context length and the optional YaRN keys, as the converter
  writes them.
* Gemma 2/3: RMSNorm computes ``x * (1 + w)`` in transformers, ``x * w`` in llama.cpp, so every norm
  weight is written plus one; soft-capping values, the sliding window and the per-layer pattern of
  sliding versus global layers (``attention.sliding_window_pattern`` as one bool per layer) are written;
  Gemma 3's local layers use their own RoPE base (``rope.freq_base_swa``).
* Phi-3: the rotary dimension count (``partial_rotary_factor``), the original context length and the
  sliding window.

Anything llama.cpp would compute differently from transformers is refused before writing
(``check_exportable``), naming the setting.
"""

from __future__ import annotations

from honing.errors import ModelError

# RoPE types llama.cpp reproduces; each family's graph reads rope_freqs only for the Llama architecture.
ROPE_TYPES = ("default", "linear", "yarn", "llama3")


def rope_parameters(config) -> dict:
    """The global layers' RoPE parameters (transformers 5 ``rope_parameters``; Gemma 3 nests them per
    layer type), with the older ``rope_scaling``/``rope_theta`` attributes as a fallback."""
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    if "full_attention" in params:
        params = dict(params["full_attention"])
    params.setdefault("rope_type", params.pop("type", "default") or "default")
    if params.get("rope_theta") is None and getattr(config, "rope_theta", None) is not None:
        params["rope_theta"] = config.rope_theta
    return params


def _local_rope_theta(config) -> float | None:
    params = getattr(config, "rope_parameters", None) or {}
    local = params.get("sliding_attention") if isinstance(params, dict) else None
    return float(local["rope_theta"]) if local and local.get("rope_theta") is not None else None


def check_exportable(config, gguf_arch: str) -> None:
    """A ModelError naming the setting, for what llama.cpp would run differently from transformers."""
    params = rope_parameters(config)
    rope_type = params["rope_type"]
    if params.get("rope_theta") is None:
        raise ModelError(f"GGUF export: the {config.model_type} config has no rope_theta")
    if rope_type not in ROPE_TYPES or (rope_type == "llama3" and gguf_arch != "llama"):
        raise ModelError(
            f"GGUF export: RoPE scaling '{rope_type}' of this {config.model_type} model is not supported "
            f"(supported: {', '.join(ROPE_TYPES)}; llama3 for the Llama architecture only); "
            "export with format 'hf' or 'peft'")
    if rope_type in ("linear", "yarn") and params.get("factor") is None:
        raise ModelError(f"GGUF export: RoPE scaling '{rope_type}' without a factor in the {config.model_type} config")
    if gguf_arch in ("gemma2", "gemma3"):
        _check_gemma_attention_scale(config)
        _check_gemma_softcapping(config, gguf_arch)


def _check_gemma_softcapping(config, gguf_arch: str) -> None:
    """llama.cpp's Gemma 2 graph always soft-caps attention logits (at 50 when the file has no value);
    its Gemma 3 graph never does."""
    cap = getattr(config, "attn_logit_softcapping", None)
    if gguf_arch == "gemma2" and not cap:
        raise ModelError("GGUF export: this gemma2 model has no attn_logit_softcapping, but llama.cpp's Gemma 2 "
                         "graph always soft-caps attention logits; the GGUF would not compute the same outputs")
    if gguf_arch == "gemma3" and cap:
        raise ModelError(f"GGUF export: this Gemma 3 model soft-caps attention logits (attn_logit_softcapping="
                         f"{cap}), which llama.cpp's Gemma 3 graph does not do")


def _check_gemma_attention_scale(config) -> None:
    """llama.cpp scales Gemma's queries by 1/sqrt(head_dim) (1/sqrt(hidden/heads) for the 27B models, which
    it recognises by layer count); transformers by query_pre_attn_scalar**-0.5."""
    scalar = getattr(config, "query_pre_attn_scalar", None)
    big = {"gemma2": 46, "gemma3_text": 62}.get(config.model_type) == config.num_hidden_layers
    want = config.hidden_size // config.num_attention_heads if big else config.head_dim
    if scalar is not None and int(scalar) != int(want):
        raise ModelError(
            f"GGUF export: this {config.model_type} model scales attention by query_pre_attn_scalar={scalar}, "
            f"llama.cpp by {want} for a model of {config.num_hidden_layers} layers; the GGUF would not "
            "compute the same outputs")


def add_rope(writer, config, gguf_arch: str) -> None:
    """The RoPE base and scaling keys (the llama3 factors are a tensor: ``extra_tensors``)."""
    import gguf

    params = rope_parameters(config)
    writer.add_rope_freq_base(float(params["rope_theta"]))
    rope_type = params["rope_type"]
    if rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(params["factor"]))
    elif rope_type == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(params["factor"]))
        original = params.get("original_max_position_embeddings") or config.max_position_embeddings
        writer.add_rope_scaling_orig_ctx_len(int(original))
        for key, add in (("extrapolation_factor", writer.add_rope_scaling_yarn_ext_factor),
                         ("attention_factor", writer.add_rope_scaling_yarn_attn_factor),
                         ("beta_fast", writer.add_rope_scaling_yarn_beta_fast),
                         ("beta_slow", writer.add_rope_scaling_yarn_beta_slow)):
            if params.get(key) is not None:
                add(float(params[key]))
    if (local := _local_rope_theta(config)) is not None:
        writer.add_rope_freq_base_swa(local)


def rope_dimension_count(config, head_dim: int) -> int:
    factor = rope_parameters(config).get("partial_rotary_factor") or getattr(config, "partial_rotary_factor", None)
    return int(head_dim * float(factor)) if factor else head_dim


def _sliding_pattern(config) -> list[bool] | None:
    types = getattr(config, "layer_types", None)
    return [t == "sliding_attention" for t in types] if types else None


def add_family_keys(writer, config, gguf_arch: str) -> None:
    """Soft-capping, sliding windows and Phi-3's original context length."""
    if gguf_arch in ("gemma2", "gemma3"):
        if getattr(config, "attn_logit_softcapping", None):
            writer.add_attn_logit_softcapping(float(config.attn_logit_softcapping))
        if getattr(config, "final_logit_softcapping", None):
            writer.add_final_logit_softcapping(float(config.final_logit_softcapping))
        pattern = _sliding_pattern(config)
        if config.sliding_window and (pattern is None or any(pattern)):
            writer.add_sliding_window(int(config.sliding_window))
            if pattern is not None:
                writer.add_sliding_window_pattern(pattern)
    elif gguf_arch == "phi3":
        original = rope_parameters(config).get("original_max_position_embeddings") or \
            getattr(config, "original_max_position_embeddings", None) or config.max_position_embeddings
        writer.add_rope_scaling_orig_ctx_len(int(original))
        writer.add_sliding_window(int(getattr(config, "sliding_window", None) or 0))


def norm_offset(gguf_arch: str, hf_name: str) -> float:
    """What to add to a tensor's values: Gemma's norms store ``w`` for ``x * (1 + w)``."""
    return 1.0 if gguf_arch in ("gemma2", "gemma3") and hf_name.endswith("norm.weight") else 0.0


def extra_tensors(model, gguf_arch: str):
    """(llama.cpp name, float32 numpy) tensors that no transformers parameter holds: ``rope_freqs``."""
    import torch

    config = model.config
    if rope_parameters(config)["rope_type"] != "llama3":
        return
    rotary = model.get_decoder().rotary_emb
    inv_freq = rotary.inv_freq.detach().to(torch.float64).cpu()
    dim = inv_freq.numel() * 2
    theta = float(rope_parameters(config)["rope_theta"])
    unscaled = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    yield "rope_freqs.weight", (unscaled / inv_freq).to(torch.float32).numpy()
