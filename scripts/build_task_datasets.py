"""Build the example datasets beyond the demo: three tasks of different kinds, from real text we may ship.

* ``unicode_category`` (classification, 24 labels): a character's code point and Unicode name ->
  its general category, e.g. ``U+2192 RIGHTWARDS ARROW`` -> ``math symbol``. Labels come from
  ``unicodedata`` itself (Unicode Character Database, Unicode licence).
* ``signature_json`` (structured output against a JSON schema): a function signature from the
  standard library's sources -> a JSON object of its parameters, e.g. ``copy(src, dst, *,
  follow_symlinks=True)`` -> ``{"name": "copy", "required": ["src", "dst"], ...}``. The answer is
  read from the same syntax tree (``ast``), so it is right by construction (PSF licence).
* ``code_summary`` (short generation in a house style): the body of a short standard-library
  function, its docstring removed -> the docstring's own one-line summary, kept only where the author
  wrote it in the house style (one imperative sentence, 3-16 words, ending with a period), e.g.
  ``"Return True if the file descriptor is open."`` (PSF licence).

Every dataset directory gets ``train.jsonl`` and ``eval.jsonl`` (OpenAI chat JSONL: system, user,
assistant; no normalized prompt twice, none shared between the splits), ``build_info.json`` (Python
version, seed, sizes, licence), ``hone_eval.json`` (what ``hone eval`` should measure: the metric and,
for JSON, the schema file beside it) and, for the JSON task, ``schema.json``. The README of each
dataset is written by hand.

Re-running on the same Python version reproduces the files byte for byte (sources are read in sorted
order, every shuffle is seeded, code is printed by ``ast.unparse``); another Python version changes
the standard library and Unicode data, so each ``build_info.json`` records the version. Usage::

    python scripts/build_task_datasets.py                      # all three, into examples/<name>/
    python scripts/build_task_datasets.py signature_json       # one of them
    python scripts/build_task_datasets.py --check              # exit 1 if a shipped file differs
"""

from __future__ import annotations

import argparse
import ast
import functools
import json
import random
import re
import sys
import sysconfig
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
SEED = 20261124
_WORD = re.compile(r"\w+")


# ------------------------------------------------------------------------------------------- shared
def normalized(text: str) -> str:
    """The key Honing's leakage check compares (``honing.data.curate.normalize``): case-folded words."""
    return " ".join(_WORD.findall(text.casefold()))


def chat(system: str, user: str, assistant: str) -> dict:
    return {"messages": [
        {"role": "system", "content": system},
        {"role": "user", "content": user},
        {"role": "assistant", "content": assistant},
    ]}


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def dump(value) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


def unique_by_prompt(pairs: Iterator[tuple[str, str]]) -> list[tuple[str, str]]:
    """(prompt, answer) pairs with one per normalized prompt (the first in sorted order), sorted.

    Two prompts equal after normalization count as one: kept apart they would leak between the splits.
    """
    seen: dict[str, tuple[str, str]] = {}
    for prompt, answer in sorted(pairs):
        seen.setdefault(normalized(prompt), (prompt, answer))
    return sorted(seen.values())


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_sources() -> list[Path]:
    """The standard library's own ``.py`` files in a stable order: no tests, no third-party packages."""
    lib = stdlib_dir()
    skip = ("site-packages", "dist-packages", "lib2to3", "idlelib", "turtledemo", "ensurepip", "__phello__")
    out = []
    for path in lib.rglob("*.py"):
        parts = path.relative_to(lib).parts
        if any(p in skip or p.startswith("test") or p.endswith("tests") for p in parts):
            continue
        out.append(path)
    return sorted(out)


@functools.cache
def stdlib_functions() -> tuple[ast.FunctionDef, ...]:
    """Every public ``def`` (functions and methods; no dunders, no ``_private``) in the standard
    library's sources, parsed once for both tasks that read them (nothing here mutates the trees)."""
    out = []
    for path in stdlib_sources():
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except (SyntaxError, UnicodeDecodeError):  # a few files are templates or Python 2 on purpose
            continue
        out += [node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and not node.name.startswith("_")]
    return tuple(out)


