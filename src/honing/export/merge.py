"""Merging a run into one plain model.

``load_merged(run_dir)`` gives the fine-tuned model as a single fp32 ``transformers`` model in memory
(the adapter folded into the full-precision base, or the full fine-tune as saved) plus the tokenizer
training used; every exporter starts from it. ``merge_run`` saves that model as ``merged/``, which loads
with ``transformers`` unchanged (``hone train --merge`` and ``hone export --format hf``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from honing.errors import ModelError


@dataclass
class MergedModel:
    model: object  # a transformers PreTrainedModel, fp32, eval mode
    tokenizer: object
    tokenizer_dir: Path  # where tokenizer.json / tokenizer_config.json of that tokenizer lie
    kind: str  # "adapter" (merged here) | "full"


def _run_tokenizer(run, fallback_dir: Path):
    """The tokenizer saved beside the result (training may have set its chat template), else the base's."""
    from transformers import AutoTokenizer

    from honing.models.loading import CHATML_TEMPLATE

    source = run.final_dir if (run.final_dir / "tokenizer.json").is_file() else fallback_dir
    tok = AutoTokenizer.from_pretrained(str(source))
    if tok.chat_template is None:
        tok.chat_template = CHATML_TEMPLATE  # what training rendered with (honing.models.load_tokenizer)
    return tok, source


def load_merged(run_dir: str | os.PathLike) -> MergedModel:
    """The run's result as one fp32 model.

    A LoRA run's base is loaded in float32 from its full-precision source (never from quantized
    weights, whatever the training precision was) and the low-rank update W + (alpha/r)·B·A is added
    at that precision by PEFT's ``merge_and_unload``.
    """
    import torch

    from honing.models.loading import load_model
    from honing.rundir import RunDir

    run = RunDir(run_dir)
    if run.has_adapter():
        from peft import PeftModel

        base, _, resolved = load_model(run.base_model_reference(), dtype=torch.float32)
        merged = PeftModel.from_pretrained(base, str(run.final_dir)).merge_and_unload()
        tok, tok_dir = _run_tokenizer(run, Path(resolved.path))
        kind = "adapter"
    elif run.has_full_model():
        merged, _, _ = load_model(str(run.final_dir), dtype=torch.float32)
        tok, tok_dir = _run_tokenizer(run, run.final_dir)
        kind = "full"
    else:
        raise ModelError(f"{run.path} has no trained adapter or model in {run.final_dir}")
    merged.eval()
    return MergedModel(merged, tok, tok_dir, kind)


def merge_run(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, dtype=None,
              overwrite: bool = True) -> Path:
    """Fold the adapter in ``run_dir/final`` into its base model and save it (default ``run_dir/merged``).

    The merge happens in fp32 (``load_merged``); ``dtype`` optionally casts the saved weights. The
    directory is written under a temporary name and renamed. Returns the merged directory.
    """
    from honing.fileio import atomic_path
    from honing.rundir import RunDir

    run = RunDir(run_dir)
    if not run.record_path.is_file() or not run.has_adapter():
        raise ModelError(f"{run.path} has no trained adapter to merge (expected run.json and final/adapter_config.json)")
    merged = load_merged(run.path)
    model = merged.model
    if dtype is not None:
        from honing.models.loading import _dtype

        model = model.to(_dtype(dtype))
    target = Path(out) if out else run.merged_dir
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target, overwrite=overwrite) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        merged.tokenizer.save_pretrained(str(tmp))
    return target
