"""Build examples/tool_calls_stdlib: requests answered by calling a Python standard-library function with the
right arguments, in OpenAI's function-calling fine-tuning format.

Each example offers three tools (the right function and two others, seeded), a user request, the assistant's
call, the tool's result (the function really run on those arguments) and the assistant's answer. Tool
descriptions are the first sentence of each function's own docstring (PSF licence); argument values are
drawn from real text too: words of the standard library's docstrings and relative paths of its sources.
The request wording is one template per function, written for this dataset.

    python scripts/build_tool_calls_stdlib.py            # writes examples/tool_calls_stdlib/
    python scripts/build_tool_calls_stdlib.py --check    # exit 1 if a shipped file differs
"""

from __future__ import annotations

import argparse
import calendar
import fnmatch
import html
import inspect
import json
import math
import os.path
import random
import re
import shlex
import statistics
import string
import sys
import sysconfig
import textwrap
import unicodedata
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "examples" / "tool_calls_stdlib"
SEED = 20261203
N_TRAIN, N_EVAL = 400, 80
TOOLS_PER_EXAMPLE = 3
SYSTEM = "You are an assistant that answers by calling the Python standard-library function that fits the request."


@dataclass(frozen=True)
class Function:
    name: str  # the tool name: module and function joined by "_" (OpenAI allows [a-zA-Z0-9_-] only)
    fn: Callable
    params: dict  # parameter -> JSON Schema type
    request: str  # the user's request, formatted with the arguments
    draw: Callable[[random.Random, dict], dict]  # arguments from the random source and the text pools


def first_sentence(fn: Callable) -> str:
    """The docstring's first sentence, skipping a leading ``name(...)`` signature line (C functions have one)."""
    lines = [ln.strip() for ln in (inspect.getdoc(fn) or "").splitlines()]
    text = " ".join(ln for ln in lines if ln and not re.match(r"^\w+\(.*\)( -> \w+)?$", ln))
    sentence = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0]
    return sentence if sentence.endswith((".", "!", "?")) else sentence + "."


def word(r: random.Random, pools: dict) -> str:
    return r.choice(pools["words"])


def phrase(r: random.Random, pools: dict, n: int) -> str:
    return " ".join(word(r, pools) for _ in range(n))


def numbers(r: random.Random, n: int) -> list[int]:
    return [r.randint(1, 99) for _ in range(n)]


