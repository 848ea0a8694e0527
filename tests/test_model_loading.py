"""A bf16 load of a model Honing converted into its cache reads a bf16 copy of the weights kept beside the
fp32 ones (honing.models.loading.bf16_copy): the same values, never for a user's own directory."""

from __future__ import annotations

import os

import torch
from train_helpers import build_tiny_model_dir

from honing.models.catalog import ResolvedModel
from honing.models.loading import BF16_COPY, bf16_copy, load_model


def _params(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_a_converted_model_is_loaded_in_bf16_from_a_copy_with_the_same_values(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    from honing.models import direct_load

    read_from = []  # each folder a model was read from, by either path
    original, original_direct = AutoModelForCausalLM.from_pretrained, direct_load.load_converted
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained",
                        lambda path, **kw: read_from.append(path) or original(path, **kw))

    def spied_direct(folder, dtype):
        model = original_direct(folder, dtype)
        if model is not None:
            read_from.append(str(folder))
        return model

    monkeypatch.setattr(direct_load, "load_converted", spied_direct)
    model_dir = build_tiny_model_dir(tmp_path / "converted")
    resolved = ResolvedModel("tiny", model_dir, "cache", "tiny")
    assert bf16_copy(resolved) is None
    first, _, _ = load_model(resolved, dtype="bf16")  # from the fp32 file; writes the copy
    copy = bf16_copy(resolved)
    assert copy == model_dir / BF16_COPY and (copy / "model.safetensors").is_file()
    assert (copy / "model.safetensors").stat().st_size < 0.6 * (model_dir / "model.safetensors").stat().st_size

    second, _, _ = load_model(resolved, dtype="bf16")  # from the copy
    assert read_from == [str(model_dir), str(copy)]
    a, b = _params(first), _params(second)
    assert a.keys() == b.keys() and all(b[k].dtype == torch.bfloat16 and torch.equal(a[k], b[k]) for k in a)
    assert second.name_or_path == second.config._name_or_path == str(model_dir)  # PEFT records the base's path
    assert second.get_output_embeddings().weight is second.get_input_embeddings().weight  # still tied

    fp32, _, _ = load_model(resolved, dtype="fp32")  # other dtypes read the original
    assert all(v.dtype == torch.float32 for v in fp32.state_dict().values())

    st = (model_dir / "model.safetensors").stat()  # a new conversion: the copy no longer matches it
    os.utime(model_dir / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert bf16_copy(resolved) is None
    load_model(resolved, dtype="bf16")
    assert bf16_copy(resolved) == copy


def test_a_users_model_directory_gets_no_copy(tmp_path):
    model_dir = build_tiny_model_dir(tmp_path / "mine")
    load_model(ResolvedModel("mine", model_dir, "hf-dir", "mine"), dtype="bf16")
    assert not (model_dir / BF16_COPY).exists()
    assert sorted(p.name for p in model_dir.iterdir() if p.name.startswith(".")) == []


def test_truncated_weights_are_a_model_error_naming_the_folder(tmp_path):
    import pytest

    from honing.errors import ModelError

    for source in ("hf-dir", "cache"):  # from_pretrained and the direct path
        model_dir = build_tiny_model_dir(tmp_path / source)
        weights = model_dir / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        with pytest.raises(ModelError, match=f"cannot load {model_dir}: missing or corrupt weights"):
            load_model(ResolvedModel("tiny", model_dir, source, "tiny"), dtype="fp32")
