"""Build this example's unpaired feedback (KTO) from examples/docstring_module/train.jsonl.

Thumbs up or down on the base model's own answers, as a product collects them: for 240 training prompts
(seeded) the base model answers (greedy, fp32, at most 24 new tokens) and the answer gets a thumbs up when it
names the right module, a thumbs down otherwise (SmolLM2-135M-Instruct mostly rambles instead of naming a
module). Each prompt's right answer is added as a desirable example too (what a reviewer's correction gives),
so the two labels are about balanced. TRL's unpaired format: {"prompt": [messages], "completion": text,
"label": true|false}. Run from the project root:

    python examples/kto_docstring_module/build.py          # writes train.jsonl here
    python examples/kto_docstring_module/build.py --check  # verifies the shipped file

Greedy decoding in fp32 is deterministic on one machine; on another CPU a rare near-tie between two tokens
may decode differently, which ``--check`` reports as a difference.
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
PROMPTS = 240
SEED = 11
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


def build() -> tuple[str, dict]:
    from honing.evaluate.metrics import map_to_label

    rows = [json.loads(line) for line in SOURCE.read_text(encoding="utf-8").splitlines()]
    picked = sorted(random.Random(SEED).sample(range(len(rows)), PROMPTS))
    prompts = [rows[i]["messages"][:-1] for i in picked]
    answers = base_model_answers(prompts)
    out, counts = [], {"base_up": 0, "base_down": 0, "empty": 0, "reference_up": 0}
    for i, prompt, answer in zip(picked, prompts, answers):
        right = rows[i]["messages"][-1]["content"]
        if answer.strip():
            up = map_to_label(answer, LABELS) == right
            counts["base_up" if up else "base_down"] += 1
            out.append({"prompt": prompt, "completion": answer, "label": up})
        else:
            counts["empty"] += 1
        out.append({"prompt": prompt, "completion": right, "label": True})
        counts["reference_up"] += 1
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out), counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="verify train.jsonl instead of writing it")
    args = ap.parse_args()
    text, counts = build()
    target = HERE / "train.jsonl"
    if args.check:
        sys.exit(0 if target.read_text(encoding="utf-8") == text else f"{target} differs from what build.py makes")
    from honing.fileio import write_text_atomic

    write_text_atomic(target, text)
    print(f"wrote {text.count(chr(10))} examples to {target}: {counts}")


if __name__ == "__main__":
    main()
