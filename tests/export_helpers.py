"""Shared helpers for the export tests: small trained runs and the merged model's outputs."""

from __future__ import annotations

import json
from pathlib import Path

SYSTEM = "You add numbers. Answer with one sentence."

# Mixed text for tokenizer round trips: code, Unicode, digits, whitespace runs and the chat template's
# special tokens written as text.
MIXED_TEXT = (
    "def add(a, b):\n    return a + b  # 12 + 3456 = 3468\n\n"
    "Grüße, naïve café — 日本語のテキスト, emoji 🙂 and tabs\tand  double  spaces.\n"
    "<|im_start|>user\nWhat is 7 plus 8?<|im_end|>\n<|im_start|>assistant\n7 plus 8 is 15.<|im_end|>\n"
)


def write_system_chat(path: Path, n: int, seed: int = 0) -> Path:
    """Arithmetic chats that all start with the same system prompt (Ollama's SYSTEM comes from it)."""
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(1, 50), rng.randint(1, 50)
        rows.append({"messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"What is {a} plus {b}?"},
            {"role": "assistant", "content": f"{a} plus {b} is {a + b}."},
        ]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def train_run(model: str, data: Path, out: Path, **values):
    from honing.train import build_config, train

    base = {"model": model, "data": str(data), "out": str(out), "batch_size": 4, "dtype": "fp32",
            "tensorboard": False, "seed": 0, "max_steps": 3, "learning_rate": 5e-3}
    base.update(values)
    return train(build_config(values=base), log=lambda _m: None)


def logits(model, ids):
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0]


def greedy_ids(model, tokenizer, prompt_ids, n: int) -> list[int]:
    """Honing's greedy decoding (``honing.evaluate.generation``'s settings: no sampling, stop at the
    end-of-turn/EOS tokens) of at most ``n`` tokens; a stop token that ends it is included."""
    import torch

    from honing.evaluate.generation import stop_token_ids

    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids]), do_sample=False, max_new_tokens=n,
                             eos_token_id=stop_token_ids(tokenizer), pad_token_id=tokenizer.pad_token_id,
                             temperature=None, top_p=None, top_k=None)
    return out[0, len(prompt_ids):].tolist()


def read_gguf(path: Path, tokenizer: bool = False):
    """transformers' own GGUF loading (config, tensors with the Q/K permutation undone, and optionally the
    tokenizer) of the file at ``path``: ``(model, tokenizer or None)``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name) if tokenizer else None
    return model, tok


def read_gguf_tensors(path: Path, like):
    """The GGUF at ``path`` read by transformers' GGUF reader (its dequantization and reverse Q/K
    permutation) into a copy of ``like``, a model transformers built from a GGUF of the same architecture.

    Same tensors as ``read_gguf``, but the file's metadata (the 49k-token vocabulary, parsed in pure
    Python) is parsed once instead of from_pretrained's twice. Every tensor of the model must come from
    the file (a tied output head shares the embedding's)."""
    import copy

    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    model = copy.deepcopy(like)
    tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    assert not unexpected and set(missing) <= tied, (missing, unexpected)
    return model.eval()
