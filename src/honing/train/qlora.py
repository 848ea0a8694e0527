"""QLoRA (``method: qlora``): LoRA adapters over a frozen base stored in 4-bit NF4 with double quantization.

The base's linear layers are loaded through bitsandbytes (``BitsAndBytesConfig(load_in_4bit=True,
bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True)``): each weight is 4 bits plus a per-64-block
scale, itself quantized to 8 bits per 256 blocks (about 4.13 bits per weight). The matmuls dequantize to the
compute dtype (the run's dtype: fp32 or bf16). The adapters stay in fp32 (PEFT's default over any base),
the only weights the optimizer updates.

bitsandbytes >= 0.47 runs 4-bit on x86 CPUs as well as on CUDA (verified with 0.50.2 and torch 2.13 CPU on
an AVX512-BF16 EPYC: quantize, forward and backward through ``Linear4bit``). Where it cannot (not installed,
no backend for this device) ``method: qlora`` stops before training with the reason.

The saved adapter is an ordinary PEFT adapter: it loads with plain PEFT onto the full-precision base.
Merging always folds it into that full-precision base (``honing.export.merge`` loads the base in fp32);
folding it into the 4-bit weights would round the update away, so :func:`refuse_quantized_merge` says so.
"""

from __future__ import annotations

from honing.errors import ConfigError, ModelError


def quantization_config(compute_dtype):
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


def check_supported(device) -> str:
    """The bitsandbytes version when it runs 4-bit NF4 on ``device``; else a ConfigError saying why.
    Probes a real 64x64 quantize + matmul + backward rather than trusting version numbers."""
    try:
        import bitsandbytes as bnb
    except ImportError as e:
        raise ConfigError(f"method: qlora needs bitsandbytes (pip install 'bitsandbytes>=0.47'): {e}") from None
    import torch

    cuda = [torch.device(device).index or 0] if torch.device(device).type == "cuda" else []
    try:
        # fork_rng: the probe's random layer and input must not move the global (seeded) RNG.
        with torch.random.fork_rng(devices=cuda):
            layer = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.float32, compress_statistics=True,
                                      quant_type="nf4")
            layer.weight = bnb.nn.Params4bit(torch.randn(64, 64), requires_grad=False, compress_statistics=True,
                                             quant_type="nf4")
            layer = layer.to(device)
            x = torch.randn(2, 64, device=device, requires_grad=True)
            layer(x).sum().backward()
        if layer.weight.dtype != torch.uint8 or x.grad is None or not torch.isfinite(x.grad).all():
            raise RuntimeError("the probe layer did not quantize or did not pass a finite gradient")
    except Exception as e:  # noqa: BLE001 - any failure means no 4-bit here; say which
        raise ConfigError(f"method: qlora: bitsandbytes {getattr(bnb, '__version__', '?')} cannot run 4-bit NF4 "
                          f"on {device} ({type(e).__name__}: {e}); use method lora, or a machine bitsandbytes "
                          "supports (CUDA, or x86 CPUs with bitsandbytes >= 0.47)") from None
    return bnb.__version__


def load_quantized(reference, runtime):
    """(model, tokenizer, resolved) with every linear layer of the base in 4-bit NF4 (the output head and
    embeddings stay in the load dtype, as in the QLoRA paper)."""
    from transformers import AutoModelForCausalLM

    from honing.models.catalog import resolve_model
    from honing.models.loading import load_tokenizer
    from honing.quiet import quiet_libraries

    quiet_libraries()
    check_supported(runtime.device)
    resolved = reference if hasattr(reference, "identity") else resolve_model(reference)
    compute = runtime.load_dtype
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(resolved.path), quantization_config=quantization_config(compute), dtype=compute,
            device_map={"": runtime.device})
    except (ValueError, OSError) as e:
        raise ModelError(f"cannot load {resolved.path} in 4-bit: {e}") from e
    from honing.models.fast_ops import speed_up_norms
    from honing.models.loading import flat_head_input

    flat_head_input(model)
    speed_up_norms(model)
    keep_trainable_layout(model)
    return model, load_tokenizer(resolved), resolved


def keep_trainable_layout(model) -> None:
    """Stop bitsandbytes (>= 0.48) from repacking 4-bit weights into its CPU inference layout.

    On a CPU with AVX512-BF16, a Linear4bit called in eval mode without gradients (the evaluation before
    training) converts its weight, for good, to a layout whose kernel (``gemv_4bit``) has no backward:
    every later training step then drops the gradient through the frozen base layers (torch only warns)
    and layers with a bias fail outright. Training needs the layout ``matmul_4bit`` differentiates."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def quantized_modules(model) -> list[str]:
    """Names of the 4-bit linear layers in ``model``."""
    import bitsandbytes as bnb

    return [n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]


def refuse_quantized_merge(model) -> None:
    """Raise when ``model`` holds 4-bit layers: an adapter is merged into the full-precision base only."""
    try:
        found = quantized_modules(model)
    except ImportError:
        return
    if found:
        raise ModelError(
            f"not merging into 4-bit weights ({len(found)} layers, e.g. {found[0]}): rounding W + BA back to NF4 "
            "would lose most of the adapter's update. Honing merges a QLoRA adapter into the full-precision base "
            "model instead (merge: true, or hone export), which loads the base in fp32."
        )
