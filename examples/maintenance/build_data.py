"""Build the maintenance walkthrough's data from the demo dataset (examples/docstring_module), reproducibly.

    python examples/maintenance/build_data.py            # writes data/ next to this script
    python examples/maintenance/build_data.py --check    # exit 1 unless data/ is exactly what it builds

* ``v1.jsonl``: version 1 of the training data: 10 examples per label (100), labelled in a hurry: 15 of
  them carry a wrong label, each a seeded pick among the other nine labels.
* ``v2.jsonl``: version 2: the same 100 with the 15 labels corrected, plus 8 more examples per label
  (180 in all), in a new order (a data diff must not care about line numbers).
* ``eval.jsonl``: the fixed eval set both versions are judged on: 4 held-out examples per label (40),
  from the demo's eval split (never in any training version).

Small on purpose: the walkthrough trains twice and evaluates three times on a shared 2-core CPU.
* ``requests.jsonl``: "today's traffic" as OpenAI chat request logs, for ``hone drift``: 48 held-out
  docstrings of the ten known modules, 12 docstrings of modules the model was never trained on (json, re,
  collections, ...), 12 questions users started to type instead of docstrings, and 12 customer-support
  messages from another team's client pointed at this endpoint by mistake.

Everything is selected with a fixed seed from the demo's files; the texts are CPython docstrings (PSF
licence, see examples/docstring_module/README.md) and, for the new questions, written for this example.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEMO = HERE.parent / "docstring_module"
OUT = HERE / "data"
SEED = 15
V1_PER_LABEL, V2_EXTRA_PER_LABEL, EVAL_PER_LABEL, WRONG_LABELS = 10, 8, 4, 15
DRIFT_KNOWN = 48

# First paragraphs of docstrings of modules outside the ten labels (CPython 3.11, PSF licence).
UNKNOWN_MODULES = [
    "Serialize ``obj`` to a JSON formatted ``str``.",
    ("Deserialize ``s`` (a ``str``, ``bytes`` or ``bytearray`` instance containing a JSON document) to a Python "
    "object."),
    "Return the Python representation of ``s`` (a ``str`` instance containing a JSON document).",
    "Compile a regular expression pattern, returning a Pattern object.",
    "Return a list of all non-overlapping matches in the string.",
    "Escape special characters in a string.",
    "Try to apply the pattern to all of the string, returning a Match object, or None if no match was found.",
    ("List the n most common elements and their counts from the most common to the least.  If n is None, then "
    "list all element counts."),
    "Move an existing element to the end (or beginning if last is false).",
    "Returns a new subclass of tuple with named fields.",
    "Returns a dialect (or None) corresponding to the sample",
    "Simple object for storing attributes.",
]
# What users typed once the endpoint was shared more widely: questions, not docstrings.
QUESTIONS = [
    "How do I read a CSV file into a list of dictionaries?",
    "Which module should I use to parse command line arguments?",
    "What is the fastest way to reverse a list in Python?",
    "How can I merge two dictionaries?",
    "How do I install a package with pip behind a proxy?",
    "Why does my script say ModuleNotFoundError: No module named requests?",
    "How do I format a date as YYYY-MM-DD?",
    "What is the difference between a list and a tuple?",
    "How can I read a file line by line?",
    "How do I sort a list of dictionaries by a key?",
    "How do I make an HTTP request with a timeout?",
    "Can you explain what a Python decorator is?",
]
# A client of another team's support bot, pointed at this endpoint by a configuration mistake.
MISROUTED = [
    "I was charged twice for my subscription this month, please refund one payment.",
    "My package was marked as delivered but I never received it.",
    "How do I change the email address on my account?",
    "The app crashes every time I try to upload a profile picture.",
    "Can I upgrade my plan in the middle of a billing cycle?",
    "I forgot my password and the reset link never arrives.",
    "Please cancel my order number 48213, I ordered the wrong size.",
    "Is there a student discount for the annual plan?",
    "The tracking number you sent me does not work.",
    "Why was my card declined when it works everywhere else?",
    "I want to delete my account and all my data.",
    "Your delivery driver left the parcel in the rain and everything is soaked.",
]


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def label(row: dict) -> str:
    return row["messages"][-1]["content"]


def with_label(row: dict, new: str) -> dict:
    return {"messages": row["messages"][:-1] + [{"role": "assistant", "content": new}]}


def by_label(rows: list[dict]) -> dict[str, list[dict]]:
    out = defaultdict(list)
    for r in rows:
        out[label(r)].append(r)
    return dict(sorted(out.items()))


def build() -> dict[str, list[dict]]:
    rng = random.Random(SEED)
    train, held = by_label(read(DEMO / "train.jsonl")), by_label(read(DEMO / "eval.jsonl"))
    labels = sorted(train)
    v1, extra = [], []
    for lab in labels:
        rows = rng.sample(train[lab], V1_PER_LABEL + V2_EXTRA_PER_LABEL)
        v1 += rows[:V1_PER_LABEL]
        extra += rows[V1_PER_LABEL:]
    rng.shuffle(v1)
    clean_v1 = list(v1)
    for i in sorted(rng.sample(range(len(v1)), WRONG_LABELS)):
        v1[i] = with_label(v1[i], rng.choice([lab for lab in labels if lab != label(v1[i])]))
    v2 = clean_v1 + extra
    rng.shuffle(v2)

    eval_rows, unused = [], []
    for lab in labels:
        rows = rng.sample(held[lab], len(held[lab]))
        eval_rows += rows[:EVAL_PER_LABEL]
        unused += rows[EVAL_PER_LABEL:]
    # Logged requests carry no answer: the system prompt and the user turn, as the client sent them.
    system = v2[0]["messages"][0]["content"]
    known = [r["messages"][1]["content"] for r in rng.sample(unused, DRIFT_KNOWN)]
    texts = known + UNKNOWN_MODULES + QUESTIONS + MISROUTED
    rng.shuffle(texts)
    requests = [{"model": "docstring-v1", "temperature": 0,
                 "messages": [{"role": "system", "content": system}, {"role": "user", "content": t}]} for t in texts]
    return {"v1.jsonl": v1, "v2.jsonl": v2, "eval.jsonl": eval_rows, "requests.jsonl": requests}


def render(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="verify data/ instead of writing it")
    args = ap.parse_args()
    files = {name: render(rows) for name, rows in build().items()}
    if args.check:
        stale = [n for n, text in files.items() if not (OUT / n).is_file() or (OUT / n).read_text(encoding="utf-8") != text]
        print("data/ is up to date" if not stale else f"data/ differs from the build: {', '.join(stale)}")
        return 1 if stale else 0
    OUT.mkdir(exist_ok=True)
    for name, text in files.items():
        (OUT / name).write_text(text, encoding="utf-8")
        print(f"{OUT / name}: {text.count(chr(10))} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
