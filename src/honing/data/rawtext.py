"""Raw domain text for continued pre-training: plain-text files, or a folder of .txt/.md files.

A data-layer reader (like ``honing.data.formats`` for records): one ``RawText`` per file, in sorted order,
and the fingerprint of a file or folder. ``honing.train.cpt`` turns the documents into training blocks.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from honing.data.conversation import RawText
from honing.errors import DataError

TEXT_SUFFIXES = (".txt", ".md")


def is_raw_text_source(path: str | Path) -> bool:
    """A folder, or a plain-text file: what :func:`read_raw_documents` reads (JSONL text records go through
    the ordinary data reader)."""
    p = Path(path)
    return p.is_dir() or p.suffix.lower() in TEXT_SUFFIXES


def _text_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not files:
        raise DataError(f"{path}: no .txt or .md files in this folder")
    return files


def read_raw_documents(path: str | Path) -> list[RawText]:
    """One RawText per file (a .txt/.md file, or every such file under a folder, in sorted order).
    ``line`` is the file's 1-based position in that order."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file or folder")
    docs = []
    for i, f in enumerate(_text_files(p), start=1):
        try:
            text = f.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{f}: byte {e.start} is not valid UTF-8 (save the file as UTF-8)") from None
        if text.strip():
            docs.append(RawText(text, line=i))
    if not docs:
        raise DataError(f"{p}: the text is empty")
    return docs


def source_sha256(path: str | Path) -> str:
    """The fingerprint of a file, or of a folder's text files (names and contents, in order)."""
    p = Path(path)
    h = hashlib.sha256()
    for f in _text_files(p):
        h.update(str(f.relative_to(p) if p.is_dir() else f.name).encode() + b"\0")
        h.update(f.read_bytes())
        h.update(b"\0")
    return h.hexdigest()
