"""Server paths never reach a client. What the training process and the libraries write (events, errors, the
evaluation report, a file's validation) names files by their place on the server; before it is stored as a
job event or error, or served, each such path is replaced by what the client knows it as: an uploaded file
by its id (``file-...``), a run by its job id (``ftjob-.../eval``), anything else under the data dir by its
place in it."""

from __future__ import annotations

import re

from honing.serve.settings import Settings


class Redactor:
    def __init__(self, settings: Settings):
        def under(root) -> str:
            return re.escape(str(root).rstrip("/")) + "/"

        self.rules = [
            (re.compile(under(settings.files_dir) + r"(file-[0-9a-f]+)(?:\.[A-Za-z0-9]+)?"), r"\1"),
            (re.compile(under(settings.runs_dir)), ""),
            (re.compile(under(settings.checkpoints_dir)), ""),
            (re.compile(under(settings.data_dir)), ""),
            (re.compile(re.escape(str(settings.data_dir).rstrip("/")) + r"\b"), "DATA_DIR"),
        ]

    def text(self, s: str) -> str:
        for pattern, repl in self.rules:
            s = pattern.sub(repl, s)
        return s

    def data(self, obj):
        """``obj`` (JSON-like) with every string redacted."""
        if isinstance(obj, str):
            return self.text(obj)
        if isinstance(obj, dict):
            return {k: self.data(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self.data(v) for v in obj]
        return obj
