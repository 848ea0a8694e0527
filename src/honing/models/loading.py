"""Loading a resolved model and tokenizer, and loading fine-tuned run directories for inference."""

from __future__ import annotations

import os
from pathlib import Path

from honing.errors import ModelError
from honing.models.catalog import ResolvedModel, resolve_model

CONVERTED_SOURCES = ("embedded", "gguf", "cache")  # models Honing converted into its own cache

# Used when a base model ships no chat template (rare for instruct models): ChatML, which the
# embedded default also uses.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _dtype(dtype):
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype or torch.float32
    return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
            "float16": torch.float16, "fp16": torch.float16}[str(dtype)]


def load_tokenizer(model: str | os.PathLike | ResolvedModel):
    from transformers import AutoTokenizer

    from honing.models.direct_load import record_added_tokens

    resolved = model if isinstance(model, ResolvedModel) else resolve_model(model)
    if resolved.source in CONVERTED_SOURCES:
        record_added_tokens(resolved.path)  # once: later loads skip a Python parse of tokenizer.json
    tok = AutoTokenizer.from_pretrained(str(resolved.path))
    prefix_every_text_run(tok)
    if tok.chat_template is None:
        tok.chat_template = CHATML_TEMPLATE
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def prefix_every_text_run(tok) -> None:
    """Give a SentencePiece-style tokenizer's ``▁`` prefix to every run of text between special tokens.

    SentencePiece (and Mistral's own mistral-common, and llama.cpp's 'llama' tokenizer that Honing's GGUF
    export writes) put a ``▁`` before each piece of text it encodes, so ``[INST]What`` is ``[INST]`` ``▁What``.
    transformers converts such a tokenizer.model (Llama 2, Mistral v0.1-v0.3) to a Metaspace pre-tokenizer with
    ``prepend_scheme: first``, which prefixes only the start of the whole string: ``[INST]`` ``What``. Trained
    that way, a model would see at serving time (llama.cpp, Ollama) ids it was not trained on. ``always``
    prefixes each run as SentencePiece does; text without special tokens tokenizes as before."""
    from tokenizers.pre_tokenizers import Metaspace

    backend = getattr(tok, "backend_tokenizer", None)
    pre = getattr(backend, "pre_tokenizer", None)
    if isinstance(pre, Metaspace) and pre.prepend_scheme == "first":
        backend.pre_tokenizer = Metaspace(replacement=pre.replacement, prepend_scheme="always", split=pre.split)


