"""`hone export` on a tiny trained Llama (real SmolLM2 tokenizer): GGUF read back by transformers,
the adapter GGUF's arithmetic, the Ollama template, the vLLM/PEFT/HF folders, and bad input.

The real embedded model and llama.cpp itself: tests/test_export_llamacpp.py."""

from __future__ import annotations

import errno
import json
import shutil

import numpy as np
import pytest
import torch
from export_helpers import (
    MIXED_TEXT,
    SYSTEM,
    logits,
    read_gguf,
    read_gguf_tensors,
    train_run,
    write_system_chat,
)
from train_helpers import build_tiny_model_dir

from honing.errors import ModelError
from honing.export import ExportError, export_run
from honing.export.merge import load_merged

IDS = [1, 4093, 198, 1780, 314, 216, 33, 29, 3589, 216, 34, 47, 2, 198, 1, 520, 9531, 198]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("export")
    build_tiny_model_dir(d / "tiny")
    write_system_chat(d / "train.jsonl", 16)
    train_run(str(d / "tiny"), d / "train.jsonl", d / "lora")
    train_run(str(d / "tiny"), d / "train.jsonl", d / "full", method="full", max_steps=2, learning_rate=1e-3)
    return d


@pytest.fixture(scope="module")
def merged(work):
    return load_merged(work / "lora")


@pytest.fixture(scope="module")
def f32_gguf(work):
    """The LoRA run exported as f32 GGUF and read back by transformers (model and tokenizer); the model is
    also the skeleton the other read-backs load tensors into (one parse of the vocabulary instead of two)."""
    res = export_run(work / "lora", "gguf", out=work / "m.f32.gguf", quant="f32")
    return res, *read_gguf(res.out, tokenizer=True)


def test_gguf_f32_reads_back_exactly(merged, f32_gguf):
    """transformers' GGUF reader (which undoes llama.cpp's Q/K permutation) gives the merged model's logits
    bit for bit, and the tokenizer the same ids, chat template and special tokens."""
    res, model, tok = f32_gguf
    assert [f.path.name for f in res.files] == ["m.f32.gguf"] and len(res.files[0].sha256) == 64
    assert torch.equal(logits(model, IDS), logits(merged.model, IDS))
    assert tok(MIXED_TEXT, add_special_tokens=False)["input_ids"] == \
        merged.tokenizer(MIXED_TEXT, add_special_tokens=False)["input_ids"]
    assert tok.chat_template == merged.tokenizer.chat_template
    assert (tok.bos_token_id, tok.eos_token_id) == (merged.tokenizer.bos_token_id, merged.tokenizer.eos_token_id)


def test_gguf_without_qk_permutation_is_caught(work, merged, f32_gguf, tmp_path, monkeypatch):
    """Control: skipping the Llama Q/K permutation (a classic converter bug) changes the logits the reader
    sees, so the exact test above would fail."""
    import honing.export.gguf_writer as gw

    monkeypatch.setattr(gw, "qk_heads", lambda *a: None)
    export_run(work / "lora", "gguf", out=tmp_path / "bad.gguf", quant="f32", merged=merged)
    model = read_gguf_tensors(tmp_path / "bad.gguf", like=f32_gguf[1])
    assert (logits(model, IDS) - logits(merged.model, IDS)).abs().max() > 1e-3


def test_full_finetune_exports(work, f32_gguf, tmp_path):
    res = export_run(work / "full", "gguf", out=tmp_path / "full.gguf", quant="f32")
    model = read_gguf_tensors(res.out, like=f32_gguf[1])  # same architecture; every tensor from the file
    assert torch.equal(logits(model, IDS), logits(load_merged(work / "full").model, IDS))
    with pytest.raises(ExportError, match="full fine-tune"):
        export_run(work / "full", "gguf-lora", out=tmp_path / "x")


def test_lora_gguf_applies_to_base_as_the_merge(work, f32_gguf, tmp_path):
    """The adapter GGUF under llama.cpp's semantics (W + alpha/r * B @ A on the base GGUF's tensor) gives
    the merged GGUF's tensors: names, the permuted B rows of q/k, and alpha all line up."""
    import gguf

    out = export_run(work / "lora", "gguf-lora", out=tmp_path / "gl", quant="f32").out
    base = {t.name: np.array(t.data) for t in gguf.GGUFReader(out / "base.f32.gguf").tensors}
    merged = {t.name: np.array(t.data) for t in gguf.GGUFReader(work / "m.f32.gguf").tensors}
    adapter = gguf.GGUFReader(out / "adapter.f32.gguf")
    assert adapter.fields["general.type"].contents() == "adapter"
    assert adapter.fields["adapter.type"].contents() == "lora"
    alpha = adapter.fields["adapter.lora.alpha"].contents()
    lora = {t.name: np.array(t.data) for t in adapter.tensors}
    targets = sorted({n.rsplit(".", 1)[0] for n in lora})
    assert len(targets) == 14 and "blk.1.attn_q.weight" in targets  # every linear layer of both blocks
    for name in targets:
        a, b = lora[name + ".lora_a"], lora[name + ".lora_b"]
        np.testing.assert_allclose(base[name] + alpha / a.shape[0] * (b @ a), merged[name], atol=2e-6)
    untouched = [n for n in merged if n not in targets]
    assert all(np.array_equal(base[n], merged[n]) for n in untouched)