FUNCTIONS = [
    Function("math_gcd", math.gcd, {"a": "integer", "b": "integer"},
             "What is the greatest common divisor of {a} and {b}?",
             lambda r, p: {"a": r.randint(2, 400) * 6, "b": r.randint(2, 400) * 4}),
    Function("math_lcm", math.lcm, {"a": "integer", "b": "integer"},
             "Find the least common multiple of {a} and {b}.", lambda r, p: {"a": r.randint(2, 90), "b": r.randint(2, 90)}),
    Function("math_factorial", math.factorial, {"n": "integer"}, "Compute {n} factorial.",
             lambda r, p: {"n": r.randint(3, 25)}),
    Function("math_comb", math.comb, {"n": "integer", "k": "integer"},
             "In how many ways can I pick {k} items out of {n}, order not mattering?",
             lambda r, p: {"n": (n := r.randint(5, 60)), "k": r.randint(1, n - 1)}),
    Function("math_perm", math.perm, {"n": "integer", "k": "integer"},
             "How many ordered arrangements of {k} items taken from {n} are there?",
             lambda r, p: {"n": r.randint(5, 30), "k": r.randint(1, 5)}),
    Function("math_isqrt", math.isqrt, {"n": "integer"}, "What is the integer square root of {n}?",
             lambda r, p: {"n": r.randint(10, 10**7)}),
    Function("math_hypot", math.hypot, {"x": "number", "y": "number"},
             "How long is the hypotenuse of a right triangle with legs {x} and {y}?",
             lambda r, p: {"x": r.randint(1, 60), "y": r.randint(1, 60)}),
    Function("math_log", math.log, {"x": "number", "base": "number"}, "What is the logarithm of {x} in base {base}?",
             lambda r, p: {"x": r.randint(2, 5000), "base": r.choice([2, 3, 5, 10, 16])}),
    Function("math_degrees", math.degrees, {"x": "number"}, "Convert {x} radians to degrees.",
             lambda r, p: {"x": round(r.uniform(0.1, 6.2), 2)}),
    Function("math_radians", math.radians, {"x": "number"}, "Convert {x} degrees to radians.",
             lambda r, p: {"x": r.randint(1, 359)}),
    Function("textwrap_shorten", textwrap.shorten, {"text": "string", "width": "integer"},
             'Shorten "{text}" to at most {width} characters.',
             lambda r, p: {"text": phrase(r, p, r.randint(5, 8)), "width": r.randint(15, 30)}),
    Function("string_capwords", string.capwords, {"s": "string"}, 'Capitalize every word of "{s}".',
             lambda r, p: {"s": phrase(r, p, r.randint(2, 5))}),
    Function("os_path_basename", os.path.basename, {"p": "string"}, "What is the file name in the path {p}?",
             lambda r, p: {"p": r.choice(p["paths"])}),
    Function("os_path_dirname", os.path.dirname, {"p": "string"}, "Which directory holds {p}?",
             lambda r, p: {"p": r.choice(p["paths"])}),
    Function("os_path_splitext", os.path.splitext, {"p": "string"}, "Split the extension off {p}.",
             lambda r, p: {"p": r.choice(p["paths"])}),
    Function("os_path_join", os.path.join, {"a": "string", "b": "string"}, "Join the path {a} with {b}.",
             lambda r, p: {"a": os.path.dirname(r.choice(p["paths"])), "b": os.path.basename(r.choice(p["paths"]))}),
    Function("calendar_isleap", calendar.isleap, {"year": "integer"}, "Is {year} a leap year?",
             lambda r, p: {"year": r.randint(1600, 2400)}),
    Function("calendar_monthrange", calendar.monthrange, {"year": "integer", "month": "integer"},
             "What weekday does month {month} of {year} start on, and how many days does it have?",
             lambda r, p: {"year": r.randint(1900, 2100), "month": r.randint(1, 12)}),
    Function("calendar_weekday", calendar.weekday, {"year": "integer", "month": "integer", "day": "integer"},
             "Which day of the week is {year}-{month:02d}-{day:02d}?",
             lambda r, p: {"year": r.randint(1900, 2100), "month": r.randint(1, 12), "day": r.randint(1, 28)}),
    Function("statistics_mean", statistics.mean, {"data": "array"}, "What is the mean of {data}?",
             lambda r, p: {"data": numbers(r, r.randint(3, 6))}),
    Function("statistics_median", statistics.median, {"data": "array"}, "What is the median of {data}?",
             lambda r, p: {"data": numbers(r, r.randint(3, 7))}),
    Function("unicodedata_name", unicodedata.name, {"chr": "string"}, "What is the Unicode name of {chr}?",
             lambda r, p: {"chr": r.choice(p["chars"])}),
    Function("html_escape", html.escape, {"s": "string"}, 'Escape "{s}" for HTML.',
             lambda r, p: {"s": f"<{word(r, p)}> & {word(r, p)}"}),
    Function("urllib_parse_quote", urllib.parse.quote, {"string": "string"}, 'URL-encode "{string}".',
             lambda r, p: {"string": phrase(r, p, r.randint(2, 4))}),
    Function("shlex_split", shlex.split, {"s": "string"}, "Split the command line `{s}` into words.",
             lambda r, p: {"s": f"{word(r, p)} -{word(r, p)[0]} '{phrase(r, p, 2)}' {r.choice(p['paths'])}"}),
    Function("fnmatch_fnmatch", fnmatch.fnmatch, {"name": "string", "pat": "string"},
             "Does the file name {name} match the pattern {pat}?",
             lambda r, p: {"name": os.path.basename(r.choice(p["paths"])),
                           "pat": r.choice(["*.py", "_*", "*_*.py", "?????.py", "[a-m]*"])}),
    Function("re_escape", re.escape, {"pattern": "string"}, 'Escape the regular-expression characters in "{pattern}".',
             lambda r, p: {"pattern": f"{word(r, p)}.{word(r, p)}(*){r.randint(1, 9)}+"}),
]


