"""Build the demo dataset examples/docstring_module/ from the Python standard library's own docstrings.

The task: given the first paragraph of a docstring of a function, method or class from the standard
library, answer with the name of the module (package) it comes from, one of ten labels. It is a
classification task with an exact output format, so the base model's chatty prose fails and a
fine-tune that learned the labels and the format can succeed.

Where the text comes from: the docstrings of this interpreter's standard library (PSF License 2.0),
read two ways so that C-implemented functions count too:

* source: every ``def``/``class`` docstring in the package's ``.py`` files (``ast.get_docstring``),
  tests excluded, plus the pure-Python twin of a C module where one exists (``_pydecimal``);
* runtime: public callables and class attributes of the imported module whose ``__module__`` belongs
  to the label (so ``os.stat``, implemented in ``posix``, counts for ``os``; a class that ``logging``
  merely imports from ``string`` does not).

Cleaning: first paragraph, whitespace collapsed, at least 5 words, cut to 60 words. Docstrings that
name their own label as a word are dropped (``"Return the socket's ..."`` would make the task copy,
not inference). Texts that occur under two labels are dropped (genuinely ambiguous), and the rest are
deduplicated after lower-casing and stripping punctuation, so no prompt appears twice in either split.

Split: per label, the sorted texts are shuffled with ``random.Random(SEED)``; the first
``EVAL_PER_LABEL`` go to eval, at most ``TRAIN_PER_LABEL`` of the rest to train.

Re-running on the same Python version reproduces the files byte for byte; other versions change the
docstrings (the README records the version used). Usage::

    python scripts/build_example_data.py            # writes examples/docstring_module/
    python scripts/build_example_data.py --check    # exits 1 if the shipped files differ
"""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import json
import os
import random
import re
import sys
import sysconfig
import tempfile
from collections import Counter
from pathlib import Path

SEED = 20240613
EVAL_PER_LABEL = 24
TRAIN_PER_LABEL = 100
MIN_WORDS = 5
MAX_WORDS = 60

# Ten packages with distinct subject matter and 100+ usable docstrings each.
LABELS: tuple[str, ...] = (
    "asyncio", "decimal", "email", "http", "importlib", "logging", "os", "tkinter", "unittest", "xml",
)
# Pure-Python twins whose docstrings are the C module's (the C builds expose the same text at runtime).
EXTRA_SOURCES = {"decimal": ["_pydecimal.py"]}
# Modules whose objects count as the label's at runtime (C implementations behind the public name).
RUNTIME_OWNERS = {"os": ("os", "posix", "nt"), "decimal": ("decimal", "_decimal", "_pydecimal")}

SYSTEM_PROMPT = (
    "You are given the docstring of a function, method or class from the Python standard library. "
    "Reply with only the name of the module it comes from, one of: " + ", ".join(LABELS) + "."
)

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "examples" / "docstring_module"


# ---------------------------------------------------------------------------------------------- collect
def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def source_files(label: str) -> list[Path]:
    """The label's ``.py`` files, tests excluded, in a stable order."""
    lib = stdlib_dir()
    pkg = lib / label
    if pkg.is_dir():
        files = [f for f in pkg.rglob("*.py") if not any(part.startswith("test") for part in f.parts)]
    else:
        files = [lib / f"{label}.py"]
    files += [lib / name for name in EXTRA_SOURCES.get(label, [])]
    return sorted(f for f in files if f.is_file())


def docstrings_from_source(label: str) -> list[str]:
    """Docstrings of every function, method and class (not the module's own) in the label's sources."""
    out = []
    for path in source_files(label):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                doc = ast.get_docstring(node)
                if doc:
                    out.append(doc)
    return out


def _owned(obj, owners: tuple[str, ...]) -> bool:
    module = getattr(obj, "__module__", None) or ""
    return module.split(".")[0] in owners


def docstrings_from_runtime(label: str) -> list[str]:
    """Docstrings of the imported module's public callables and their class attributes.

    Catches what the sources cannot show: functions written in C (``os.stat`` lives in ``posix``).
    A module that cannot be imported here (``tkinter`` without Tk) contributes its sources only.
    """
    try:
        module = importlib.import_module(label)
    except ImportError:
        return []
    owners = RUNTIME_OWNERS.get(label, (label,))
    out = []
    for name, value in sorted(vars(module).items()):
        if name.startswith("_") or not callable(value) or not _owned(value, owners):
            continue
        if isinstance(value.__doc__, str):
            out.append(inspect.cleandoc(value.__doc__))
        if inspect.isclass(value):
            for attr, member in sorted(vars(value).items()):
                doc = getattr(member, "__doc__", None)
                # Skip attributes that just inherit a builtin's docstring (e.g. int.__doc__).
                if attr.startswith("_") or not isinstance(doc, str) or doc is getattr(type(member), "__doc__", None):
                    continue
                out.append(inspect.cleandoc(doc))
    return out


# ------------------------------------------------------------------------------------------------ clean
def clean(doc: str) -> str | None:
    """First paragraph, whitespace collapsed, cut to MAX_WORDS words; None if too short to classify."""
    first = doc.strip().split("\n\n")[0]
    words = first.split()
    if len(words) < MIN_WORDS:
        return None
    if len(words) > MAX_WORDS:
        return " ".join(words[:MAX_WORDS]) + " ..."
    return " ".join(words)