def info(name: str, licence: str, train: list, held_out: list, **extra) -> str:
    return dump({"dataset": name, "python": sys.version.split()[0], "seed": SEED, "train": len(train), "eval": len(held_out), **extra, "licence": licence})


# ------------------------------------------------------------------------------- unicode_category
# The Unicode general categories, long names in words (PropertyValueAliases.txt: Lu = Uppercase_Letter).
# Cc, Cs, Co and Cn have no character names; Zl and Zp one character each: they are left out.
CATEGORIES = {
    "Lu": "uppercase letter", "Ll": "lowercase letter", "Lt": "titlecase letter", "Lm": "modifier letter",
    "Lo": "other letter", "Mn": "nonspacing mark", "Mc": "spacing mark", "Me": "enclosing mark",
    "Nd": "decimal number", "Nl": "letter number", "No": "other number", "Pc": "connector punctuation",
    "Pd": "dash punctuation", "Ps": "open punctuation", "Pe": "close punctuation",
    "Pi": "initial punctuation", "Pf": "final punctuation", "Po": "other punctuation",
    "Sm": "math symbol", "Sc": "currency symbol", "Sk": "modifier symbol", "So": "other symbol",
    "Zs": "space separator", "Cf": "format",
}
UNICODE_SYSTEM = "Reply with only the Unicode general category of this character, one of: " + ", ".join(
    CATEGORIES.values()) + "."
# Names generated from the code point (CJK UNIFIED IDEOGRAPH-4E00, HANGUL SYLLABLE GA, ...) say
# nothing a model could learn from; they would also swamp "other letter".
GENERATED_NAMES = ("CJK UNIFIED IDEOGRAPH", "CJK COMPATIBILITY IDEOGRAPH", "HANGUL SYLLABLE", "TANGUT",
                   "KHITAN SMALL SCRIPT CHARACTER", "NUSHU CHARACTER", "EGYPTIAN HIEROGLYPH", "CUNEIFORM",
                   "YI SYLLABLE", "LINEAR B", "ANATOLIAN HIEROGLYPH", "BAMUM")
UNICODE_EVAL_PER_LABEL = 8
UNICODE_TRAIN_PER_LABEL = 50


def unicode_pools() -> dict[str, list[str]]:
    """category label -> prompts ``U+XXXX NAME`` of every named character in it, in code point order."""
    pools: dict[str, list[str]] = {label: [] for label in CATEGORIES.values()}
    for cp in range(sys.maxunicode + 1):
        name = unicodedata.name(chr(cp), "")
        label = CATEGORIES.get(unicodedata.category(chr(cp)))
        if name and label and not name.startswith(GENERATED_NAMES):
            pools[label].append(f"U+{cp:04X} {name}")
    return pools


