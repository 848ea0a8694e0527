"""Build src/honing/resources/general_replay.jsonl: general instruction chats for replay during training.

The prompts (replay_prompts.txt) were written for Honing (CC0 1.0). The answers are the embedded default
model's own greedy replies (SmolLM2-135M-Instruct, Apache-2.0), cut at the last full sentence: replaying a
model's own behaviour on general requests is self-distillation rehearsal, which keeps the default model's
general ability with the fewest extra tokens (for other base models the chats are still plain, fluent
general instructions). System prompts rotate so the model keeps conditioning on the system turn.

    HF_HUB_OFFLINE=1 HONING_CACHE_DIR=.cache .venv/bin/python scripts/build_replay.py   # ~2 min on 2 cores
"""

from __future__ import annotations

import json
import re
from importlib import resources

SYSTEMS = [None, "You are a helpful assistant.", "Be concise."]
MAX_NEW_TOKENS = 64


def prompts() -> list[str]:
    text = resources.files("honing").joinpath("resources", "replay_prompts.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def whole_sentences(text: str) -> str:
    """The reply up to its last sentence end (the generation budget can cut the last one)."""
    text = text.strip()
    ends = [m.end() for m in re.finditer(r"[.!?](\s|$)", text)]
    return text[: ends[-1]].strip() if ends else text


def main() -> None:
    import torch

    from honing.data.conversation import Message
    from honing.evaluate.generation import generate
    from honing.models.loading import load_model

    torch.manual_seed(0)
    model, tokenizer, _ = load_model("smollm2-135m-instruct", dtype=torch.float32)
    model.eval()
    asks = prompts()
    chats = []
    for i, q in enumerate(asks):
        system = SYSTEMS[i % len(SYSTEMS)]
        chats.append(([Message("system", system)] if system else []) + [Message("user", q)])
    replies = generate(model, tokenizer, chats, MAX_NEW_TOKENS).texts
    out = resources.files("honing").joinpath("resources", "general_replay.jsonl")
    with open(str(out), "w", encoding="utf-8") as f:
        for chat, reply in zip(chats, replies):
            answer = whole_sentences(reply)
            if not answer:
                continue
            messages = [{"role": m.role, "content": m.content} for m in chat] + [
                {"role": "assistant", "content": answer}]
            f.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