def tool(f: Function) -> dict:
    props = {k: ({"type": "array", "items": {"type": "number"}} if t == "array" else {"type": t})
             for k, t in f.params.items()}
    return {"type": "function", "function": {"name": f.name, "description": first_sentence(f.fn), "parameters": {
        "type": "object", "properties": props, "required": list(f.params), "additionalProperties": False}}}


def text_pools() -> dict:
    """Words of the standard library's docstrings, relative paths of its sources, and named characters."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    words: set[str] = set()
    for f in FUNCTIONS:
        words.update(w.lower() for w in re.findall(r"[A-Za-z]{4,10}", inspect.getdoc(f.fn) or ""))
    for mod in (calendar, fnmatch, html, shlex, statistics, string, textwrap):
        words.update(w.lower() for w in re.findall(r"[A-Za-z]{4,10}", mod.__doc__ or ""))
    paths = sorted(p.relative_to(lib).as_posix() for p in lib.glob("*/*.py")
                   if "test" not in p.as_posix() and "site-packages" not in p.as_posix())
    # Letters only: `hone data validate` normalizes answers by their word characters, so calls that differ
    # only in a symbol (÷ vs ≤) would read as one repeated answer.
    chars = [c for c in "αβγδλπΩжщяñçøåßðþæœšžąłőűİğşאבגدرسकखगあいう가나다" if unicodedata.name(c, "")]
    return {"words": sorted(words), "paths": paths, "chars": chars}


def call_expr(f: Function, args: dict) -> str:
    return f"{f.fn.__module__.replace('posixpath', 'os.path')}.{f.fn.__name__}(" + ", ".join(
        repr(v) for v in args.values()) + ")"


def example(i: int, f: Function, others: list[Function], r: random.Random, pools: dict) -> dict:
    args = f.draw(r, pools)
    result = f.fn(*args.values())
    offered = [f, *others]
    r.shuffle(offered)
    cid = f"call_{i:04d}"
    return {"tools": [tool(t) for t in offered], "messages": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f.request.format(**args)},
        {"role": "assistant", "tool_calls": [{"id": cid, "type": "function", "function": {
            "name": f.name, "arguments": json.dumps(args, ensure_ascii=False)}}]},
        {"role": "tool", "tool_call_id": cid, "content": json.dumps(result, ensure_ascii=False)},
        {"role": "assistant", "content": f"{call_expr(f, args)} returned {result!r}."},
    ]}


def build() -> dict[str, str]:
    r = random.Random(SEED)
    pools = text_pools()
    rows, seen = [], set()
    while len(rows) < N_TRAIN + N_EVAL:
        f = FUNCTIONS[len(rows) % len(FUNCTIONS)]  # every function about equally often
        row = example(len(rows), f, r.sample([g for g in FUNCTIONS if g is not f], TOOLS_PER_EXAMPLE - 1), r, pools)
        request = row["messages"][1]["content"].lower()
        if request not in seen:  # no request twice: none shared between the splits either
            seen.add(request)
            rows.append(row)
    r.shuffle(rows)
    train, held_out = rows[:N_TRAIN], rows[N_TRAIN:]
    dump = lambda v: json.dumps(v, indent=2, ensure_ascii=False) + "\n"
    jsonl = lambda rs: "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in rs)
    return {
        "train.jsonl": jsonl(train), "eval.jsonl": jsonl(held_out),
        "hone_eval.json": dump({"metric": "tool_call"}),
        "build_info.json": dump({"dataset": "tool_calls_stdlib", "python": sys.version.split()[0], "seed": SEED,
                                 "train": len(train), "eval": len(held_out), "functions": len(FUNCTIONS),
                                 "tools_per_example": TOOLS_PER_EXAMPLE,
                                 "licence": "PSF-2.0 (Python standard library docstrings and file names)"}),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="compare with the shipped files instead of writing")
    check = ap.parse_args().check
    OUT.mkdir(parents=True, exist_ok=True)
    differ = []
    for name, text in build().items():
        path = OUT / name
        if check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                differ.append(name)
            continue
        tmp = path.with_suffix(path.suffix + ".tmp")  # never a half-written file
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    if differ:
        print(f"differs from a rebuild: {', '.join(differ)}", file=sys.stderr)
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