def load_model(model: str | os.PathLike | ResolvedModel, dtype=None, device: str | None = None):
    """Load (model, tokenizer, resolved) from any model reference. ``dtype`` defaults to float32."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    from honing.models.direct_load import load_converted
    from honing.models.fast_ops import speed_up_norms
    from honing.quiet import quiet_libraries

    quiet_libraries()

    resolved = model if isinstance(model, ResolvedModel) else resolve_model(model)
    torch_dtype = _dtype(dtype)
    copy = bf16_copy(resolved) if _keeps_bf16_copy(resolved, torch_dtype) else None
    try:
        m = load_converted(copy or resolved.path, torch_dtype) if resolved.source in CONVERTED_SOURCES else None
        m = m or AutoModelForCausalLM.from_pretrained(str(copy or resolved.path), dtype=torch_dtype)
    except ValueError as e:
        raise ModelError(f"cannot load {resolved.path}: unsupported architecture ({e})") from e
    except (OSError, SafetensorError) as e:  # a truncated .safetensors raises the latter
        raise ModelError(f"cannot load {resolved.path}: missing or corrupt weights ({e})") from e
    if copy is not None:  # the model is still the converted one (PEFT records this as the adapter's base)
        m.name_or_path = m.config._name_or_path = str(resolved.path)
    elif _keeps_bf16_copy(resolved, torch_dtype):
        write_bf16_copy(m, resolved.path)
    if device:
        m.to(device)
    flat_head_input(m)
    speed_up_norms(m)
    return m, load_tokenizer(resolved), resolved


# A bf16 copy of a converted model's fp32 weights, kept inside the conversion's cache directory (so a new
# conversion drops it with the rest). Written by the first bf16 load; later bf16 loads read it instead of
# converting 135M fp32 parameters at every start: the embedded model's load plus two forwards took 0.70-0.92
# CPU s from the fp32 file and 0.47-0.58 from the copy (load ~7, 2-core EPYC), for 270 MB more on disk.
# Same values: torch rounds fp32 to bf16 the same way every time.
BF16_COPY = "bf16"
BF16_MARKER = "honing-bf16.json"  # written last; names the fp32 file the copy was made from (size, mtime)


def _keeps_bf16_copy(resolved: ResolvedModel, torch_dtype) -> bool:
    """Only models Honing converted into its own cache (never a user's directory), single-file, for bf16."""
    import torch

    return (torch_dtype is torch.bfloat16 and resolved.source in CONVERTED_SOURCES
            and (Path(resolved.path) / "model.safetensors").is_file())


def _fp32_stamp(model_dir: Path) -> dict:
    st = (model_dir / "model.safetensors").stat()
    return {"source_size": st.st_size, "source_mtime_ns": st.st_mtime_ns}


def bf16_copy(resolved: ResolvedModel) -> Path | None:
    """The bf16 copy of ``resolved``'s weights when one was written from its current fp32 file, else None."""
    import json

    copy = Path(resolved.path) / BF16_COPY
    try:
        stamp = json.loads((copy / BF16_MARKER).read_text())
    except (OSError, ValueError):
        return None
    return copy if stamp == _fp32_stamp(Path(resolved.path)) else None


def write_bf16_copy(model, model_dir: Path) -> None:
    """Save ``model`` (just loaded as bf16 from ``model_dir``) as the bf16 copy: written into a temporary
    directory and renamed into place, so a reader sees all of it or none; a stale copy is replaced. A
    failure (read-only cache, full disk, another process first) leaves the loads as they were."""
    import json
    import shutil
    import tempfile

    model_dir = Path(model_dir)
    copy = model_dir / BF16_COPY
    tmp = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{BF16_COPY}.", dir=model_dir))
        model.save_pretrained(str(tmp))
        (tmp / BF16_MARKER).write_text(json.dumps(_fp32_stamp(model_dir)))
        if copy.exists():
            shutil.rmtree(copy, ignore_errors=True)
        os.rename(tmp, copy)
    except OSError:
        pass
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _flatten_head_input(module, args):
    x = args[0]
    if x.dim() <= 2:
        return None
    module._honing_lead_shape = x.shape[:-1]
    return (x.reshape(-1, x.shape[-1]), *args[1:])


def _unflatten_head_output(module, _args, output):
    lead = module.__dict__.pop("_honing_lead_shape", None)
    return None if lead is None else output.view(*lead, output.shape[-1])


def flat_head_input(model) -> None:
    """Feed the output head a 2-D ``[rows, hidden]`` input and give its logits their shape back (a forward
    pre-hook and a forward hook on the head; idempotent).

    transformers runs the head on ``hidden_states[:, -k:, :]`` (``logits_to_keep``: the training losses'
    forward and every generation step). torch's matmul does not always fold such a 3-D input into one GEMM:
    a non-contiguous slice of several rows, and a one-row slice that requires grad (a micro-batch of one
    example: batch-1 training, the replay example of every step) go through expand + bmm, which copies the
    whole head weight first: for SmolLM2-135M a [B, 576, 49152] bf16 copy, ~0.3 s per forward on a 2-core
    CPU against ~3 ms as one GEMM, and ~100,000 fresh pages faulted in each time. Reshaping the [B, k, H]
    slice to [B*k, H] first costs at most a copy of the slice."""
    import torch

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if isinstance(head, torch.nn.Linear) and not getattr(head, "_honing_flat_input", False):
        head.register_forward_pre_hook(_flatten_head_input)
        head.register_forward_hook(_unflatten_head_output)
        head._honing_flat_input = True


def is_run_dir(path: str | os.PathLike) -> bool:
    """A Honing run directory: has run.json and a trained adapter or full model."""
    from honing.rundir import RunDir

    return RunDir.is_run(path)


def load_for_inference(reference: str | os.PathLike, dtype=None, device=None):
    """Load a base model, a model directory, or a fine-tuned run directory for generation.

    Run directory contract (written by honing.train): ``run.json`` with ``base_model.reference``;
    the result in ``final/`` as either a PEFT adapter (``adapter_config.json``) or a full model
    (``config.json``). Returns (model, tokenizer, description dict).
    """
    p = Path(reference)
    if not is_run_dir(p):
        m, tok, resolved = load_model(reference, dtype=dtype, device=device)
        m.eval()
        return m, tok, {"kind": "base", **resolved.identity()}
    from honing.rundir import RunDir

    run = RunDir(p).record()
    final = p / "final"
    if (final / "adapter_config.json").is_file():
        from peft import PeftModel

        base, tok, resolved = load_model(run["base_model"]["reference"], dtype=dtype, device=device)
        m = PeftModel.from_pretrained(base, str(final))
        if device:
            m.to(device)  # the adapter weights load on the CPU
        # The run's tokenizer (saved beside the adapter) wins: training may have set a template.
        if (final / "tokenizer_config.json").is_file():
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(final))
        m.eval()
        return m, tok, {"kind": "adapter", "run_dir": str(p), "base_model": run["base_model"]}
    if (final / "config.json").is_file():
        m, tok, _ = load_model(str(final), dtype=dtype, device=device)
        m.eval()
        return m, tok, {"kind": "full", "run_dir": str(p), "base_model": run["base_model"]}
    raise ModelError(f"{p} is a run directory without a finished model in {final} (did training complete?)")
