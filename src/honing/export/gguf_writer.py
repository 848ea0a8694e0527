"""Writing GGUF files with the ``gguf`` package's ``GGUFWriter``: a whole model (merged weights) or a
LoRA adapter for llama.cpp to apply at load time.

A model file holds the architecture's hyperparameters (``llama.*`` / ``qwen2.*`` keys), the tokenizer
(``tokenizer_meta``) and every tensor under its llama.cpp name (``gguf_names``). Precision (``quant``):

* ``f32``: every tensor as trained (the merge happens in fp32, so this is the reference file);
* ``f16``: matrices in float16, norms and biases in float32 (llama.cpp keeps those f32 anyway);
* ``q8_0``: matrices whose rows split into 32-value blocks as Q8_0 (one f16 scale + 32 int8 per
  block, ``gguf.quants.quantize``), the others f16; norms and biases f32.

The caller passes the path to write (a temporary sibling from ``honing.fileio.atomic_path``), so a
failure never leaves half a file under the final name.
"""

from __future__ import annotations

import math
from pathlib import Path

from honing.errors import ModelError
from honing.export import gguf_families
from honing.export.gguf_names import ArchSpec, TensorNames, arch_spec, permute_for_rope, qk_heads

QUANTS = ("f32", "f16", "q8_0")


