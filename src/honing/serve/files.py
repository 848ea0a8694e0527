"""Files: uploads stored under DATA_DIR/files (atomically), their rows, and the validation report of
each fine-tune file (the same validator as ``hone data validate``, run once at upload)."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from sqlalchemy import select

from honing.fileio import atomic_path, write_bytes_atomic
from honing.serve.db import File, new_id, now
from honing.serve.errors import APIError
from honing.serve.settings import Settings

PURPOSES = ("fine-tune", "fine-tune-results", "assistants", "batch", "user_data", "evals", "vision")
UPLOAD_PURPOSES = ("fine-tune", "assistants", "batch", "user_data", "evals", "vision")
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
MAX_UPLOAD_BYTES = 1 << 30
CHUNK = 1 << 20


def file_object(f: File) -> dict:
    return {"id": f.id, "object": "file", "bytes": f.bytes, "created_at": f.created_at, "filename": f.filename,
            "purpose": f.purpose, "status": "processed", "status_details": None, "expires_at": None}


def _stored_name(file_id: str, filename: str) -> str:
    # The extension decides the container (JSONL, CSV, Parquet) for the validator and the trainer.
    suffix = Path(filename).suffix.lower()
    return file_id + (suffix if suffix in DATA_SUFFIXES else ".jsonl")


def clean_filename(name: str | None) -> str:
    name = Path(name or "upload.jsonl").name
    name = re.sub(r"[\x00-\x1f/\\]", "_", name).strip() or "upload.jsonl"
    return name[:255]


def validation_of(path: Path) -> dict:
    """`hone data validate` as JSON (no tokenizer: token statistics come with the job)."""
    from honing.data.validate import validate_file
    from honing.errors import HoningError

    try:
        return validate_file(path).to_json()
    except HoningError as e:
        return {"path": str(path), "ok": False, "errors": 1, "warnings": 0, "counts": {"unreadable": 1},
                "problems": [{"line": None, "category": "unreadable", "severity": "error", "message": str(e)}],
                "stats": {}}


def store_upload(settings: Settings, project: str, filename: str, purpose: str, stream) -> File:
    """Copy an upload stream to DATA_DIR/files atomically; return the (unsaved) row."""
    file_id = new_id("file")
    settings.files_dir.mkdir(parents=True, exist_ok=True)
    target = settings.files_dir / _stored_name(file_id, filename)
    digest, size = hashlib.sha256(), 0
    with atomic_path(target) as tmp, open(tmp, "wb") as out:
        while chunk := stream.read(CHUNK):
            size += len(chunk)
            if size > MAX_UPLOAD_BYTES:
                raise APIError(413, f"file: larger than {MAX_UPLOAD_BYTES} bytes", param="file")
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    row = File(id=file_id, project=project, filename=filename, purpose=purpose, bytes=size,
               sha256=digest.hexdigest(), path=str(target), created_at=now())
    if purpose == "fine-tune":
        row.validation = validation_of(target)
    return row


def store_bytes(session, settings: Settings, project: str, filename: str, purpose: str, data: bytes,
                validate: bool = True) -> File:
    file_id = new_id("file")
    settings.files_dir.mkdir(parents=True, exist_ok=True)
    target = settings.files_dir / _stored_name(file_id, filename)
    write_bytes_atomic(target, data)
    row = File(id=file_id, project=project, filename=filename, purpose=purpose, bytes=len(data),
               sha256=hashlib.sha256(data).hexdigest(), path=str(target), created_at=now(),
               validation=validation_of(target) if validate and purpose == "fine-tune" else None)
    session.add(row)
    return row


def get_file(session, project: str, file_id: str, param: str | None = None) -> File:
    f = session.scalar(select(File).where(File.id == file_id, File.project == project))
    if f is None:
        raise APIError(404, f"No such File object: {file_id}", param=param, code="file_not_found")
    return f
