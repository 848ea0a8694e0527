"""Shared helpers for the training tests: a tiny seeded model directory and a small chat dataset."""

from __future__ import annotations

import json
import random
from pathlib import Path


def write_arithmetic_chat(path: Path, n: int, seed: int = 0, offset: int = 0) -> Path:
    """``n`` short OpenAI-chat examples ("What is a plus b?" -> "a plus b is c.")."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(1, 50), rng.randint(1, 50)
        rows.append({"messages": [
            {"role": "user", "content": f"What is {a} plus {b}?"},
            {"role": "assistant", "content": f"{a} plus {b} is {a + b + offset}."},
        ]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def build_tiny_model_dir(out: Path, seed: int = 0) -> Path:
    """A tiny random Llama (2 layers, hidden 64) with the real SmolLM2 tokenizer, saved as a HF dir."""
    from conftest import TEST_TOKENIZER, make_tiny_llama

    from honing.models import load_tokenizer

    make_tiny_llama(seed=seed).save_pretrained(out)
    load_tokenizer(TEST_TOKENIZER).save_pretrained(out)
    return out
