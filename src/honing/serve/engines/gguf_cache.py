"""GGUF files for the llama.cpp engine, written once by Honing's export code and cached:

    HONING_CACHE/serve-gguf/base/<name>-<key>.<quant>.gguf
        a base model (the export's ``write_model_gguf``), beside the model's own converted copy and shared by
        every data dir; the key hashes the resolved model directory's path, its config and weight files'
        sizes and modification times, and the quant, so a changed model converts again
    DATA_DIR/engine-cache/lora/<adapter key>.gguf
        a fine-tuned model's or checkpoint's LoRA (``write_lora_gguf``, f32), with the project's other data

Every file is written under a temporary name and renamed when complete (``honing.fileio.atomic_path``): a
failed or killed conversion leaves nothing that a later start would take for a finished one."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from pathlib import Path

from honing.errors import ModelError

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock(path: Path) -> threading.Lock:
    # One conversion per file at a time: concurrent first requests wait for the same file.
    with _locks_guard:
        return _locks.setdefault(str(path), threading.Lock())


def _fingerprint(model_dir: Path, quant: str) -> str:
    h = hashlib.sha256(f"{model_dir.resolve()}|{quant}".encode())
    for p in sorted(model_dir.iterdir()):
        if p.suffix in (".json", ".safetensors", ".bin") and p.is_file():
            st = p.stat()
            h.update(f"|{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def base_config(base_ref: str):
    """The transformers config of a base model reference (no weights are loaded)."""
    from transformers import AutoConfig

    from honing.models.catalog import resolve_model

    return AutoConfig.from_pretrained(str(resolve_model(base_ref).path))


def exports_to_gguf(base_ref: str) -> str | None:
    """None when the base model's family is one the GGUF export writes, else why not."""
    from honing.export.gguf_names import arch_spec

    try:
        arch_spec(base_config(base_ref))
    except (ModelError, OSError, ValueError) as e:
        return str(e)
    return None


def base_gguf(cache_dir: Path, base_ref: str, quant: str) -> Path:
    """The base model as a GGUF file, converted on first use."""
    from honing.models.catalog import resolve_model

    resolved = resolve_model(base_ref)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", resolved.name)[:60]
    path = Path(cache_dir) / "base" / f"{safe}-{_fingerprint(resolved.path, quant)}.{quant}.gguf"
    with _lock(path):
        if not path.is_file():
            _write_base(path, resolved, quant)
    return path


def _write_base(path: Path, resolved, quant: str) -> None:
    import torch

    from honing.export.gguf_names import arch_spec
    from honing.export.gguf_writer import write_model_gguf
    from honing.export.tokenizer_meta import declared_pre_tokenizer, tokenizer_meta
    from honing.fileio import atomic_path
    from honing.models.loading import load_model

    model, tok, _ = load_model(resolved, dtype=torch.float32)
    arch_spec(model.config)
    meta = tokenizer_meta(tok, resolved.path, model.config.vocab_size, declared_pre_tokenizer(resolved.source_file))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, overwrite=True) as tmp:
        write_model_gguf(tmp, model, meta, quant, name=resolved.name)


def lora_gguf(cache_dir: Path, base_ref: str, adapter_key: str, adapter_dir: Path,
              weights: Path | None = None) -> Path:
    """A fine-tuned model's adapter (``adapter_dir``, a PEFT directory) as a llama.cpp LoRA GGUF; with
    ``weights``, a checkpoint's LoRA tensors take the place of the adapter's own."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", adapter_key)
    path = Path(cache_dir) / "lora" / f"{safe}.gguf"
    with _lock(path):
        if not path.is_file():
            _write_lora(path, base_ref, Path(adapter_dir), weights)
    return path


def check_lora(adapter_dir: Path) -> None:
    """A ModelError when llama.cpp cannot apply this adapter (DoRA, trained embeddings, ...)."""
    from honing.export.gguf_writer import check_lora_exportable

    config = Path(adapter_dir) / "adapter_config.json"
    if not config.is_file():
        raise ModelError(f"no adapter_config.json in {adapter_dir} (was its run removed?)")
    check_lora_exportable(json.loads(config.read_text()))


def _write_lora(path: Path, base_ref: str, adapter_dir: Path, weights: Path | None) -> None:
    import shutil

    from honing.export.gguf_writer import write_lora_gguf
    from honing.fileio import atomic_path

    check_lora(adapter_dir)
    config = base_config(base_ref)
    path.parent.mkdir(parents=True, exist_ok=True)
    if weights is None:
        with atomic_path(path, overwrite=True) as tmp:
            write_lora_gguf(tmp, adapter_dir, config, name=path.stem)
        return
    # A checkpoint: the job's adapter config with the checkpoint's tensors, which the training loop saved
    # under PEFT's in-memory names (".lora_A.default.weight"); the adapter file has none of "default".
    from safetensors.torch import load_file, save_file

    staged = path.parent / f".{path.stem}.adapter"
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir()
    try:
        shutil.copy(adapter_dir / "adapter_config.json", staged / "adapter_config.json")
        tensors = {k.replace(".default.", "."): v for k, v in load_file(str(weights)).items() if ".lora_" in k}
        if not tensors:
            raise ModelError(f"checkpoint {weights} holds no LoRA tensors")
        save_file(tensors, str(staged / "adapter_model.safetensors"))
        with atomic_path(path, overwrite=True) as tmp:
            write_lora_gguf(tmp, staged, config, name=path.stem)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
