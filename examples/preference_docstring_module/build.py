"""Build the preference pairs of this example from examples/docstring_module/train.jsonl.

Each pair keeps a training example's prompt (the system prompt with the ten labels, and a standard-library
docstring). ``preferred_output`` is the right module name. ``non_preferred_output`` is **what the base
model itself answers** (greedy, fp32, at most 24 new tokens): on this task SmolLM2-135M-Instruct mostly
rambles ("The docstring of a function ...") instead of naming a module, and DPO learns the most from
pushing down the replies the model actually gives (on-policy rejected replies). Where the base model's
answer already names the right module, the non-preferred reply is another of the ten labels (seeded).
Written in OpenAI's DPO format. Run from the project root:

    python examples/preference_docstring_module/build.py          # writes train.jsonl here (~1 min)
    python examples/preference_docstring_module/build.py --check  # verifies the shipped file

Greedy decoding in fp32 is deterministic on one machine; on another CPU a rare near-tie between two
tokens may decode differently, which ``--check`` reports as a difference.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent / "docstring_module" / "train.jsonl"
LABELS = ["asyncio", "decimal", "email", "http", "importlib", "logging", "os", "tkinter", "unittest", "xml"]
PAIRS = 240
SEED = 7
MODEL = "smollm2-135m-instruct"
MAX_NEW_TOKENS = 24


def base_model_answers(prompts: list[list[dict]]) -> list[str]:
    """The base model's greedy replies to ``prompts`` (fp32, one thread: reproducible)."""
    import torch

    from honing.data.conversation import Message
    from honing.evaluate.generation import generate
    from honing.models import load_model

    torch.set_num_threads(1)
    model, tokenizer, _ = load_model(MODEL, dtype=torch.float32)
    as_messages = [[Message(m["role"], m["content"]) for m in p] for p in prompts]
    return generate(model.eval(), tokenizer, as_messages, max_new_tokens=MAX_NEW_TOKENS).texts


def build() -> str:
    from honing.evaluate.metrics import map_to_label

    rows = [json.loads(line) for line in SOURCE.read_text(encoding="utf-8").splitlines()]
    rng = random.Random(SEED)
    picked = sorted(rng.sample(range(len(rows)), PAIRS))
    prompts = [rows[i]["messages"][:-1] for i in picked]
    answers = base_model_answers(prompts)
    out = []
    for i, prompt, answer in zip(picked, prompts, answers):
        right = rows[i]["messages"][-1]["content"]
        wrong = rng.choice([label for label in LABELS if label != right])  # drawn for every pair: stable seed use
        rejected = wrong if (not answer or map_to_label(answer, LABELS) == right) else answer
        out.append({"input": {"messages": prompt},
                    "preferred_output": [{"role": "assistant", "content": right}],
                    "non_preferred_output": [{"role": "assistant", "content": rejected}]})
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="verify train.jsonl instead of writing it")
    args = ap.parse_args()
    text = build()
    target = HERE / "train.jsonl"
    if args.check:
        sys.exit(0 if target.read_text(encoding="utf-8") == text else f"{target} differs from what build.py makes")
    from honing.fileio import write_text_atomic

    write_text_atomic(target, text)
    print(f"wrote {PAIRS} pairs to {target}")


if __name__ == "__main__":
    main()
