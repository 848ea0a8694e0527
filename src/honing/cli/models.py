"""`hone models ...`: the model catalog."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="The model catalog: the embedded default and models already converted.", no_args_is_help=True)


@app.command("list")
def list_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """Show the embedded default model and the models already cached."""
    from honing.models import cache_root, list_models

    rows = list_models()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"Models (cache: {cache_root() / 'models'})")
    for col in ("name", "description", "source", "installed", "cached", "family", "what works"):
        table.add_column(col)
    for r in rows:
        name = r["name"] + (" (default)" if r["default"] else "")
        table.add_row(name, r["description"], r["source"], "yes" if r["installed"] else "no",
                      "yes" if r["cached"] else "no", r["family"], r["works"])
    Console().print(table)


@app.command("prepare")
def prepare_cmd(model: str = typer.Argument("smollm2-135m-instruct", help="Catalog name, HF directory or .gguf.")) -> None:
    """Resolve a model now (converting a GGUF into the safetensors cache) and print where it lives."""
    from honing.models import resolve_model

    r = resolve_model(model)
    print(json.dumps(r.identity(), indent=2))
