"""A separable toy preference set: the chosen reply states the right sum, the rejected one a wrong sum in a
rude tone, so a tiny model can learn to tell them apart within a few steps."""

from __future__ import annotations

import json
import random
from pathlib import Path


def write_toy_pairs(path: Path, n: int, seed: int = 0, style: str = "trl") -> Path:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(1, 50), rng.randint(1, 50)
        prompt, good, bad = f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.", f"No. Go away, it is {a + b + 7}!"
        if style == "trl":
            rows.append({"prompt": prompt, "chosen": good, "rejected": bad})
        else:  # OpenAI's DPO format
            rows.append({"input": {"messages": [{"role": "user", "content": prompt}]},
                         "preferred_output": [{"role": "assistant", "content": good}],
                         "non_preferred_output": [{"role": "assistant", "content": bad}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
