"""`hone export`: a finished run to GGUF (merged or LoRA), an Ollama folder, a vLLM/PEFT adapter or a
merged transformers model. Parsing and printing only; the work is honing.export.export_run."""

from __future__ import annotations

import typer


def export_cmd(
    run_dir: str = typer.Argument(..., help="A finished run directory (hone train --out ...)."),
    fmt: str = typer.Option("gguf", "--format", "-f", help="gguf | gguf-lora | ollama | vllm | peft | hf."),
    quant: str = typer.Option("f16", "--quant", help="GGUF precision: f32 | f16 | q8_0 (gguf, gguf-lora, ollama)."),
    out: str = typer.Option(None, "--out", help="Output file (gguf) or folder (others). Default: RUN_DIR/export/..."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output."),
    adapter: bool = typer.Option(
        False, "--adapter", help="ollama: ship the base GGUF + the LoRA GGUF (ADAPTER) instead of merged weights."),
) -> None:
    """Export a fine-tuned run where models run: llama.cpp, Ollama, vLLM, PEFT, transformers."""
    from rich.console import Console

    from honing.export import export_run

    console = Console(highlight=False, soft_wrap=True)
    console.print(f"[bold]hone export[/] {run_dir} --format {fmt}")
    result = export_run(run_dir, fmt, out=out, quant=quant, force=force, ollama_adapter=adapter,
                        log=lambda msg: console.print(f"  {msg}"))
    for f in result.files:
        console.print(f"  {f.path}  {f.size:,} bytes  sha256 {f.sha256}")
    for note in result.notes:
        console.print(f"  note: {note}")
    console.print(f"[bold green]exported[/] {result.out}")


def register(app: typer.Typer) -> None:
    app.command(
        "export",
        help=(export_cmd.__doc__ or "")
        + "\n\nExamples: hone export runs/demo --format gguf --quant q8_0; hone export runs/demo --format ollama",
    )(export_cmd)