def test_ollama_modelfile_renders_like_the_chat_template(work, merged, tmp_path):
    """The Modelfile's TEMPLATE, rendered with Ollama's chat semantics, gives the tokenizer's own
    chat-template string on a multi-turn conversation; SYSTEM is the training data's system prompt."""
    from honing.export.gotemplate import render_ollama_chat

    out = export_run(work / "lora", "ollama", out=tmp_path / "ollama", quant="f16").out
    text = (out / "Modelfile").read_text()
    assert "FROM ./model.f16.gguf" in text and 'PARAMETER stop "<|im_end|>"' in text
    assert f'SYSTEM """{SYSTEM}"""' in text
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    chat = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is 2 plus 2?"},
            {"role": "assistant", "content": "2 plus 2 is 4."}, {"role": "user", "content": "And 40 plus 2?"}]
    want = merged.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert render_ollama_chat(template, chat) == want
    # Ollama inserts SYSTEM when a request has none: the model sees the prompt it was trained under.
    assert render_ollama_chat(template, chat[1:], system=SYSTEM) == want
    # Control: a template that drops the newline after the role renders something else.
    assert render_ollama_chat(template.replace("{{ .Role }}\n", "{{ .Role }}"), chat) != want


def test_llama3_chat_template_translates(smol_tokenizer):
    """A Llama-3 style template (BOS in the template, header tokens, trimmed contents) becomes Ollama's
    Llama 3 template; the BOS that llama.cpp adds itself is not duplicated."""
    from honing.export.ollama import PROBES, first_mismatch, translate_chat_template

    tok = smol_tokenizer
    saved = tok.chat_template
    try:
        tok.chat_template = (
            "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n'"
            " + m['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
            "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
        chat = translate_chat_template(tok, add_bos=True)
        assert chat.family == "llama3" and chat.default_system is None
        assert first_mismatch(tok, chat, add_bos=True, probes=PROBES) is None
        tok.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
        with pytest.raises(ModelError, match="none of the families"):
            translate_chat_template(tok, add_bos=False)
    finally:
        tok.chat_template = saved


def test_vllm_peft_and_hf_folders(work, merged, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    vllm = export_run(work / "lora", "vllm", out=tmp_path / "vllm").out
    script = (vllm / "serve.sh").read_text()
    assert "--enable-lora --max-lora-rank 16" in script and "--lora-modules lora=adapter" in script
    config = json.loads((vllm / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 16 and not config["use_dora"]
    peft_dir = export_run(work / "lora", "peft", out=tmp_path / "peft").out
    base = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"], dtype=torch.float32)
    for adapter in (vllm / "adapter", peft_dir):
        model = PeftModel.from_pretrained(base, str(adapter)).eval()
        assert torch.allclose(logits(model, IDS), logits(merged.model, IDS), atol=1e-5)
        base = model.unload()
    hf = export_run(work / "lora", "hf", out=tmp_path / "hf").out
    loaded = AutoModelForCausalLM.from_pretrained(str(hf), dtype=torch.float32).eval()
    assert torch.equal(logits(loaded, IDS), logits(merged.model, IDS))


# -- bad input: a clear error, nothing half-written ---------------------------------------------------
def _copy_run(work, tmp_path, name="run"):
    return shutil.copytree(work / "lora", tmp_path / name, ignore=shutil.ignore_patterns("checkpoints"))


def test_unfinished_run_and_run_without_result(work, tmp_path):
    run = _copy_run(work, tmp_path)
    record = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**record, "status": "running"}))
    with pytest.raises(ExportError, match="has not finished training"):
        export_run(run, "gguf")
    shutil.rmtree(run / "final")
    with pytest.raises(ExportError, match="no trained adapter or model"):
        export_run(run, "gguf")
    with pytest.raises(ModelError, match="not a Honing run directory"):
        export_run(tmp_path, "gguf")
    assert not (run / "export").exists()


def test_unsupported_architecture_is_named(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    run = tmp_path / "gpt2run"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)).save_pretrained(run / "final")
    (run / "run.json").write_text(json.dumps({"status": "completed", "base_model": {"reference": "x"}}))
    with pytest.raises(ModelError, match="does not support architecture 'gpt2'.*GPT2LMHeadModel"):
        export_run(run, "gguf", out=tmp_path / "g.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt2run"]


def test_existing_output_is_refused_unless_force(work, tmp_path):
    target = tmp_path / "m.gguf"
    target.write_text("keep me")
    with pytest.raises(ExportError, match="already exists"):
        export_run(work / "lora", "gguf", out=target)
    assert target.read_text() == "keep me"
    export_run(work / "lora", "gguf", out=target, force=True, quant="q8_0")
    assert target.read_bytes()[:4] == b"GGUF"


@pytest.mark.parametrize("fmt", ["gguf", "ollama"])
def test_full_disk_leaves_nothing_behind(work, tmp_path, monkeypatch, fmt):
    """The disk fills while tensors are written: a clear error; the output and its temp file are gone."""
    import gguf

    def full_disk(self, *a, **k):
        self.fout[0].write(b"\0" * 4096)  # part of the data made it, as on a real full disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", full_disk)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ExportError, match="no space left on device.*nothing was written"):
        export_run(work / "lora", fmt, out=out / "result")
    assert list(out.iterdir()) == []


def test_cli_export_prints_size_and_checksum(work, tmp_path):
    from typer.testing import CliRunner

    from honing.cli import app

    target = tmp_path / "cli.gguf"
    res = CliRunner().invoke(app, ["export", str(work / "lora"), "--format", "gguf", "--quant", "q8_0",
                                   "--out", str(target)])
    assert res.exit_code == 0, res.output
    from honing.export import sha256_file

    assert sha256_file(target) in res.output and f"{target.stat().st_size:,} bytes" in res.output
    res = CliRunner().invoke(app, ["export", str(work / "lora"), "--out", str(target)])
    assert res.exit_code != 0 and isinstance(res.exception, ExportError)
