"""Which model family a local model directory is, and what Honing proves for that family.

The family comes from ``config.json``'s ``model_type``; what works is the family matrix of
``tests/test_families.py`` (docs/training.md, "Model families"): every listed family trains with LoRA
(SFT, DPO), QLoRA and full fine-tuning, exports to GGUF (f16, q8_0) and Ollama, and chats through
``hone serve``; ``fused`` says whether its decoder layers take Honing's fused LoRA path.
"""

from __future__ import annotations

import json
from pathlib import Path

# model_type -> (family, fused LoRA path)
FAMILIES: dict[str, tuple[str, bool]] = {
    "llama": ("Llama (Llama 3.x, SmolLM2)", True),
    "mistral": ("Mistral", True),
    "qwen2": ("Qwen2 / Qwen2.5", True),
    "qwen3": ("Qwen3", False),
    "gemma2": ("Gemma 2", False),
    "gemma3_text": ("Gemma 3 (text)", False),
    "phi3": ("Phi-3 / Phi-4-mini", False),
}


def model_type(model_dir: str | Path) -> str | None:
    """``model_type`` from the directory's config.json, or None when it has none (or it is unreadable)."""
    try:
        return json.loads((Path(model_dir) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        return None


def family_support(model_dir: str | Path) -> tuple[str, str]:
    """(family, what works) for a local model directory, as ``hone models list`` shows them."""
    kind = model_type(model_dir)
    if kind is None:
        return "unknown", "-"
    if kind not in FAMILIES:
        return kind, "not in the family matrix: LoRA through PEFT may work; GGUF export refuses it"
    name, fused = FAMILIES[kind]
    return name, f"LoRA ({'fused' if fused else 'PEFT'}) SFT and DPO, QLoRA, full, GGUF export, Ollama, serve"
