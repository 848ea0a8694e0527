"""Exporting a finished run to where models run: ``export_run(run_dir, format)``.

    format      what is written (default location: RUN/export/...)
    gguf        one GGUF file, the adapter merged into the fp32 base (f32 | f16 | q8_0)   llama.cpp, LM Studio
    gguf-lora   a folder: the base model as GGUF + the adapter as a GGUF LoRA              llama.cpp --lora
    ollama      a folder: GGUF(s) + Modelfile (TEMPLATE, SYSTEM, stop parameters)          ollama create
    vllm        a folder: the PEFT adapter + serve.sh (vllm serve --lora-modules)          vLLM, LoRAX
    peft        the PEFT adapter directory alone                                           PEFT, TGI
    hf          the merged model as a transformers directory (safetensors)                 transformers

Modules: ``merge`` (the fp32 merged model), ``gguf_names`` (architectures, llama.cpp tensor names,
Q/K permutation), ``tokenizer_meta`` (tokenizer metadata), ``gguf_writer`` (GGUFWriter calls),
``ollama`` + ``gotemplate`` (Modelfile, chat template translation), ``vllm`` (adapter folder).

Every output is written under a temporary name beside the target and renamed when complete
(``honing.fileio.atomic_path``): a failure, a full disk or ``kill -9`` leaves nothing half-written.
An existing output is refused unless ``force``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from honing.errors import HoningError, ModelError

FORMATS = ("gguf", "gguf-lora", "ollama", "vllm", "peft", "hf")
ADAPTER_ONLY = ("gguf-lora", "vllm", "peft")


class ExportError(HoningError):
    """An export that cannot be made as asked (run state, output path, disk)."""


@dataclass
class ExportedFile:
    path: Path
    size: int
    sha256: str


@dataclass
class ExportResult:
    format: str
    out: Path
    files: list[ExportedFile] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def default_out(run_dir: str | os.PathLike, fmt: str, quant: str = "f16") -> Path:
    run = Path(run_dir)
    name = {"gguf": f"{run.name}.{quant}.gguf", "gguf-lora": f"gguf-lora-{quant}"}.get(fmt, fmt)
    return run / "export" / name


def _check_run(run, fmt: str) -> None:
    record = run.record()  # a ModelError naming run.json when it is missing or corrupt
    if not (run.has_adapter() or run.has_full_model()):
        raise ExportError(f"{run.path} has no trained adapter or model in {run.final_dir} "
                          f"(status: {record.get('status', 'unknown')}); nothing to export")
    if not run.is_finished():
        raise ExportError(f"{run.path} has not finished training (status: {record.get('status', 'unknown')}); "
                          "export a completed run")
    if fmt in ADAPTER_ONLY and not run.has_adapter():
        raise ExportError(f"format '{fmt}' exports a LoRA adapter, but {run.path} is a full fine-tune; "
                          "use format 'gguf', 'ollama' or 'hf'")


def export_run(run_dir: str | os.PathLike, fmt: str = "gguf", out: str | os.PathLike | None = None,
               quant: str = "f16", force: bool = False, ollama_adapter: bool = False,
               log: Callable[[str], None] | None = None, merged=None) -> ExportResult:
    """Export the finished run in ``run_dir`` as ``fmt`` (see the module docstring) to ``out``.

    ``merged``: this run's ``honing.export.merge.load_merged(run_dir)``, reused instead of merging again
    (the merge is the slow part; a caller writing several precisions merges once)."""
    from honing.export.gguf_writer import QUANTS
    from honing.fileio import atomic_path
    from honing.rundir import RunDir

    log = log or (lambda _msg: None)
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format '{fmt}'; choose one of {', '.join(FORMATS)}")
    if quant not in QUANTS:
        raise ExportError(f"unknown quant '{quant}'; choose one of {', '.join(QUANTS)}")
    run = RunDir(run_dir)
    _check_run(run, fmt)
    if fmt in ("gguf", "gguf-lora", "ollama"):
        _check_gguf_architecture(run)
    target = Path(out) if out else default_out(run.path, fmt, quant)
    if target.exists() and not force:
        raise ExportError(f"{target} already exists; export with force to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    result = ExportResult(fmt, target)
    try:
        with atomic_path(target, overwrite=force) as tmp:
            _WRITERS[fmt](run, tmp, quant=quant, ollama_adapter=ollama_adapter, log=log, result=result,
                          merged=merged)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise ExportError(f"no space left on device while writing {target}; nothing was written") from e
        raise ExportError(f"could not write {target}: {e.strerror or e}; nothing was written") from e
    files = [target] if target.is_file() else sorted(p for p in target.rglob("*") if p.is_file())
    result.files = [ExportedFile(p, p.stat().st_size, sha256_file(p)) for p in files]
    return result


def _check_gguf_architecture(run) -> None:
    """An architecture or setting the GGUF writer cannot express is named before the slow merge: from the
    config.json alone (a full fine-tune's own, else the base model's)."""
    from transformers import AutoConfig

    from honing.export.gguf_families import check_exportable
    from honing.export.gguf_names import arch_spec
    from honing.models.catalog import resolve_model

    own = run.final_dir / "config.json"
    source = run.final_dir if own.is_file() else resolve_model(run.base_model_reference()).path
    config = AutoConfig.from_pretrained(str(source))
    check_exportable(config, arch_spec(config).gguf_arch)


# -- the formats -----------------------------------------------------------------------------------
def _declared_pre(run) -> str | None:
    from honing.export.tokenizer_meta import declared_pre_tokenizer

    return declared_pre_tokenizer((run.record().get("base_model") or {}).get("source_file"))


def _merged_gguf(run, path: Path, quant: str, log, merged=None):
    """Write the merged model (``merged``, else merged now) as GGUF at ``path``; returns (merged model,
    tokenizer metadata)."""
    from honing.export.gguf_names import arch_spec
    from honing.export.gguf_writer import write_model_gguf
    from honing.export.tokenizer_meta import tokenizer_meta

    merged = merged if merged is not None else _merge(run, log)
    arch_spec(merged.model.config)  # an unsupported architecture is named before anything else is checked
    meta = tokenizer_meta(merged.tokenizer, merged.tokenizer_dir, merged.model.config.vocab_size, _declared_pre(run))
    log(f"writing the GGUF ({quant}; tokenizer {meta.model}, pre-tokenizer {meta.pre})")
    write_model_gguf(path, merged.model, meta, quant, name=run.path.name)
    return merged, meta


def _merge(run, log):
    from honing.export.merge import load_merged

    log("merging the run into its fp32 base")
    return load_merged(run.path)


def _base_and_adapter_gguf(run, folder: Path, quant: str, log) -> tuple[str, str, object, object]:
    """The base model (run's tokenizer and chat template) and the adapter as two GGUF files in ``folder``."""
    import torch

    from honing.export.gguf_names import arch_spec
    from honing.export.gguf_writer import check_lora_exportable, write_lora_gguf, write_model_gguf
    from honing.export.merge import _run_tokenizer
    from honing.export.tokenizer_meta import tokenizer_meta
    from honing.models.loading import load_model

    check_lora_exportable(json.loads((run.final_dir / "adapter_config.json").read_text()))
    base, _, resolved = load_model(run.base_model_reference(), dtype=torch.float32)
    arch_spec(base.config)
    tok, tok_dir = _run_tokenizer(run, Path(resolved.path))
    meta = tokenizer_meta(tok, tok_dir, base.config.vocab_size, _declared_pre(run))
    base_name, adapter_name = f"base.{quant}.gguf", "adapter.f32.gguf"
    log(f"writing {base_name} (the base model, {quant}) and {adapter_name} (the LoRA adapter)")
    write_model_gguf(folder / base_name, base, meta, quant, name=f"{run.path.name}-base")
    write_lora_gguf(folder / adapter_name, run.final_dir, base.config, name=run.path.name)
    return base_name, adapter_name, tok, meta


def _write_gguf(run, tmp: Path, *, quant, log, merged, **_):
    _merged_gguf(run, tmp, quant, log, merged)


def _write_gguf_lora(run, tmp: Path, *, quant, log, result, **_):
    tmp.mkdir()
    base_name, adapter_name, _, _ = _base_and_adapter_gguf(run, tmp, quant, log)
    (tmp / "README.md").write_text(
        f"# {run.path.name}: base model + LoRA adapter as GGUF\n\n"
        f"    llama-cli -m {base_name} --lora {adapter_name} -cnv\n"
        f"    llama-server -m {base_name} --lora {adapter_name}\n"
    )


def _write_ollama(run, tmp: Path, *, quant, ollama_adapter, log, result, merged, **_):
    from honing.export.ollama import modelfile, training_system_prompt, translate_chat_template

    tmp.mkdir()
    if ollama_adapter:
        gguf_name, adapter_name, tok, meta = _base_and_adapter_gguf(run, tmp, quant, log)
    else:
        gguf_name, adapter_name = f"model.{quant}.gguf", None
        merged, meta = _merged_gguf(run, tmp / gguf_name, quant, log, merged)
        tok = merged.tokenizer
    chat = translate_chat_template(tok, meta.add_bos)
    system = training_system_prompt(run)
    if system is not None:
        result.notes.append("SYSTEM is the system prompt shared by every training example")
    elif chat.default_system:
        system = chat.default_system
        result.notes.append("SYSTEM is the chat template's default system prompt")
    if chat.frozen_system_text:
        result.notes.append("the template's own system-turn text (Llama 3.1+: 'Today Date') is as rendered today: "
                            "a Go template cannot format the date as the chat template does")
    text = modelfile(chat, gguf_name, adapter_name, system,
                     note=f"Exported by Honing from {run.path.name} ({chat.family} chat template)")
    (tmp / "Modelfile").write_text(text)
    (tmp / "README.md").write_text(
        f"# {run.path.name} for Ollama\n\n    ollama create {run.path.name} -f Modelfile\n"
        f"    ollama run {run.path.name}\n"
    )


def _base_dir(run) -> str:
    """The base model's local Hugging Face directory (a catalog name or GGUF base resolves to its converted
    cache), so the adapter's base_model_name_or_path never sends PEFT or vLLM to a model hub."""
    from honing.models.catalog import resolve_model

    return str(resolve_model(run.base_model_reference()).path.resolve())


def _write_peft(run, tmp: Path, **_):
    from honing.export.vllm import copy_adapter

    copy_adapter(run.final_dir, tmp, _base_dir(run))


def _write_vllm(run, tmp: Path, *, result, **_):
    from honing.export.vllm import check_vllm_adapter, copy_adapter, serve_script

    tmp.mkdir()
    base_path = _base_dir(run)  # vLLM loads the base from a Hugging Face directory
    config = copy_adapter(run.final_dir, tmp / "adapter", base_path)
    check_vllm_adapter(config)
    script = tmp / "serve.sh"
    script.write_text(serve_script(base_path, run.path.name, "adapter", int(config["r"])))
    script.chmod(0o755)
    result.notes.append(f"serve with {script.name} (base model: {base_path})")


def _write_hf(run, tmp: Path, *, log, merged, **_):
    merged = merged if merged is not None else _merge(run, log)
    merged.model.save_pretrained(str(tmp), safe_serialization=True)
    merged.tokenizer.save_pretrained(str(tmp))


_WRITERS = {"gguf": _write_gguf, "gguf-lora": _write_gguf_lora, "ollama": _write_ollama, "vllm": _write_vllm,
            "peft": _write_peft, "hf": _write_hf}

__all__ = ["FORMATS", "ExportError", "ExportResult", "ExportedFile", "ModelError", "default_out", "export_run"]