def build_unicode_category() -> dict[str, str]:
    """Stratified: per label min(8, half) held out, at most 50 of the rest for training (a long tail:
    the rarest categories have a handful of characters in all)."""
    rng = random.Random(SEED)
    train, held_out = [], []
    for label, prompts in unicode_pools().items():
        rng.shuffle(prompts)
        n_eval = min(UNICODE_EVAL_PER_LABEL, len(prompts) // 2)
        held_out += [(p, label) for p in prompts[:n_eval]]
        train += [(p, label) for p in prompts[n_eval:n_eval + UNICODE_TRAIN_PER_LABEL]]
    rng.shuffle(train)
    rng.shuffle(held_out)
    rows = {name: [chat(UNICODE_SYSTEM, p, label) for p, label in split]
            for name, split in (("train", train), ("eval", held_out))}
    return {
        "train.jsonl": jsonl(rows["train"]),
        "eval.jsonl": jsonl(rows["eval"]),
        "hone_eval.json": dump({"metric": "classification"}),
        "build_info.json": info(
            "unicode_category", "Unicode-DFS-2016 (Unicode Character Database data files, via Python's unicodedata)",
            train, held_out, unicode=unicodedata.unidata_version, labels=list(CATEGORIES.values()),
            train_per_label=dict(sorted(Counter(label for _, label in train).items())),
            eval_per_label=dict(sorted(Counter(label for _, label in held_out).items()))),
    }


# --------------------------------------------------------------------------------- signature_json
SIGNATURE_SYSTEM = (
    "Extract the parameters of this Python function signature as JSON with the keys name, required "
    "(parameters without a default, in order), optional (parameter -> default, as written), "
    "keyword_only (names after * or *args) and variadic (\"*args\"/\"**kwargs\" as written, or []). "
    "Reply with the JSON only."
)
SIGNATURE_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "The parameters of a Python function signature",
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
        "required": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
        "optional": {"type": "object", "additionalProperties": {"type": "string"}},
        "keyword_only": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
        "variadic": {"type": "array", "items": {"type": "string", "pattern": r"^\*\*?[A-Za-z_][A-Za-z0-9_]*$"},
                     "maxItems": 2},
    },
    "required": ["name", "required", "optional", "keyword_only", "variadic"],
    "additionalProperties": False,
}
SIGNATURE_MAX_CHARS = 90  # the signature as printed; keeps prompt + answer well under 200 tokens
SIGNATURE_MAX_PARAMS = 7
SIGNATURE_TRAIN = 1000
SIGNATURE_EVAL = 200
RICH_SHARE = 0.6


def signature_facts(node: ast.FunctionDef) -> dict:
    """The answer, read from the syntax tree: what the prompt's signature says, nothing more."""
    a = node.args
    positional = a.posonlyargs + a.args
    # Defaults belong to the last positional parameters; keyword-only ones pair up with kw_defaults.
    pos_defaults = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
    pairs = list(zip(positional, pos_defaults)) + list(zip(a.kwonlyargs, a.kw_defaults))
    variadic = ([f"*{a.vararg.arg}"] if a.vararg else []) + ([f"**{a.kwarg.arg}"] if a.kwarg else [])
    return {
        "name": node.name,
        "required": [p.arg for p, d in pairs if d is None],
        "optional": {p.arg: ast.unparse(d) for p, d in pairs if d is not None},
        "keyword_only": [p.arg for p in a.kwonlyargs],
        "variadic": variadic,
    }


def signature_pairs() -> Iterator[tuple[str, str]]:
    for node in stdlib_functions():
        a = node.args
        params = a.posonlyargs + a.args + a.kwonlyargs + [p for p in (a.vararg, a.kwarg) if p]
        if not params or len(params) > SIGNATURE_MAX_PARAMS or any(p.annotation for p in params):
            continue
        text = f"{node.name}({ast.unparse(a)})"
        if len(text) <= SIGNATURE_MAX_CHARS:
            yield text, json.dumps(signature_facts(node), ensure_ascii=False)


def sample_split(pairs: list[tuple[str, str]], n_train: int, n_eval: int,
                 rng: random.Random | None = None) -> tuple[list, list]:
    """A seeded sample of ``n_eval`` held-out and ``n_train`` training pairs, disjoint."""
    if len(pairs) < n_train + n_eval:
        raise SystemExit(f"only {len(pairs)} usable examples on Python {sys.version.split()[0]}")
    chosen = list(pairs)
    (rng or random.Random(SEED)).shuffle(chosen)
    return chosen[n_eval:n_eval + n_train], chosen[:n_eval]


def is_rich(answer: str) -> bool:
    facts = json.loads(answer)
    return bool(facts["optional"] or facts["keyword_only"] or facts["variadic"])


