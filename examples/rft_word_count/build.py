"""Build this example's prompts and grader: "write one sentence of exactly K words that contains the word W".

A task whose reward is checkable but has no single reference answer: any sentence that has K words, uses W
and reads as one sentence is right. The words are this project's own list below (common concrete English
nouns, written for this example; the project's licence), so nothing here comes from a third party. Each
prompt pairs a word with a length K drawn from 6..12 (seeded); train and held-out prompts use disjoint words,
so the held-out reward measures the skill (counting words while using a given one), not memorised words.

    rft.jsonl        240 RFT rows (the 120 training words, two lengths each): GRPO's prompts
    rft_dev.jsonl     30 RFT rows (training words, new lengths): GRPO's validation reward (best checkpoint)
    rft_eval.jsonl   100 RFT rows over the 40 held-out words: the before/after measure (measure.py)
    grader.json      multi: form x (0.4 x word + 0.6 x length), three python graders (see GRADERS); form is a
                     gate, so a list of K copies of the word (right length, has the word) earns nothing

Each row: {"messages": [{"role": "user", ...}], "word": W, "words": K}. Run from the project root:

    python examples/rft_word_count/build.py          # writes the files here
    python examples/rft_word_count/build.py --check  # verifies the shipped files
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 7
LENGTHS = range(6, 13)
PROMPT = 'Write one sentence of exactly {k} words that contains the word "{w}". Reply with the sentence only.'

TRAIN_WORDS = ["apple", "bridge", "candle", "garden", "window", "river", "mountain", "pencil", "basket", "blanket", "bottle", "button", "camera", "carpet", "castle", "chair", "cloud", "coffee", "collar", "cookie", "copper", "cotton", "desert", "doctor", "dragon", "drawer", "engine", "farmer", "feather", "finger", "forest", "frog", "glove", "guitar", "hammer", "harbor", "helmet", "honey", "island", "jacket", "kettle", "kitchen", "ladder", "lemon", "letter", "library", "lizard", "magnet", "market", "mirror", "monkey", "needle", "ocean", "orange", "oven", "painter", "parrot", "pepper", "pillow", "pirate", "planet", "pocket", "potato", "rabbit", "radio", "ribbon", "rocket", "saddle", "sailor", "shadow", "shovel", "silver", "singer", "sister", "spider", "spoon", "station", "stone", "sugar", "summer", "table", "teacher", "tiger", "tomato", "towel", "tractor", "trumpet", "tunnel", "turtle", "umbrella", "valley", "violin", "wagon", "wallet", "whistle", "winter", "wizard", "wolf", "yogurt", "anchor", "arrow", "badge", "barrel", "beetle", "bucket", "cabin", "canyon", "cherry", "chimney", "circus", "comet", "compass", "crayon", "crystal", "garlic", "marble", "banana", "saucepan", "walrus", "muffin"]
EVAL_WORDS = ["dolphin", "elbow", "falcon", "fountain", "giraffe", "goblet", "hammock", "lantern", "meadow", "napkin", "orchard", "paddle", "peacock", "pebble", "pickle", "puzzle", "quilt", "raccoon", "saucer", "scarf", "shepherd", "skillet", "sparrow", "squirrel", "stadium", "statue", "stove", "sunflower", "teapot", "thimble", "thunder", "toaster", "trolley", "tulip", "vulture", "walnut", "whale", "windmill", "zebra", "acorn"]

WORD_SOURCE = '''\
import re


def grade(sample, item):
    """1 when the word (or its plural) is one of the output's words, ignoring case and punctuation."""
    word = item["word"].lower()
    words = [re.sub(r"[^a-z0-9'-]", "", t.lower()) for t in sample["output_text"].split()]
    return 1.0 if any(w in (word, word + "s", word + "es") for w in words) else 0.0
'''

LENGTH_SOURCE = '''\
import re


def grade(sample, item):
    """1 for exactly K words (space-separated tokens with a letter or digit), 0.25 less per word off."""
    n = sum(1 for t in sample["output_text"].split() if re.search(r"[A-Za-z0-9]", t))
    return max(0.0, 1.0 - abs(n - item["words"]) / 4)
'''

FORM_SOURCE = '''\
import re
from collections import Counter


def grade(sample, item):
    """1 when the output reads as one sentence: one line, a capital first letter, one closing . ! or ? at the
    end and none before, no word used more than three times; else 0."""
    text = sample["output_text"].strip()
    if not text or "\\n" in text or not text[0].isupper() or text[-1] not in ".!?":
        return 0.0
    if re.search(r"[.!?]\\s", text[:-1]):
        return 0.0
    counts = Counter(re.sub(r"[^a-z0-9'-]", "", t.lower()) for t in text.split())
    return 0.0 if max(counts.values()) > 3 else 1.0
'''

GRADERS = {
    "type": "multi",
    "name": "word_count",
    "graders": {
        "word": {"type": "python", "name": "word", "source": WORD_SOURCE},
        "length": {"type": "python", "name": "length", "source": LENGTH_SOURCE},
        "form": {"type": "python", "name": "form", "source": FORM_SOURCE},
    },
    "calculate_output": "form * (0.4 * word + 0.6 * length)",
}


def row(word: str, k: int) -> dict:
    return {"messages": [{"role": "user", "content": PROMPT.format(k=k, w=word)}], "word": word, "words": k}


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def build() -> dict[str, str]:
    assert not set(TRAIN_WORDS) & set(EVAL_WORDS) and len(set(TRAIN_WORDS)) == 120 and len(set(EVAL_WORDS)) == 40
    rng = random.Random(SEED)
    train, dev = [], []
    for w in TRAIN_WORDS:
        ks = rng.sample(LENGTHS, 3)
        train += [row(w, ks[0]), row(w, ks[1])]
        dev.append(row(w, ks[2]))
    rng.shuffle(train)
    dev = rng.sample(dev, 30)
    held_out = [row(w, rng.choice(LENGTHS)) for w in EVAL_WORDS for _ in range(2)]
    held_out += [row(w, rng.choice(LENGTHS)) for w in rng.sample(EVAL_WORDS, 20)]
    rng.shuffle(held_out)
    return {"rft.jsonl": jsonl(train), "rft_dev.jsonl": jsonl(dev), "rft_eval.jsonl": jsonl(held_out),
            "grader.json": json.dumps(GRADERS, indent=1) + "\n"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="verify the shipped files instead of writing them")
    args = parser.parse_args(argv)
    files = build()
    if args.check:
        stale = [n for n, text in files.items() if not (HERE / n).is_file()
                 or (HERE / n).read_text(encoding="utf-8") != text]
        for name in stale:
            print(f"{HERE / name}: differs from what build.py writes", file=sys.stderr)
        return 1 if stale else 0
    from honing.fileio import write_text_atomic

    for name, text in files.items():
        write_text_atomic(HERE / name, text)
        print(f"wrote {HERE / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