def _file_type(quant: str):
    import gguf

    return {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
            "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quant]


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def add_hyperparameters(writer, config, quant: str | None) -> None:
    """The ``<arch>.*`` keys llama.cpp reads to build the graph (a family's own: ``gguf_families``)."""
    n_head = config.num_attention_heads
    gguf_arch = arch_spec(config).gguf_arch
    gguf_families.check_exportable(config, gguf_arch)
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(int(n_head))
    writer.add_head_count_kv(int(getattr(config, "num_key_value_heads", None) or n_head))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    gguf_families.add_rope(writer, config, gguf_arch)
    writer.add_rope_dimension_count(gguf_families.rope_dimension_count(config, head_dim(config)))
    gguf_families.add_family_keys(writer, config, gguf_arch)
    if head_dim(config) != config.hidden_size // n_head:
        writer.add_key_length(head_dim(config))
        writer.add_value_length(head_dim(config))
    writer.add_vocab_size(int(config.vocab_size))
    if quant is not None:
        writer.add_file_type(_file_type(quant))
        if quant == "q8_0":
            import gguf

            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _encode(array, quant: str):
    """(data, raw ggml type or None) for one float32 tensor at the requested precision."""
    import gguf
    import numpy as np

    if array.ndim < 2 or quant == "f32":
        return np.ascontiguousarray(array, dtype=np.float32), None
    if quant == "q8_0" and array.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
        return gguf.quants.quantize(np.ascontiguousarray(array, dtype=np.float32), gguf.GGMLQuantizationType.Q8_0), \
            gguf.GGMLQuantizationType.Q8_0
    return np.ascontiguousarray(array, dtype=np.float16), None


def model_tensors(model, spec: ArchSpec):
    """(llama.cpp name, float32 numpy array in llama.cpp layout) for every tensor of ``model``."""
    import torch

    config = model.config
    names = TensorNames(spec, config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reuses token_embd when the file has no output.weight
        name = names.gguf_name(hf_name)
        if name is None:
            continue
        data = tensor.detach().to(torch.float32).cpu()
        heads = qk_heads(spec, config, hf_name)
        if heads is not None:
            data = permute_for_rope(data, heads)
        if offset := gguf_families.norm_offset(spec.gguf_arch, hf_name):
            data = data + offset
        yield name, data.numpy()
    yield from gguf_families.extra_tensors(model, spec.gguf_arch)


def _write(writer, path: Path) -> None:
    writer.write_header_to_file(path=Path(path))
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_model_gguf(path, model, tokenizer_meta, quant: str, name: str) -> None:
    """The whole model (already merged, fp32) as one GGUF file at ``path``."""
    import gguf

    if quant not in QUANTS:
        raise ModelError(f"GGUF quant '{quant}' is not supported; choose one of {', '.join(QUANTS)}")
    spec = arch_spec(model.config)
    writer = gguf.GGUFWriter(None, spec.gguf_arch)
    try:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name)
        add_hyperparameters(writer, model.config, quant)
        tokenizer_meta.add_to(writer)
        for tensor_name, array in model_tensors(model, spec):
            data, raw = _encode(array, quant)
            writer.add_tensor(tensor_name, data, raw_dtype=raw)
        _write(writer, path)
    finally:
        writer.close()


# -- LoRA adapters ---------------------------------------------------------------------------------
def _lora_alpha(adapter_config: dict) -> float:
    """``adapter.lora.alpha``: llama.cpp scales by alpha / r, so rank-stabilized LoRA (alpha / sqrt(r))
    is written as alpha * sqrt(r)."""
    if adapter_config.get("rank_pattern") or adapter_config.get("alpha_pattern"):
        raise ModelError("GGUF LoRA export: per-module ranks or alphas (rank_pattern/alpha_pattern) cannot be "
                         "expressed in one adapter.lora.alpha; export the merged model (format 'gguf')")
    alpha = float(adapter_config["lora_alpha"])
    if adapter_config.get("use_rslora"):
        alpha *= math.sqrt(int(adapter_config["r"]))
    return alpha


def check_lora_exportable(adapter_config: dict) -> None:
    """What llama.cpp's LoRA loader cannot apply is refused with the way out."""
    if adapter_config.get("peft_type", "LORA") != "LORA":
        raise ModelError(f"GGUF LoRA export: adapter type {adapter_config.get('peft_type')} is not LoRA")
    for key, what in (("use_dora", "DoRA (weight-decomposed LoRA)"), ("modules_to_save", "fully trained modules"),
                      ("lora_bias", "LoRA biases"), ("trainable_token_indices", "trainable token rows")):
        if adapter_config.get(key):
            raise ModelError(f"GGUF LoRA export: llama.cpp cannot apply {what} (adapter_config {key}); "
                             "export the merged model instead (format 'gguf' or 'ollama')")


def lora_tensors(adapter_weights: dict, config, spec: ArchSpec):
    """(llama.cpp name + .lora_a / .lora_b, float32 numpy) for a PEFT adapter's weights, A before B."""
    import torch

    names = TensorNames(spec, config.num_hidden_layers)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in adapter_weights.items():
        module, sep, rest = key.partition(".lora_")
        if not sep or rest not in ("A.weight", "B.weight"):
            raise ModelError(f"GGUF LoRA export: adapter tensor '{key}' is not a LoRA A/B matrix of a linear layer")
        hf_name = module.removeprefix("base_model.model.") + ".weight"
        pairs.setdefault(hf_name, {})[rest[0]] = tensor
    for hf_name in sorted(pairs, key=_layer_order):
        ab = pairs[hf_name]
        if set(ab) != {"A", "B"}:
            raise ModelError(f"GGUF LoRA export: '{hf_name}' has lora_{''.join(ab)} without its pair")
        name = names.gguf_name(hf_name)
        a = ab["A"].detach().to(torch.float32)
        b = ab["B"].detach().to(torch.float32)
        heads = qk_heads(spec, config, hf_name)
        if heads is not None:
            b = permute_for_rope(b, heads)  # B's rows are q/k rows; A's inputs are untouched
        base = name.removesuffix(".weight")
        yield f"{base}.weight.lora_a", a.contiguous().numpy()
        yield f"{base}.weight.lora_b", b.contiguous().numpy()


def _layer_order(hf_name: str):
    parts = hf_name.split(".")
    return [int(p) if p.isdigit() else 0 for p in parts[:4]], hf_name


def write_lora_gguf(path, adapter_dir, config, name: str) -> None:
    """A PEFT adapter (``adapter_config.json`` + ``adapter_model.safetensors``) as a llama.cpp LoRA GGUF."""
    import json

    import gguf
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text())
    check_lora_exportable(adapter_config)
    spec = arch_spec(config)
    weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
    writer = gguf.GGUFWriter(None, spec.gguf_arch)
    try:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_name(name)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, _lora_alpha(adapter_config))
        for tensor_name, array in lora_tensors(weights, config, spec):
            writer.add_tensor(tensor_name, array)  # adapters stay f32: small, and exact against the merge
        _write(writer, path)
    finally:
        writer.close()