def build_signature_json() -> dict[str, str]:
    """Most stdlib signatures take required parameters only (4 in 5); those would teach one easy
    shape, so RICH_SHARE of each split has a default, a keyword-only parameter or *args/**kwargs."""
    pairs = unique_by_prompt(signature_pairs())
    rich = [(p, a) for p, a in pairs if is_rich(a)]
    plain = [(p, a) for p, a in pairs if not is_rich(a)]
    rng = random.Random(SEED)
    n_rich_train, n_rich_eval = round(SIGNATURE_TRAIN * RICH_SHARE), round(SIGNATURE_EVAL * RICH_SHARE)
    rich_train, rich_eval = sample_split(rich, n_rich_train, n_rich_eval, rng)
    plain_train, plain_eval = sample_split(plain, SIGNATURE_TRAIN - n_rich_train, SIGNATURE_EVAL - n_rich_eval, rng)
    train, held_out = rich_train + plain_train, rich_eval + plain_eval
    rng.shuffle(train)
    rng.shuffle(held_out)
    shapes = Counter()
    for _, answer in train + held_out:
        facts = json.loads(answer)
        shapes.update(k for k in ("optional", "keyword_only", "variadic") if facts[k])
    return {
        "train.jsonl": jsonl([chat(SIGNATURE_SYSTEM, p, a) for p, a in train]),
        "eval.jsonl": jsonl([chat(SIGNATURE_SYSTEM, p, a) for p, a in held_out]),
        "schema.json": dump(SIGNATURE_SCHEMA),
        "hone_eval.json": dump({"metric": "json", "schema": "schema.json"}),
        "build_info.json": info(
            "signature_json", "PSF-2.0 (Python standard library sources)", train, held_out,
            candidates=len(pairs), examples_with=dict(sorted(shapes.items()))),
    }


# ----------------------------------------------------------------------------------- code_summary
SUMMARY_SYSTEM = (
    "Write the one-line docstring summary of this Python function in our house style: one imperative "
    "sentence (\"Return ...\", not \"Returns ...\"), at most 16 words, ending with a period. Reply with "
    "the sentence only."
)
# The house style, as a pattern: a capitalised verb first, one sentence, a period at the end.
HOUSE_STYLE = re.compile(r"[A-Z][a-z]+(?<!s) [^.!?:;`\n]*[a-z0-9)'\"]\.")
# First words the pattern lets through that are no imperative verb ("The ...", "Same as ...").
NOT_VERBS = frozenset({"The", "This", "That", "Same", "Called", "True", "False", "Special", "Error", "Like",
                       "If", "When", "Convenience", "Decorator", "Number", "Helper", "Internal", "Used",
                       "Default", "Alias", "Deprecated", "Override", "Obsolete", "Equivalent"})
SUMMARY_WORDS = (3, 16)
CODE_MAX_CHARS = 280  # the body as ast.unparse prints it: ~80 tokens
CODE_MAX_LINES = 8
SUMMARY_TRAIN = 1000
SUMMARY_EVAL = 200


def house_summary(doc: str | None) -> str | None:
    """The docstring's first line when the author wrote it in the house style and it stands alone."""
    if not doc:
        return None
    lines = doc.strip().splitlines()
    first = lines[0].strip()
    # A summary that wraps onto the next line is cut mid-sentence; PEP 257 wants a blank line after.
    if len(lines) > 1 and lines[1].strip():
        return None
    words = first.split()
    if (not HOUSE_STYLE.fullmatch(first) or words[0] in NOT_VERBS
            or not SUMMARY_WORDS[0] <= len(words) <= SUMMARY_WORDS[1]):
        return None
    return first


def without_docstring(node: ast.FunctionDef) -> str | None:
    """The function's code, decorators and docstring dropped (None if nothing is left)."""
    body = node.body[1:]
    # ``pass`` or ``...`` alone: an abstract method, nothing to summarise.
    if all(isinstance(s, ast.Pass) or isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant)
           for s in body):
        return None
    bare = ast.FunctionDef(name=node.name, args=node.args, body=body, decorator_list=[], returns=node.returns,
                           type_comment=None, lineno=node.lineno, col_offset=node.col_offset)
    return ast.unparse(bare)


