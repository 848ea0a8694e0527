"""Models Honing converted load without from_pretrained (honing.models.direct_load): the same model.

Compared with transformers' from_pretrained on the same folder: every parameter and buffer (bitwise, same
dtype), tied weights still one tensor, config, generation config, attention implementation, eval mode and
logits. Folders the direct path does not cover (dtype to cast, unknown names) fall back to from_pretrained.
"""

from __future__ import annotations

import json

import pytest
from family_models import FAMILIES, family_model


def _from_pretrained(folder, dtype):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)


def _assert_same_model(direct, reference):
    import torch

    assert type(direct) is type(reference)
    ours = dict(direct.state_dict(keep_vars=True))
    theirs = dict(reference.state_dict(keep_vars=True))
    assert ours.keys() == theirs.keys()
    for name, tensor in theirs.items():
        assert ours[name].dtype == tensor.dtype, name
        assert ours[name].device == tensor.device, name
        assert torch.equal(ours[name], tensor), name
        assert ours[name].requires_grad == tensor.requires_grad, name
    for name, buffer in reference.named_buffers():  # non-persistent ones (rotary frequencies) too
        assert torch.equal(direct.get_buffer(name), buffer), name
    head, embedding = direct.get_output_embeddings().weight, direct.get_input_embeddings().weight
    assert (head is embedding) == (reference.get_output_embeddings().weight
                                   is reference.get_input_embeddings().weight)
    assert direct.config.to_dict() == reference.config.to_dict()
    assert direct.generation_config.to_dict() == reference.generation_config.to_dict()
    assert direct.config._attn_implementation == reference.config._attn_implementation
    assert direct.training is reference.training is False
    ids = torch.tensor([[1, 42, 7, 200, 9, 100, 2]])
    with torch.no_grad():
        assert torch.equal(direct(ids).logits, reference(ids).logits)


@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16"])
def test_the_embedded_model_loads_the_same(dtype_name):
    import torch

    from honing.models.catalog import resolve_model
    from honing.models.direct_load import load_converted
    from honing.models.loading import bf16_copy, load_model

    dtype = getattr(torch, dtype_name)
    resolved = resolve_model("smollm2-135m-instruct")
    if dtype is torch.bfloat16:
        load_model(resolved, dtype=dtype)  # writes the bf16 copy on a fresh cache
        folder = bf16_copy(resolved)
    else:
        folder = resolved.path
    direct = load_converted(folder, dtype)
    assert direct is not None
    _assert_same_model(direct, _from_pretrained(folder, dtype))


@pytest.mark.parametrize("family", ["qwen3", "gemma3", "phi3"])
def test_other_families_load_the_same(tmp_path, family):
    import torch

    from honing.models.direct_load import load_converted

    model = family_model(FAMILIES[family], vocab_size=512)
    model.save_pretrained(tmp_path)
    generation = json.loads((tmp_path / "generation_config.json").read_text())  # one the config does not imply
    (tmp_path / "generation_config.json").write_text(json.dumps({**generation, "do_sample": True,
                                                                 "temperature": 0.3, "top_k": 7}))
    direct = load_converted(tmp_path, torch.float32)
    assert direct is not None
    assert direct.generation_config.top_k == 7
    _assert_same_model(direct, _from_pretrained(tmp_path, torch.float32))


def test_what_it_does_not_cover_goes_to_from_pretrained(tmp_path):
    import torch
    from conftest import make_tiny_llama

    from honing.models.direct_load import load_converted

    make_tiny_llama(vocab_size=256).save_pretrained(tmp_path)
    assert load_converted(tmp_path, torch.bfloat16) is None  # fp32 file: casting is from_pretrained's
    assert load_converted(tmp_path / "missing", torch.float32) is None

    from safetensors.torch import load_file, save_file

    weights = load_file(str(tmp_path / "model.safetensors"))
    weights["model.layers.0.mlp.extra.weight"] = torch.zeros(2, 2)
    save_file(weights, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    assert load_converted(tmp_path, torch.float32) is None  # a name the class does not have

    config = json.loads((tmp_path / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert load_converted(tmp_path, torch.float32) is None


def test_training_the_loaded_weights_leaves_the_file_alone(tmp_path):
    """The assigned tensors share pages with the file (safetensors maps it copy-on-write): full fine-tuning
    writes into them in place, which must never reach the cache's file."""
    import torch
    from conftest import make_tiny_llama
    from safetensors.torch import load_file

    from honing.models.direct_load import load_converted

    make_tiny_llama(vocab_size=256).save_pretrained(tmp_path)
    before = load_file(str(tmp_path / "model.safetensors"))
    model = load_converted(tmp_path, torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    after = load_file(str(tmp_path / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(model.get_input_embeddings().weight, before["model.embed_tokens.weight"])


def _tokenizer_facts(tok) -> dict:
    texts = ["<|im_start|>user\nHello <|im_end|>\n", "plain text, no specials", "<|endoftext|>x<|im_start|>"]
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    return {"added": {i: repr(t) for i, t in tok.added_tokens_decoder.items()}, "vocab": tok.get_vocab(),
            "specials": tok.all_special_tokens, "ids": [tok.encode(t) for t in texts], "len": len(tok),
            "named": {k: str(getattr(tok, k)) for k in ("bos_token", "eos_token", "pad_token", "unk_token")},
            "chat": tok.apply_chat_template(chat, tokenize=True, add_generation_prompt=True)}


def test_the_added_tokens_in_the_config_load_the_same_tokenizer(tmp_path):
    """A converted folder's tokenizer_config.json gets tokenizer.json's added tokens (transformers then skips
    parsing tokenizer.json in Python): the loaded tokenizer is the same in every respect checked here."""
    import shutil

    from honing.models.catalog import ResolvedModel, resolve_model
    from honing.models.direct_load import record_added_tokens
    from honing.models.loading import load_tokenizer

    embedded = resolve_model("smollm2-135m-instruct")
    folders = {}
    for name in ("without", "with"):
        folders[name] = tmp_path / name
        folders[name].mkdir()
        for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "config.json"):
            if (embedded.path / f).is_file():
                shutil.copy(embedded.path / f, folders[name] / f)
        config = json.loads((folders[name] / "tokenizer_config.json").read_text())
        config.pop("added_tokens_decoder", None)  # as transformers saved it
        (folders[name] / "tokenizer_config.json").write_text(json.dumps(config))
    record_added_tokens(folders["with"])
    written = json.loads((folders["with"] / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    assert written["0"]["content"] == "<|endoftext|>" and len(written) >= 3
    mode = (folders["with"] / "tokenizer_config.json").stat().st_mode
    record_added_tokens(folders["with"])  # once: a second call changes nothing
    assert (folders["with"] / "tokenizer_config.json").stat().st_mode == mode
    assert sorted(p.name for p in folders["with"].iterdir()) == sorted(p.name for p in folders["without"].iterdir())

    users = load_tokenizer(ResolvedModel("mine", folders["without"], "hf-dir", "mine"))  # a user's folder
    assert "added_tokens_decoder" not in json.loads((folders["without"] / "tokenizer_config.json").read_text())
    ours = load_tokenizer(ResolvedModel("ours", folders["with"], "cache", "ours"))
    assert _tokenizer_facts(ours) == _tokenizer_facts(users)
