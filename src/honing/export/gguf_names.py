"""Which architectures export to GGUF, the llama.cpp name of every tensor, and the layout changes
llama.cpp expects.

Names come from the ``gguf`` package's own tensor-name map (``gguf.get_tensor_name_map``), so a
transformers name such as ``model.layers.3.self_attn.q_proj.weight`` becomes ``blk.3.attn_q.weight``
exactly as llama.cpp's converter names it. The one value change is the Llama-family Q/K permutation:
transformers stores each attention head's rotary pairs as (first half, second half) of the head; llama.cpp
applies RoPE to interleaved pairs (0,1), (2,3), ... so the rows of q_proj and k_proj (and of a LoRA B
matrix that feeds them) are reordered per head. Qwen2's llama.cpp graph uses the half-split (NEOX) RoPE
that transformers uses, as do Qwen3's, Gemma 2/3's and Phi-3's, so nothing is permuted there.
"""

from __future__ import annotations

from dataclasses import dataclass

from honing.errors import ModelError


@dataclass(frozen=True)
class ArchSpec:
    model_type: str  # transformers config.model_type
    gguf_arch: str  # general.architecture in the GGUF (llama.cpp's name)
    permute_qk: bool  # reorder q/k rows from half-split to interleaved RoPE pairs


# Mistral is the Llama graph to llama.cpp (its converter writes general.architecture = llama).
SUPPORTED: dict[str, ArchSpec] = {
    "llama": ArchSpec("llama", "llama", True),
    "mistral": ArchSpec("mistral", "llama", True),
    "qwen2": ArchSpec("qwen2", "qwen2", False),
    "qwen3": ArchSpec("qwen3", "qwen3", False),
    "gemma2": ArchSpec("gemma2", "gemma2", False),
    "gemma3_text": ArchSpec("gemma3_text", "gemma3", False),  # Gemma3ForCausalLM (the text-only 270M/1B)
    "phi3": ArchSpec("phi3", "phi3", False),
}


def arch_spec(config) -> ArchSpec:
    """The export recipe for a transformers config; any other architecture is a ModelError naming it."""
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED:
        archs = ", ".join(getattr(config, "architectures", None) or []) or "unknown"
        raise ModelError(
            f"GGUF export does not support architecture '{model_type}' ({archs}); supported: "
            f"{', '.join(sorted(SUPPORTED))} (the Llama family: SmolLM2, Llama 3, Mistral; Qwen2/2.5, Qwen3, "
            "Gemma 2, Gemma 3 text models, Phi-3/Phi-4). "
            "Export it with format 'hf' or 'peft' instead."
        )
    return SUPPORTED[model_type]


def _name_map(spec: ArchSpec, n_blocks: int):
    import gguf

    arch = next(a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == spec.gguf_arch)
    return gguf.get_tensor_name_map(arch, n_blocks)


class TensorNames:
    """transformers parameter name -> llama.cpp tensor name, for one model."""

    # Buffers transformers may list that llama.cpp recomputes itself.
    SKIP_SUFFIXES = (".rotary_emb.inv_freq",)

    def __init__(self, spec: ArchSpec, n_blocks: int):
        self.spec = spec
        self._map = _name_map(spec, n_blocks)

    def gguf_name(self, hf_name: str) -> str | None:
        """``None`` for a tensor llama.cpp does not store; a ModelError for one it would not know."""
        if hf_name.endswith(self.SKIP_SUFFIXES):
            return None
        name = self._map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ModelError(
                f"GGUF export: the {self.spec.model_type} tensor '{hf_name}' has no llama.cpp name "
                "(an unusual variant of the architecture?)"
            )
        return name


def permute_for_rope(rows, n_head: int):
    """Half-split RoPE rows -> interleaved pairs, per head (llama.cpp's Llama layout).

    Works on weights ``[n_head * head_dim, in]``, biases ``[n_head * head_dim]`` and LoRA B matrices
    ``[n_head * head_dim, r]``: only the row order changes. Within a head, row ``i`` of the first half and
    row ``i`` of the second half become rows ``2i`` and ``2i + 1``.
    """
    shape = rows.shape
    head_dim = shape[0] // n_head
    return rows.reshape(n_head, 2, head_dim // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def qk_heads(spec: ArchSpec, config, hf_name: str) -> int | None:
    """How many heads to permute over for this tensor, or ``None`` if it keeps its layout."""
    if not spec.permute_qk:
        return None
    if ".self_attn.q_proj." in hf_name or hf_name.endswith(".self_attn.q_proj"):
        return config.num_attention_heads
    if ".self_attn.k_proj." in hf_name or hf_name.endswith(".self_attn.k_proj"):
        return getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return None