def summary_pairs() -> Iterator[tuple[str, str]]:
    for node in stdlib_functions():
        summary = house_summary(ast.get_docstring(node))
        if summary is None:
            continue
        code = without_docstring(node)
        # A body that only raises NotImplementedError says nothing about what the function is for.
        if (code and len(code) <= CODE_MAX_CHARS and code.count("\n") < CODE_MAX_LINES
                and "raise NotImplementedError" not in code):
            yield code, summary


def split_by_answer(pairs: list[tuple[str, str]], n_train: int, n_eval: int) -> tuple[list, list]:
    """A seeded split in which no (normalized) answer is on both sides.

    Near-twins share a summary (``readline`` of gzip, bz2 and lzma: "Read a line of uncompressed bytes
    from the file."); split apart, few-shot would copy the twin's answer and the score would measure
    lookup. Whole groups go to eval until it is full; what is left of the last group is dropped.
    """
    groups: dict[str, list[tuple[str, str]]] = {}
    for pair in pairs:
        groups.setdefault(normalized(pair[1]), []).append(pair)
    order = sorted(groups)
    rng = random.Random(SEED)
    rng.shuffle(order)
    held_out: list[tuple[str, str]] = []
    while len(held_out) < n_eval:
        held_out += groups.pop(order.pop(0))
    held_out = held_out[:n_eval]
    train = [pair for key in order for pair in groups[key]]
    if len(train) < n_train:
        raise SystemExit(f"only {len(train) + n_eval} usable examples on Python {sys.version.split()[0]}")
    rng.shuffle(train)
    rng.shuffle(held_out)
    return train[:n_train], held_out


def build_code_summary() -> dict[str, str]:
    pairs = unique_by_prompt(summary_pairs())
    train, held_out = split_by_answer(pairs, SUMMARY_TRAIN, SUMMARY_EVAL)
    verbs = Counter(answer.split()[0] for _, answer in train + held_out)
    return {
        "train.jsonl": jsonl([chat(SUMMARY_SYSTEM, p, a) for p, a in train]),
        "eval.jsonl": jsonl([chat(SUMMARY_SYSTEM, p, a) for p, a in held_out]),
        "hone_eval.json": dump({"metric": "text"}),
        "build_info.json": info(
            "code_summary", "PSF-2.0 (Python standard library sources and docstrings)", train, held_out,
            candidates=len(pairs), first_words=dict(verbs.most_common(10))),
    }


# ------------------------------------------------------------------------------------------- write
BUILDERS: dict[str, Callable[[], dict[str, str]]] = {
    "unicode_category": build_unicode_category,
    "signature_json": build_signature_json,
    "code_summary": build_code_summary,
}


def write_atomic(path: Path, content: str) -> None:
    from honing.fileio import write_text_atomic  # the project's one atomic writer (UTF-8, renamed into place)

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, content)


def stale_files(out: Path, files: dict[str, str]) -> list[Path]:
    return [out / rel for rel, text in files.items()
            if not (out / rel).is_file() or (out / rel).read_text(encoding="utf-8") != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"datasets to build (default: all): {', '.join(BUILDERS)}")
    parser.add_argument("--out-root", type=Path, default=EXAMPLES, help="parent of the dataset directories")
    parser.add_argument("--check", action="store_true", help="compare with the files in place; write nothing")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BUILDERS]
    if unknown:
        parser.error(f"unknown dataset(s) {', '.join(unknown)}: choose from {', '.join(BUILDERS)}")
    failed = 0
    for name in args.names or list(BUILDERS):
        files, out = BUILDERS[name](), args.out_root / name
        if args.check:
            stale = stale_files(out, files)
            for path in stale:
                print(f"differs: {path}")
            print(f"{name}: Python {sys.version.split()[0]}: "
                  f"{'up to date' if not stale else f'{len(stale)} file(s) differ'}")
            failed += bool(stale)
            continue
        for rel, text in files.items():
            write_atomic(out / rel, text)
        meta = json.loads(files["build_info.json"])
        print(f"{name}: wrote {out}: train {meta['train']}, eval {meta['eval']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
