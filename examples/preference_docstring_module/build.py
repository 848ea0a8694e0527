"""Build the preference pairs of this example from examples/docstring_module/train.jsonl (deterministic).

Each pair keeps a training example's prompt (the system prompt with the ten labels, and a standard-library
docstring); ``preferred_output`` is the right module name, ``non_preferred_output`` another of the ten
labels drawn with a fixed seed. Written in OpenAI's DPO format. Run from the project root:

    python examples/preference_docstring_module/build.py          # writes train.jsonl here
    python examples/preference_docstring_module/build.py --check  # verifies the shipped file byte for byte
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


def build() -> str:
    rows = [json.loads(line) for line in SOURCE.read_text(encoding="utf-8").splitlines()]
    rng = random.Random(SEED)
    picked = sorted(rng.sample(range(len(rows)), PAIRS))
    out = []
    for i in picked:
        messages = rows[i]["messages"]
        right = messages[-1]["content"]
        wrong = rng.choice([label for label in LABELS if label != right])
        out.append({"input": {"messages": messages[:-1]},
                    "preferred_output": [{"role": "assistant", "content": right}],
                    "non_preferred_output": [{"role": "assistant", "content": wrong}]})
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--check", action="store_true")
    text = build()
    target = HERE / "train.jsonl"
    if ap.parse_args().check:
        sys.exit(0 if target.read_text(encoding="utf-8") == text else f"{target} differs from what build.py makes")
    target.write_text(text, encoding="utf-8")
    print(f"wrote {PAIRS} pairs to {target}")


if __name__ == "__main__":
    main()
