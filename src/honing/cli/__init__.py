"""`hone`: the command line. Each sub-module owns one command group and holds no logic of its own:
it parses arguments, calls the library and prints."""

from __future__ import annotations

import os
import sys

import typer

from honing.errors import HoningError

# Never reach a model hub from the CLI; a user can still opt in by setting the variable to 0.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

app = typer.Typer(
    name="hone",
    help="Honing: fine-tune a pre-trained language model on your own examples, and prove it helped.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register() -> None:
    # Each group registers itself; import here so `hone --help` stays quick.
    from honing.cli import models as _models

    app.add_typer(_models.app, name="models")
    for name in ("data", "train", "evaluate", "chat", "demo", "export", "serve", "maintain", "grade"):
        try:
            mod = __import__(f"honing.cli.{name}", fromlist=["register"])
        except ModuleNotFoundError as e:
            if e.name == f"honing.cli.{name}":
                continue  # not built yet
            raise
        mod.register(app)


_register()


def main() -> None:
    try:
        app()
    except HoningError as e:
        from rich.console import Console

        Console(stderr=True).print(f"[bold red]error:[/] {e}", highlight=False)
        sys.exit(2)
