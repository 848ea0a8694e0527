"""GGUF export proven by the real readers, on the embedded SmolLM2-135M-Instruct fine-tuned a few steps:
transformers reads every precision back (f32 exact, f16/q8_0 within the tolerance docs/export.md states)
and llama.cpp itself (llama-cpp-python built from its sdist: `make llama-cpp`) tokenizes, decodes and
applies the LoRA GGUF as Honing does.

Without llama_cpp installed the llama.cpp tests skip with the command that builds it."""

from __future__ import annotations

import gc

import pytest
import torch
from export_helpers import (
    MIXED_TEXT,
    SYSTEM,
    greedy_ids,
    logits,
    read_gguf,
    read_gguf_tensors,
    train_run,
    write_system_chat,
)

from honing.data.conversation import Message
from honing.data.render import render_prompt
from honing.export import export_run
from honing.export.merge import load_merged

try:
    import llama_cpp
except ImportError:  # pragma: no cover - depends on the environment
    llama_cpp = None

needs_llama_cpp = pytest.mark.skipif(
    llama_cpp is None, reason="llama-cpp-python is not installed; build it from its sdist with `make llama-cpp`")

# Stated tolerances (docs/export.md): max |logit difference| / max |logit| against the fp32 merged model.
TOLERANCE = {"f16": 5e-3, "q8_0": 3e-2}
# One in-domain prompt, one far from the training data (a few tokens decide greedy agreement; each costs
# decoding on the 135M model twice per file).
PROMPTS = ("What is 17 plus 25?", "Write a Python function that reverses a string.")
NEW_TOKENS = 8


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """The embedded model, LoRA on its top 4 layers, 2 steps at a learning rate that moves it (LoRA's B
    starts at zero: one step makes the adapter nonzero); merged once and exported in every precision."""
    d = tmp_path_factory.mktemp("export-real")
    write_system_chat(d / "train.jsonl", 8)
    train_run("smollm2-135m-instruct", d / "train.jsonl", d / "run", max_steps=2, learning_rate=4e-3,
              lora={"top_layers": 4}, max_length=128)
    merged = load_merged(d / "run")
    for quant in ("f32", "f16", "q8_0"):
        export_run(d / "run", "gguf", out=d / f"m.{quant}.gguf", quant=quant, merged=merged)
    export_run(d / "run", "gguf-lora", out=d / "lora", quant="f32")
    return d, merged


def _prompt_ids(tokenizer, question: str) -> list[int]:
    return render_prompt(tokenizer, [Message("system", SYSTEM), Message("user", question)])


@pytest.mark.slow
def test_transformers_reads_every_precision_back(real):
    d, merged = real
    ids = _prompt_ids(merged.tokenizer, PROMPTS[0]) + merged.tokenizer("17 plus 25 is 42.")["input_ids"]
    want = logits(merged.model, ids)
    f32, tok = read_gguf(d / "m.f32.gguf", tokenizer=True)
    assert torch.equal(logits(f32, ids), want)
    assert tok(MIXED_TEXT, add_special_tokens=False)["input_ids"] == \
        merged.tokenizer(MIXED_TEXT, add_special_tokens=False)["input_ids"]
    assert tok.chat_template == merged.tokenizer.chat_template
    for quant, tolerance in TOLERANCE.items():
        model = read_gguf_tensors(d / f"m.{quant}.gguf", like=f32)
        rel = float((logits(model, ids) - want).abs().max() / want.abs().max())
        assert 0 < rel < tolerance, (quant, rel)
        del model
        gc.collect()


def _llama(path, **kw):
    return llama_cpp.Llama(model_path=str(path), n_ctx=512, n_threads=2, seed=0, verbose=False, **kw)


