"""Build this example's files from examples/signature_json/ (SFT first, then GRPO against a grader).

The 1,000 training examples of signature_json are shuffled once (seed 0, as benchmarks/quality's 300-example
cells) and cut into three disjoint parts, so the reinforcement stage learns on prompts the SFT stage never saw
and picks its best checkpoint on prompts neither saw (the held-out eval.jsonl is left for the final measure):

    sft_train.jsonl   300 chat examples (system, user, assistant): the short SFT stage
    sft_dev.jsonl      40 chat examples: SFT's eval loss, and the same prompts as rft_dev.jsonl
    rft.jsonl         240 RFT rows: the training prompts without the assistant turn, the reference answer as
                      the item field ``reference`` (the parsed JSON object)
    rft_dev.jsonl      40 RFT rows: GRPO's validation reward (picks its best checkpoint)
    rft_eval.jsonl    the 200 held-out eval.jsonl prompts as RFT rows (for ``hone grade`` style checks)
    grader.json       the multi grader: 0.2 x valid (JSON against schema.json, checked by jsonschema) +
                      0.8 x fields (the share of the five keys equal to the reference); schema.json is
                      embedded in the python grader's source, which sees no file
    grader_strict.json  the recipe's grader: 0.1 x valid + 0.3 x fields + 0.6 x exact (1 only when all five
                      keys equal the reference's: hone eval's JSON match); partial credit alone gave no gain

Run from the project root:

    python examples/rft_signature_json/build.py          # writes the files here
    python examples/rft_signature_json/build.py --check  # verifies the shipped files
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent / "signature_json"
SEED = 0
PARTS = {"sft_train": 300, "sft_dev": 40, "rft": 240}
VALID_WEIGHT, FIELDS_WEIGHT = 0.2, 0.8
# The strict grader pays mostly for a whole answer: with partial credit only (0.2 / 0.8), GRPO after SFT moved
# held-out JSON match by -2.0 points [-7.0, +3.0]; with this one, +5.0 [+1.0, +9.0] (README.md).
STRICT_WEIGHTS = {"valid": 0.1, "fields": 0.3, "exact": 0.6}

VALID_SOURCE = '''\
import json
import jsonschema

SCHEMA = json.loads(%r)


def grade(sample, item):
    """1 when the output is one JSON object that follows the schema, else 0."""
    try:
        value = json.loads(sample["output_text"].strip())
    except ValueError:
        return 0.0
    return 1.0 if jsonschema.Draft202012Validator(SCHEMA).is_valid(value) else 0.0
'''

FIELDS_SOURCE = '''\
import json

KEYS = ("name", "required", "optional", "keyword_only", "variadic")


def grade(sample, item):
    """The share of the five keys whose value equals the reference's (0 when the output is not a JSON object)."""
    try:
        value = json.loads(sample["output_text"].strip())
    except ValueError:
        return 0.0
    if not isinstance(value, dict):
        return 0.0
    reference = item["reference"]
    return sum(key in value and value[key] == reference[key] for key in KEYS) / len(KEYS)
'''


EXACT_SOURCE = '''\
import json

KEYS = ("name", "required", "optional", "keyword_only", "variadic")


def grade(sample, item):
    """1 when the output is one JSON object whose five keys all equal the reference's (hone eval's JSON match), else 0."""
    try:
        value = json.loads(sample["output_text"].strip())
    except ValueError:
        return 0.0
    if not isinstance(value, dict):
        return 0.0
    reference = item["reference"]
    return 1.0 if all(key in value and value[key] == reference[key] for key in KEYS) else 0.0
'''


def strict_grader() -> dict:
    """grader() plus ``exact``, weighted towards it (STRICT_WEIGHTS)."""
    g = grader()
    g["name"] = "signature_json_strict"
    g["graders"]["exact"] = {"type": "python", "name": "exact", "source": EXACT_SOURCE}
    g["calculate_output"] = " + ".join(f"{w} * {name}" for name, w in STRICT_WEIGHTS.items())
    return g


def grader() -> dict:
    schema = json.dumps(json.loads((SOURCE / "schema.json").read_text(encoding="utf-8")), separators=(",", ":"))
    return {
        "type": "multi",
        "name": "signature_json",
        "graders": {
            "valid": {"type": "python", "name": "valid", "source": VALID_SOURCE % schema},
            "fields": {"type": "python", "name": "fields", "source": FIELDS_SOURCE},
        },
        "calculate_output": f"{VALID_WEIGHT} * valid + {FIELDS_WEIGHT} * fields",
    }


def rft_row(chat: dict) -> dict:
    *prompt, answer = chat["messages"]
    assert answer["role"] == "assistant", chat
    return {"messages": prompt, "reference": json.loads(answer["content"])}


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def build() -> dict[str, str]:
    lines = (SOURCE / "train.jsonl").read_text(encoding="utf-8").splitlines()
    random.Random(SEED).shuffle(lines)
    rows = [json.loads(line) for line in lines]
    parts, start = {}, 0
    for name, size in PARTS.items():
        parts[name] = rows[start:start + size]
        start += size
    held_out = [json.loads(line) for line in (SOURCE / "eval.jsonl").read_text(encoding="utf-8").splitlines()]
    return {
        "sft_train.jsonl": jsonl(parts["sft_train"]),
        "sft_dev.jsonl": jsonl(parts["sft_dev"]),
        "rft.jsonl": jsonl([rft_row(r) for r in parts["rft"]]),
        "rft_dev.jsonl": jsonl([rft_row(r) for r in parts["sft_dev"]]),
        "rft_eval.jsonl": jsonl([rft_row(r) for r in held_out]),
        "grader.json": json.dumps(grader(), indent=1) + "\n",
        "grader_strict.json": json.dumps(strict_grader(), indent=1) + "\n",
    }


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
