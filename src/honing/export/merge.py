"""Merging a LoRA run into a plain model: ``merged/`` loads with ``transformers`` unchanged."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from honing.errors import ModelError


def merge_run(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, dtype=None) -> Path:
    """Fold the adapter in ``run_dir/final`` into its base model and save it (default ``run_dir/merged``).

    The base is loaded in fp32 (default) so the merge adds the low-rank update at full precision; the
    result is written to a temp directory and renamed. Returns the merged directory.
    """
    from peft import PeftModel

    from honing.models.loading import load_model

    run_dir = Path(run_dir)
    final = run_dir / "final"
    if not (run_dir / "run.json").is_file() or not (final / "adapter_config.json").is_file():
        raise ModelError(f"{run_dir} has no trained adapter to merge (expected run.json and final/adapter_config.json)")
    from honing.rundir import RunDir

    base, tokenizer, _ = load_model(RunDir(run_dir).base_model_reference(), dtype=dtype)
    merged = PeftModel.from_pretrained(base, str(final)).merge_and_unload()
    target = Path(out) if out else run_dir / "merged"
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(str(tmp), safe_serialization=True)
    # The run's tokenizer (beside the adapter) carries the chat template training used.
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(final)).save_pretrained(str(tmp))
    del tokenizer
    if target.exists():
        shutil.rmtree(target)
    os.rename(tmp, target)
    return target
