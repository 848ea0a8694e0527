"""Loading a model Honing converted itself, without transformers' general ``from_pretrained``.

``from_pretrained`` builds the model on the meta device, where torch runs each module's initialization and
the rotary embedding's ``arange`` through its Python reference operators (they import sympy), then renames
every checkpoint key through compiled regular expressions: 0.6-0.9 s for the embedded 135M model on the
2-core EPYC, a sixth of ``hone train``'s time to its first step. For a folder Honing wrote (one
``model.safetensors`` whose tensors already have the dtype asked for, no quantization, the names the model
class uses), the same model comes from building the class on the CPU with initialization skipped and
assigning the file's tensors: ~0.03 s. Anything else returns None and goes through ``from_pretrained``.
``tests/test_direct_load.py`` holds the two to the same parameters, buffers, config, generation config and
logits. The tokenizer of such a folder gets its added tokens recorded in its config once
(:func:`record_added_tokens`), which spares transformers a second, Python parse of tokenizer.json.
"""

from __future__ import annotations

from pathlib import Path

WEIGHTS = "model.safetensors"


def load_converted(folder: str | Path, torch_dtype):
    """The model in ``folder`` (config.json + model.safetensors), or None when the direct path does not apply."""
    folder = Path(folder)
    if not (folder / WEIGHTS).is_file() or (folder / f"{WEIGHTS}.index.json").exists():
        return None
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(folder))
    if getattr(config, "quantization_config", None) is not None:
        return None
    state = _read_weights(folder / WEIGHTS, torch_dtype)
    if state is None:
        return None
    model = _build_uninitialized(config, torch_dtype)
    if model is None or not _assign(model, state):
        return None
    _finish_like_from_pretrained(model, config, folder)
    return model


def _read_weights(path: Path, torch_dtype) -> dict | None:
    """The file's tensors, or None when any floating-point one is not already ``torch_dtype`` (casting is
    from_pretrained's job: it knows which modules keep fp32)."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    if any(t.is_floating_point() and t.dtype != torch_dtype for t in state.values()):
        return None
    return state


def _build_uninitialized(config, torch_dtype):
    """The model class for ``config`` on the CPU in ``torch_dtype``, weights allocated and not initialized
    (they are all overwritten); None for an architecture transformers' auto class does not know."""
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    try:
        with no_init_weights():
            return AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    except (ValueError, KeyError):
        return None


def _assign(model, state: dict) -> bool:
    """Put the file's tensors in place; False (model unusable) when names do not match one to one, but for an
    output head tied to the embedding, which the file leaves out as from_pretrained does."""
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    head = model.get_output_embeddings()
    may_miss = {f"{name}.weight" for name, m in model.named_modules() if m is head} if tied else set()
    result = model.load_state_dict(state, strict=False, assign=True)
    if result.unexpected_keys or set(result.missing_keys) - may_miss:
        return False
    model.tie_weights()
    return not tied or model.get_output_embeddings().weight is model.get_input_embeddings().weight


def _finish_like_from_pretrained(model, config, folder: Path) -> None:
    """What from_pretrained sets after loading: eval mode, the folder's name, its generation config."""
    from transformers import GenerationConfig

    model.eval()
    model.name_or_path = config._name_or_path = str(folder)
    if (folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(str(folder))


def record_added_tokens(folder: str | Path) -> None:
    """Write the added tokens of ``folder``'s tokenizer.json into its tokenizer_config.json as
    ``added_tokens_decoder``, once.

    transformers 5 saves no ``added_tokens_decoder`` for a tokenizers-backed tokenizer, and loading one
    without it parses the whole tokenizer.json again in Python (json, 3.5 MB for the embedded model: 0.1-0.2
    s of every load) only to read those few entries. With them in the config, the same tokens come from
    there: each entry is tokenizer.json's own (content, single_word, lstrip, rstrip, normalized, special),
    as transformers would turn it into an ``AddedToken``. Only for folders Honing converted; written
    atomically (honing.fileio); a failure (read-only cache) leaves the folder as it was."""
    import json

    from honing.fileio import write_json_atomic

    folder = Path(folder)
    config_path, tokenizer_path = folder / "tokenizer_config.json", folder / "tokenizer.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if "added_tokens_decoder" in config or not tokenizer_path.is_file():
            return
        added = json.loads(tokenizer_path.read_text(encoding="utf-8")).get("added_tokens") or []
        config["added_tokens_decoder"] = {str(t["id"]): {k: v for k, v in t.items() if k != "id"} for t in added}
        write_json_atomic(config_path, config)
    except (OSError, ValueError, KeyError, TypeError):
        pass
