"""Build this example's raw-text corpus from the Python standard library's own docstrings (deterministic).

A document is one source file of the demo task's ten packages (asyncio, decimal, email, http, importlib,
logging, os, tkinter, unittest, xml): its module, class and function docstrings in source order, joined by
blank lines. Files are shuffled with a fixed seed; the first ``EVAL_FILES`` are the held-out domain text
(eval.jsonl), the rest the training corpus (train.jsonl), as ``{"text": ...}`` records cut to
``MAX_CHARS`` characters per document so the whole example trains in minutes on a 2-core CPU.

    python examples/cpt_stdlib_docs/build.py          # writes train.jsonl and eval.jsonl here
    python examples/cpt_stdlib_docs/build.py --check  # verifies the shipped files byte for byte
"""

from __future__ import annotations

import argparse
import ast
import json
import random
import sys
import sysconfig
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGES = ["asyncio", "decimal", "email", "http", "importlib", "logging", "os", "tkinter", "unittest", "xml"]
SEED = 11
EVAL_FILES = 8
MAX_CHARS = 3000
MIN_CHARS = 400
TRAIN_FILES = 40


def source_files() -> list[Path]:
    lib = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for name in PACKAGES:
        if (lib / name).is_dir():
            files += sorted(p for p in (lib / name).rglob("*.py") if "test" not in p.parts)
        elif (lib / f"{name}.py").is_file():
            files.append(lib / f"{name}.py")
    files.append(lib / "_pydecimal.py")
    return files


def docstrings(path: Path) -> str:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
    nodes.sort(key=lambda n: getattr(n, "lineno", 0))
    docs = [ast.get_docstring(n) for n in nodes]
    return "\n\n".join(d.strip() for d in docs if d and d.strip())


def build() -> dict[str, str]:
    lib = Path(sysconfig.get_paths()["stdlib"])
    texts = []
    for path in source_files():
        text = docstrings(path)
        if len(text) >= MIN_CHARS:
            texts.append((str(path.relative_to(lib)), text[:MAX_CHARS]))
    random.Random(SEED).shuffle(texts)
    held_out, train = texts[:EVAL_FILES], texts[EVAL_FILES : EVAL_FILES + TRAIN_FILES]

    def jsonl(rows):
        return "".join(json.dumps({"text": t, "metadata": {"file": f}}, ensure_ascii=False) + "\n" for f, t in rows)

    return {"train.jsonl": jsonl(train), "eval.jsonl": jsonl(held_out)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--check", action="store_true")
    files = build()
    if ap.parse_args().check:
        bad = [n for n, t in files.items() if (HERE / n).read_text(encoding="utf-8") != t]
        sys.exit(f"differ from what build.py makes: {', '.join(bad)}" if bad else 0)
    for name, text in files.items():
        (HERE / name).write_text(text, encoding="utf-8")
        print(f"wrote {text.count(chr(10))} documents to {HERE / name}")


if __name__ == "__main__":
    main()