def names_label(text: str, label: str) -> bool:
    return re.search(rf"\b{re.escape(label)}\b", text, flags=re.IGNORECASE) is not None


def dedupe_key(text: str) -> str:
    """Texts equal after lower-casing and dropping punctuation count as the same prompt."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def collect() -> dict[str, list[str]]:
    """label -> sorted unique cleaned docstrings, with cross-label and label-naming texts removed."""
    by_key: dict[str, set[str]] = {}
    text_of: dict[str, str] = {}
    for label in LABELS:
        for doc in docstrings_from_source(label) + docstrings_from_runtime(label):
            text = clean(doc)
            if text is None or names_label(text, label):
                continue
            key = dedupe_key(text)
            by_key.setdefault(key, set()).add(label)
            # Keep the lexicographically smallest spelling so the choice does not depend on read order.
            text_of[key] = min(text_of.get(key, text), text)
    pools: dict[str, list[str]] = {label: [] for label in LABELS}
    for key, labels in by_key.items():
        if len(labels) == 1:  # the same text under two labels cannot be classified
            pools[next(iter(labels))].append(text_of[key])
    return {label: sorted(texts) for label, texts in pools.items()}


# ------------------------------------------------------------------------------------------------ split
def split(pools: dict[str, list[str]]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Stratified, seeded split -> (train, eval) lists of (docstring, label), each shuffled."""
    rng = random.Random(SEED)
    train, held_out = [], []
    for label in LABELS:
        texts = list(pools[label])
        if len(texts) < EVAL_PER_LABEL + 20:
            raise SystemExit(f"label {label!r}: only {len(texts)} usable docstrings on Python {sys.version}")
        rng.shuffle(texts)
        held_out += [(t, label) for t in texts[:EVAL_PER_LABEL]]
        train += [(t, label) for t in texts[EVAL_PER_LABEL:EVAL_PER_LABEL + TRAIN_PER_LABEL]]
    rng.shuffle(train)
    rng.shuffle(held_out)
    return train, held_out


def to_chat(text: str, label: str) -> dict:
    return {"messages": [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": text},
        {"role": "assistant", "content": label},
    ]}


def jsonl(rows: list[tuple[str, str]]) -> str:
    return "".join(json.dumps(to_chat(t, lab), ensure_ascii=False) + "\n" for t, lab in rows)


def reference_docs(label: str, example_keys: list[str]) -> str:
    """Module-level docstrings of the label's sources: reference text for the retrieval baseline.

    These are never used as examples (only def/class docstrings are), so retrieval sees the package's
    own description, not the answers. A module docstring that contains an example's text (some repeat
    their main class's docstring word for word) is left out, or retrieval would look the answer up.
    """
    parts = []
    lib = stdlib_dir()
    for path in source_files(label):
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        if doc and len(doc.split()) >= MIN_WORDS:
            if any(key in dedupe_key(doc) for key in example_keys):
                continue
            name = path.relative_to(lib).with_suffix("").as_posix().replace("/__init__", "").replace("/", ".")
            parts.append(f"## {name}\n\n{doc.strip()}\n")
    return f"# The Python standard library: {label}\n\n" + "\n".join(parts)


# ------------------------------------------------------------------------------------------------ write
def build() -> dict[str, str]:
    """relative path -> file content of everything the script ships."""
    train, held_out = split(collect())
    files = {"train.jsonl": jsonl(train), "eval.jsonl": jsonl(held_out)}
    # The docstrings depend on the interpreter, so the version is part of the dataset's identity.
    info = {
        "python": sys.version.split()[0],
        "seed": SEED,
        "labels": list(LABELS),
        "train": len(train),
        "eval": len(held_out),
        "train_per_label": dict(sorted(Counter(label for _, label in train).items())),
        "eval_per_label": dict(sorted(Counter(label for _, label in held_out).items())),
        "licence": "PSF-2.0 (Python standard library docstrings)",
    }
    files["build_info.json"] = json.dumps(info, indent=2) + "\n"
    example_keys = [dedupe_key(text) for text, _ in train + held_out]
    for label in LABELS:
        files[f"docs/{label}.md"] = reference_docs(label, example_keys)
    return files


def write_atomic(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(content)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output directory")
    parser.add_argument("--check", action="store_true", help="compare with the files in --out; write nothing")
    args = parser.parse_args(argv)
    files = build()
    if args.check:
        stale = [rel for rel, text in files.items()
                 if not (args.out / rel).is_file() or (args.out / rel).read_text(encoding="utf-8") != text]
        for rel in stale:
            print(f"differs: {args.out / rel}")
        print(f"Python {sys.version.split()[0]}: {'up to date' if not stale else f'{len(stale)} file(s) differ'}")
        return 1 if stale else 0
    for rel, text in files.items():
        write_atomic(args.out / rel, text)
    info = json.loads(files["build_info.json"])
    print(f"Python {info['python']}: wrote {args.out}: train {info['train']}, eval {info['eval']}; "
          f"train per label {info['train_per_label']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