def _llama_greedy(llm, prompt_ids: list[int], n: int, stops) -> list[int]:
    """llama.cpp's greedy sampler (temperature 0, top-k 1, no repeat penalty), stopping as Honing does."""
    out = []
    for token in llm.generate(prompt_ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
        out.append(token)
        if len(out) == n or token in stops:
            break
    return out


def _stops(merged) -> set[int]:
    from honing.evaluate.generation import stop_token_ids

    return set(stop_token_ids(merged.tokenizer))


@pytest.fixture(scope="module")
def honing_greedy(real):
    _, merged = real
    return {q: greedy_ids(merged.model, merged.tokenizer, _prompt_ids(merged.tokenizer, q), NEW_TOKENS)
            for q in PROMPTS}


@pytest.mark.slow
@needs_llama_cpp
@pytest.mark.parametrize("quant", ["f32", "f16"])
def test_llama_cpp_decodes_like_honing(real, honing_greedy, quant):
    """llama.cpp loads the file, tokenizes mixed text (code, Unicode, special tokens) to Honing's ids and
    greedy-decodes the same tokens as Honing's merged model."""
    d, merged = real
    llm = _llama(d / f"m.{quant}.gguf")
    try:
        assert llm.tokenize(MIXED_TEXT.encode(), add_bos=False, special=True) == \
            merged.tokenizer(MIXED_TEXT, add_special_tokens=False)["input_ids"]
        assert llm.metadata["tokenizer.ggml.pre"] == "smollm"
        for question, want in honing_greedy.items():
            got = _llama_greedy(llm, _prompt_ids(merged.tokenizer, question), NEW_TOKENS, _stops(merged))
            assert got == want, question
    finally:
        llm.close()


@pytest.mark.slow
@needs_llama_cpp
def test_llama_cpp_lora_gguf_on_base_equals_merged_file(real, honing_greedy):
    d, merged = real
    llm = _llama(d / "lora" / "base.f32.gguf", lora_path=str(d / "lora" / "adapter.f32.gguf"))
    try:
        for question, want in honing_greedy.items():
            got = _llama_greedy(llm, _prompt_ids(merged.tokenizer, question), NEW_TOKENS, _stops(merged))
            assert got == want, question
    finally:
        llm.close()


@needs_llama_cpp
def test_llama_cpp_logits_on_tiny_random_model(tmp_path, monkeypatch):
    """A random model has no margin between logits, so compare llama.cpp's logits themselves: they match
    transformers' at every position; written without the Q/K permutation (control) they do not."""
    import numpy as np
    from conftest import make_tiny_llama

    from honing.models import load_tokenizer

    # Random init (std 0.02) leaves attention nearly uniform, where RoPE hardly matters; larger q/k weights
    # make attention position-sensitive, so a wrong Q/K layout shows in the logits.
    model = make_tiny_llama()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(20)
            layer.self_attn.k_proj.weight.mul_(20)
    model.save_pretrained(tmp_path / "tiny")
    load_tokenizer("smollm2-135m-instruct").save_pretrained(tmp_path / "tiny")
    write_system_chat(tmp_path / "train.jsonl", 8)
    train_run(str(tmp_path / "tiny"), tmp_path / "train.jsonl", tmp_path / "run", max_steps=1)
    merged = load_merged(tmp_path / "run")
    ids = _prompt_ids(merged.tokenizer, PROMPTS[0])
    want = logits(merged.model, ids).numpy()

    def llama_logits(path):
        llm = _llama(path, logits_all=True, type_k=0, type_v=0)  # f32 KV cache (llama.cpp's default is f16)
        try:
            llm.eval(ids)
            return np.array(llm.scores[: len(ids)])
        finally:
            llm.close()

    export_run(tmp_path / "run", "gguf", out=tmp_path / "m.gguf", quant="f32")
    assert np.abs(llama_logits(tmp_path / "m.gguf") - want).max() < 1e-3 * np.abs(want).max()
    import honing.export.gguf_writer as gw

    monkeypatch.setattr(gw, "qk_heads", lambda *a: None)
    export_run(tmp_path / "run", "gguf", out=tmp_path / "bad.gguf", quant="f32")
    assert np.abs(llama_logits(tmp_path / "bad.gguf") - want).max() > 1e-2 * np.abs(want).max()
