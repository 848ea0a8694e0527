"""Fetch a released tokenizer file the family tests read, from a package's wheel on PyPI, without
installing the package.

    python scripts/test_assets.py DEST_DIR

Mistral 7B v0.3's SentencePiece model ships in mistral-common's wheel. Installing mistral-common --no-deps
would break transformers' AutoTokenizer for every Mistral model directory (it imports mistral_common when
importable, then fails on the missing compiled dependencies), so only the one file is taken out of the
wheel. Idempotent: an existing file is kept. Written atomically (no half-written file on failure).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

# (package==version, file inside the wheel)
ASSETS = [("mistral-common==1.13.1", "mistral_common/data/mistral_instruct_tokenizer_240323.model.v3")]


def fetch(requirement: str, member: str, dest: Path) -> Path:
    target = dest / Path(member).name
    if target.is_file():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
                        requirement, "-d", tmp], check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            data = zf.read(member)
    dest.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, target)
    return target


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    for requirement, member in ASSETS:
        print(f"test asset: {fetch(requirement, member, Path(argv[0]))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
