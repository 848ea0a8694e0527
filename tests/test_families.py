"""The model families people fine-tune, each through the same matrix (tests/family_models.py builds the
tiny random-weight models from the families' own configuration classes, with their real chat templates):

* the chat template renders, and the loss mask covers exactly the assistant replies and their end-of-turn
  token (a template without a system role gets the system prompt folded into the first user turn);
* a LoRA SFT run and a DPO run train (loss finite, the adapter moves), the merge equals the unmerged
  adapter, and resuming from a checkpoint equals the uninterrupted run;
* the GGUF export (f32 and f16) is read back by transformers and computed by llama.cpp with the same
  logits as transformers within stated tolerances, and llama.cpp tokenizes the rendered chat as Honing does;
  the q8_0 export holds the tensors and decodes as the f16 one (logits and greedy tokens);
* the Ollama export's Modelfile TEMPLATE renders the prompt Honing trains under (string and token ids), and
  Go's own text/template renders the families' templates as Honing's checker does (when Go is installed).
* one full fine-tuning step trains, saves and exports the family's model; `hone serve` (in process, the
  transformers and llama.cpp engines) chats with it as Honing's own greedy decoding does.
* Llama 3's real tokenizer (128,256 ids, from the llama-models package) on a tiny Llama 3.x: render and mask,
  the GGUF export's llama-bpe pre-tokenizer, llama.cpp's ids on mixed text, logits and greedy tokens.

Tolerances (max |logit difference| / max |logit|): f32 1e-4, except Gemma 2/3 at 5e-3 (ggml's CPU GELU
goes through an f16 lookup table; measured 3e-4 for Gemma 3, 1.6e-3 for Gemma 2 with soft-capping); f16 2e-2
(the sharpened tiny models amplify f16 rounding; see F16_TOLERANCE); q8_0 against f16 on the unsharpened
models 3e-2, Gemma 6e-2 (see Q8_TOLERANCE).
llama.cpp tests skip without llama-cpp-python (`make llama-cpp`)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from family_models import FAMILIES, family_model, family_tokenizer, save_family

from honing.data.conversation import Conversation, Message
from honing.data.render import render_conversation, render_prompt

try:
    import llama_cpp
except ImportError:  # pragma: no cover - depends on the environment
    llama_cpp = None

needs_llama_cpp = pytest.mark.skipif(
    llama_cpp is None, reason="llama-cpp-python is not installed; build it from its sdist with `make llama-cpp`")

NAMES = sorted(FAMILIES)
F32_TOLERANCE = {"gemma2": 5e-3, "gemma3": 5e-3}
# The tiny models' q/k projections are scaled 20x (family_model), which amplifies f16 rounding: 2e-2 here,
# against docs/export.md's 5e-3 on a real fine-tuned model.
F16_TOLERANCE = 2e-2

CHAT = (Message("system", "You add numbers."), Message("user", "What is 2 plus 3?"),
        Message("assistant", "2 plus 3 is 5."), Message("user", "And 4 plus 4?"), Message("assistant", "8."))
# Templates that do not render a multi-turn conversation as a prefix of itself, so the replies' spans
# cannot be found and Honing refuses it with a TemplateError (tested below): Mistral's writes the system
# prompt only into a conversation's *last* message when that is a user turn (inference), so a rendering
# with a reply drops it; Qwen3's writes an empty <think></think> block only into the reply after the last
# user message. Mistral's matrix runs without a system prompt, Qwen3's one turn.
MULTI_TURN_REFUSED = {"mistral": CHAT[:3], "qwen3": CHAT[1:]}
REPLY_PREFIX = {"qwen3": "<think>\n\n</think>\n\n"}  # what Qwen3's template puts before the last reply


def chat_for(name: str) -> tuple[Message, ...]:
    return {"mistral": CHAT[1:], "qwen3": CHAT[:3]}.get(name, CHAT)


@pytest.fixture(scope="session")
def family_dirs(tmp_path_factory, smol_tokenizer):
    """name -> a saved tiny model directory of that family (built on first use)."""
    root = tmp_path_factory.mktemp("families")
    built = {}

    def get(name):
        if name not in built:
            # Not named after the family: llama.cpp applies its Phi-3 tokenizer fix to a model whose name
            # (the served GGUF's, from the directory) holds "phi3", and that fix needs the <s> </s> <unk> of a
            # real Phi-3 vocabulary, which the matrix's small BPE lacks ("could not load", seen in serving).
            built[name] = save_family(FAMILIES[name], smol_tokenizer, root / f"family{NAMES.index(name)}")
        return built[name]

    return get


def _load(path):
    from honing.models import load_model

    model, tok, _ = load_model(str(path))
    return model.eval(), tok


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].numpy()


def _rel(got, want) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


# -- chat template and loss mask -------------------------------------------------------------------
def _trained_runs(tok, r) -> list[str]:
    runs, current = [], []
    for t, m in [*zip(r.input_ids, r.loss_mask), (None, False)]:
        if m:
            current.append(t)
        elif current:
            runs.append(tok.decode(current))
            current = []
    return runs


@pytest.mark.parametrize("name", NAMES)
def test_render_masks_exactly_the_replies(name, smol_tokenizer):
    family = FAMILIES[name]
    tok = family_tokenizer(family, smol_tokenizer)
    chat = chat_for(name)
    r = render_conversation(tok, Conversation(chat))
    text = tok.decode(r.input_ids)
    # The trained tokens are the replies, each with its end-of-turn token, and nothing else.
    replies = [m.content for m in chat if m.role == "assistant"]
    want = [f"{c}{family.end_of_turn}" for c in replies]
    want[-1] = REPLY_PREFIX.get(name, "") + want[-1]
    assert [run.strip() for run in _trained_runs(tok, r)] == [w.strip() for w in want], text
    assert chat[0].role != "system" or "You add numbers." in text  # kept (folded into the user turn if need be)
    # The prompt Honing sends at inference is the training rendering up to the first reply.
    prompt = render_prompt(tok, chat[: [m.role for m in chat].index("assistant")])
    assert r.input_ids[: len(prompt)] == prompt
    assert r.loss_mask[len(prompt)] and not any(r.loss_mask[: len(prompt)])


@pytest.mark.parametrize("name", sorted(MULTI_TURN_REFUSED))
def test_prefix_inconsistent_multi_turn_is_refused_clearly(name, smol_tokenizer):
    from honing.data.render import TemplateError

    tok = family_tokenizer(FAMILIES[name], smol_tokenizer)
    with pytest.raises(TemplateError, match="as a prefix of the whole conversation"):
        render_conversation(tok, Conversation(MULTI_TURN_REFUSED[name]))


def test_template_without_system_role_folds_it_into_the_first_user_turn(smol_tokenizer):
    """Gemma 2's template raises on a system message; Honing folds it into the first user turn exactly as
    Gemma 3's template does, so both render the same conversation to the same text."""
    g2 = family_tokenizer(FAMILIES["gemma2"], smol_tokenizer)
    g3 = family_tokenizer(FAMILIES["gemma3"], smol_tokenizer)
    assert g2.decode(render_conversation(g2, Conversation(CHAT)).input_ids) == \
        g3.decode(render_conversation(g3, Conversation(CHAT)).input_ids)


# -- GGUF ------------------------------------------------------------------------------------------
def _write_gguf(model, tok, tok_dir, path, quant):
    from honing.export.gguf_writer import write_model_gguf
    from honing.export.tokenizer_meta import tokenizer_meta

    write_model_gguf(path, model, tokenizer_meta(tok, tok_dir, model.config.vocab_size), quant, name="tiny")
    return path


@pytest.fixture(scope="module")
def ggufs(family_dirs, tmp_path_factory):
    """name -> (model, tokenizer, {quant: GGUF path}) of the untrained tiny model."""
    out = tmp_path_factory.mktemp("family-gguf")
    cache = {}

    def get(name):
        if name not in cache:
            model, tok = _load(family_dirs(name))
            paths = {q: _write_gguf(model, tok, family_dirs(name), out / f"{name}.{q}.gguf", q) for q in ("f32", "f16")}
            cache[name] = (model, tok, paths)
        return cache[name]

    return get


def _chat_ids(tok):
    return render_conversation(tok, Conversation(CHAT[1:3])).input_ids


def _as_llama(model):
    """transformers reads Mistral's GGUF (general.architecture llama, like llama.cpp's converter writes it)
    into a Llama model only; the same graph with the same parameter names."""
    from transformers import LlamaConfig, LlamaForCausalLM

    values = {k: v for k, v in model.config.to_dict().items() if k not in ("model_type", "architectures")}
    return LlamaForCausalLM(LlamaConfig(**values))


@pytest.mark.parametrize("name", NAMES)
def test_gguf_read_back_by_transformers(name, ggufs):
    """transformers' own GGUF reader (names, reverse Q/K permutation, Gemma's norm offset) gives back the
    model: every f32 tensor exactly (Gemma's norms up to float32 rounding of + 1 - 1), every f16 one as
    the original rounded to f16 (matrices; norms and biases stay f32)."""
    import copy

    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    model, _, paths = ggufs(name)
    want = model.state_dict()
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    for quant in ("f32", "f16"):
        like = _as_llama(model) if name == "mistral" else copy.deepcopy(model)
        tensors = load_gguf_checkpoint(str(paths[quant]), return_tensors=True, model_to_load=like)["tensors"]
        assert set(want) - set(tensors) <= tied and set(tensors) <= set(want), sorted(set(want) ^ set(tensors))
        for key, got in tensors.items():
            expected = want[key].half().float() if quant == "f16" and want[key].ndim == 2 else want[key]
            # exact, but for Gemma's norms: (w + 1) - 1 rounds in float32
            assert torch.allclose(torch.as_tensor(got).float(), expected, rtol=0, atol=1e-6), (quant, key)


def _llama_logits(path, ids):
    # One thread: a tiny model's step is all synchronisation with two (0.58x the time with one, measured at
    # load 9 on 2 cores); ggml splits a matrix product by rows, so the logits do not depend on it.
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=1, seed=0, verbose=False, logits_all=True,
                          type_k=0, type_v=0)  # f32 KV cache (llama.cpp's default is f16)
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)])
    finally:
        llm.close()


@needs_llama_cpp
@pytest.mark.parametrize("name", NAMES)
def test_llama_cpp_computes_what_transformers_does(name, ggufs):
    model, tok, paths = ggufs(name)
    ids = _chat_ids(tok)
    want = _logits(model, ids)
    llm = llama_cpp.Llama(model_path=str(paths["f32"]), n_ctx=256, n_threads=2, seed=0, verbose=False,
                          logits_all=True, type_k=0, type_v=0)
    try:
        # The inference prompt tokenizes as Honing's (the family's control tokens too). (The whole chat need
        # not: Honing tokenizes the segments around each reply apart, as the prompt is at inference.)
        prompt = render_prompt(tok, CHAT[1:2])
        assert llm.tokenize(tok.decode(prompt).encode(), add_bos=False, special=True) == prompt
        llm.eval(ids)
        got = np.array(llm.scores[: len(ids)])
    finally:
        llm.close()
    assert _rel(got, want) < F32_TOLERANCE.get(name, 1e-4)
    assert _rel(_llama_logits(paths["f16"], ids), want) < F16_TOLERANCE


def _greedy(path, ids, n: int) -> tuple[list[int], np.ndarray]:
    """llama.cpp's greedy continuation of ``ids`` (``n`` tokens) and the logits at every position of
    ``ids`` + continuation but the last."""
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=1, seed=0, verbose=False, logits_all=True,
                          type_k=0, type_v=0)
    try:
        llm.eval(ids)
        out = []
        for _ in range(n):
            out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
            if len(out) < n:
                llm.eval([out[-1]])
        return out, np.array(llm.scores[: llm.n_tokens])
    finally:
        llm.close()


def _assert_llama_cpp_decodes_as_transformers(path, model, prompt: list[int], steps: int = 8) -> None:
    """llama.cpp's greedy continuation of ``prompt`` from the GGUF at ``path`` is transformers' (``model``), and
    its logits along the way agree within 1e-4."""
    got, got_logits = _greedy(path, prompt, steps)
    ids = list(prompt)
    for _ in range(steps):
        ids.append(int(np.argmax(_logits(model, ids)[-1])))
    assert got == ids[len(prompt):]
    assert _rel(got_logits, _logits(model, ids[:-1])) < 1e-4


# q8_0 against f16, max |logit difference| / max |logit| (measured on these unsharpened models, load ~3:
# Llama 3 0.007, Qwen2 0.007, Qwen3 0.011, Mistral 0.012, Phi-3 0.014, Gemma 2 0.027, Gemma 3 0.035; Gemma
# scales its embeddings by sqrt(hidden size), so the quantized activations' error is larger).
Q8_TOLERANCE = {"gemma2": 6e-2, "gemma3": 6e-2}
Q8_DEFAULT_TOLERANCE = 3e-2


@needs_llama_cpp
@pytest.mark.parametrize("name", NAMES)
def test_gguf_q8_0_decodes_as_f16(name, family_dirs, tmp_path):
    """The q8_0 GGUF holds the model's tensors (every Q8_0 tensor dequantizes to the f32 file's within one
    quantization step of its largest value; at least the attention and MLP matrices are Q8_0), and llama.cpp
    computes with it what it computes with the f16 file: along f16's 16-token greedy continuation of a chat
    prompt the logits agree within Q8_TOLERANCE and the greedy choices agree (13 of 16 at least). On the
    unsharpened model: the matrix's 20x q/k scaling amplifies the activations' 8-bit rounding (llama.cpp
    quantizes them too) to 0.24 of the largest logit (measured)."""
    import gguf

    _, tok = _load(family_dirs(name))
    model = family_model(FAMILIES[name], len(tok), sharpen=False)
    paths = {q: _write_gguf(model, tok, family_dirs(name), tmp_path / f"{q}.gguf", q) for q in ("f32", "f16", "q8_0")}
    exact = {t.name: np.array(t.data) for t in gguf.GGUFReader(paths["f32"]).tensors}
    quantized = [t for t in gguf.GGUFReader(paths["q8_0"]).tensors if t.tensor_type == gguf.GGMLQuantizationType.Q8_0]
    assert {t.name for t in quantized} >= {n for n in exact if n.endswith(("attn_q.weight", "ffn_down.weight"))}
    for t in quantized:
        want = exact[t.name]
        got = gguf.quants.dequantize(np.array(t.data), t.tensor_type).reshape(want.shape)
        assert np.abs(got - want).max() <= np.abs(want).max() / 127, t.name
    ids = _chat_ids(tok)
    tolerance = Q8_TOLERANCE.get(name, Q8_DEFAULT_TOLERANCE)
    continuation, f16 = _greedy(paths["f16"], ids, 16)
    seq = ids + continuation
    q8 = _llama_logits(paths["q8_0"], seq[:-1])
    assert _rel(q8, f16) < tolerance
    chosen = slice(len(ids) - 1, None)  # the positions whose argmax is the next greedy token
    agree = f16[chosen].argmax(1) == q8[chosen].argmax(1)
    # Random tiny models have flat logits (the two best are often closer than the 8-bit rounding), so a few
    # greedy choices may flip; a real fault (a wrong scale, a misplaced tensor) flips most. Measured: 16/16
    # for every family but Gemma 3, 14/16.
    assert agree.sum() >= 13, agree


@needs_llama_cpp
@pytest.mark.parametrize("rope", [
    {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024, "rope_theta": 10000.0},
], ids=["linear", "yarn"])
def test_llama_cpp_rope_scaling(rope, smol_tokenizer, tmp_path):
    """RoPE scaling written as llama.cpp's keys (linear on Llama, YaRN on Qwen2) computes the same logits."""
    import dataclasses

    family = FAMILIES["llama3" if rope["rope_type"] == "linear" else "qwen2"]
    family = dataclasses.replace(family, extra=(*family.extra, ("rope_parameters", rope)))
    tok = family_tokenizer(family, smol_tokenizer)
    tok.save_pretrained(tmp_path)
    model = family_model(family, len(tok))
    ids = _chat_ids(tok)
    got = _llama_logits(_write_gguf(model, tok, tmp_path, tmp_path / "m.gguf", "f32"), ids)
    assert _rel(got, _logits(model, ids)) < 1e-4


@needs_llama_cpp
def test_llama3_rope_freqs_matter(ggufs, family_dirs, tmp_path, monkeypatch):
    """Control: the same Llama 3 model written without its rope_freqs tensor computes other logits."""
    import honing.export.gguf_families as families

    model, tok, _ = ggufs("llama3")
    ids = _chat_ids(tok)
    monkeypatch.setattr(families, "extra_tensors", lambda *a: iter(()))
    bad = _write_gguf(model, tok, family_dirs("llama3"), tmp_path / "bad.gguf", "f32")
    assert _rel(_llama_logits(bad, ids), _logits(model, ids)) > 1e-2


# -- training, merge and export through a real run ---------------------------------------------------
# Settings that skip the auto probes (thread timing, micro-batch rates) and evaluate once: seconds per run.
FAST = {"threads": 1, "micro_batch_size": 4, "eval_every": 2, "save_every": 2}


def _base_dir(result) -> Path:
    import json

    return Path(json.loads((result.run_dir / "run.json").read_text())["base_model"]["path"])


def _write_chats(path, name: str, n: int = 8):
    """Arithmetic chats in the form the family's template renders (Mistral's without a system prompt)."""
    import json

    system = [] if name in MULTI_TURN_REFUSED and name == "mistral" else [{"role": "system", "content": "You add."}]
    rows = [{"messages": [*system, {"role": "user", "content": f"What is {i} plus {i + 1}?"},
                          {"role": "assistant", "content": f"{i} plus {i + 1} is {2 * i + 1}."}]} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _sft_values(family_dir, data, out) -> dict:
    return {"model": str(family_dir), "data": str(data), "out": str(out), "batch_size": 4, "dtype": "fp32",
            "tensorboard": False, "seed": 0, "max_steps": 2, "learning_rate": 2e-2, "max_length": 96, **FAST}


@pytest.fixture(scope="module")
def trained(family_dirs, tmp_path_factory):
    """name -> (RunResult, the lines it logged): LoRA SFT, 2 steps."""
    from honing.train import build_config, train

    root = tmp_path_factory.mktemp("family-runs")
    cache = {}

    def get(name):
        if name not in cache:
            lines = []
            data = _write_chats(root / f"{name}.jsonl", name)
            # (run directories are not named after the family: llama.cpp keys tokenizer fixes on "phi3" in a name)
            values = _sft_values(family_dirs(name), data, root / f"run{NAMES.index(name)}")
            cache[name] = (train(build_config(values=values), log=lines.append), lines)
        return cache[name]

    return get


@pytest.mark.parametrize("name", NAMES)
def test_lora_sft_merge_and_gguf_export(name, trained, tmp_path):
    """Two LoRA SFT steps train (finite, moving loss; the adapter is nonzero), the merged model computes
    what base + adapter does, and the exported f16 GGUF holds the merged model (llama.cpp's logits when
    built)."""
    from honing.export import export_run
    from honing.export.merge import load_merged
    from honing.models.loading import load_for_inference

    result, lines = trained(name)
    # The run says which LoRA path it took (Honing's fused layers or PEFT's modules), and `hone models list`
    # (honing.models.families) tells users the same for this family.
    from honing.models.families import family_support

    path_line = next(line for line in lines if line.startswith("LoRA layers: "))
    fused = "fused path on" in path_line
    assert f"LoRA ({'fused' if fused else 'PEFT'})" in family_support(_base_dir(result))[1], path_line
    assert result.status == "completed" and result.steps == 2
    assert all(np.isfinite(result.train_losses)), result.train_losses
    adapter, tok, _ = load_for_inference(result.run_dir)
    ids = _chat_ids(tok)
    unmerged = _logits(adapter, ids)
    merged = load_merged(result.run_dir)
    assert _rel(_logits(merged.model, ids), unmerged) < 1e-5
    out = tmp_path / "m.gguf"
    export_run(result.run_dir, "gguf", out=out, quant="f16", merged=merged)
    if llama_cpp is not None:
        assert _rel(_llama_logits(out, ids), unmerged) < F16_TOLERANCE * (1 if name not in F32_TOLERANCE else 2)


# Resume is family-independent but for the layers it restores: the fused path with llama3 RoPE (Llama 3),
# PEFT's modules on fused qkv/gate_up projections (Phi-3) and on Gemma's layers. All seven pass (measured:
# 3-7 s each on a loaded 2-core machine); three keep the suite's budget.
RESUME_FAMILIES = ["gemma2", "llama3", "phi3"]


@pytest.mark.parametrize("name", RESUME_FAMILIES)
def test_resume_equals_uninterrupted(name, trained, family_dirs, tmp_path):
    """Paused after step 1 (the PAUSE file the service uses) and resumed, the run ends with the adapter of
    the uninterrupted run, bit for bit (on top of tests/test_resume.py's kill -9 on a Llama-style model)."""
    from safetensors.torch import load_file

    from honing.rundir import PAUSE_FILE
    from honing.train import build_config, train

    whole, _ = trained(name)
    config = build_config(values=_sft_values(family_dirs(name), _write_chats(tmp_path / "d.jsonl", name),
                                              tmp_path / "run"))

    def pause_before_step_1(line):
        if line.startswith("eval loss before training"):
            (tmp_path / "run" / PAUSE_FILE).touch()

    assert train(config, log=pause_before_step_1).status == "paused"
    resumed = train(config, resume=True, log=lambda _m: None)
    assert resumed.status == "completed" and resumed.steps == 2
    a = load_file(str(whole.final_dir / "adapter_model.safetensors"))
    b = load_file(str(resumed.final_dir / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", NAMES)
def test_dpo_step(name, family_dirs, tmp_path):
    """One DPO step on preference pairs: a fresh adapter is its own reference, so the first loss is log 2."""
    import math

    from export_helpers import train_run
    from preference_helpers import write_toy_pairs

    data = write_toy_pairs(tmp_path / "pairs.jsonl", 4)
    result = train_run(str(family_dirs(name)), data, tmp_path / "run", objective="dpo", max_steps=1,
                       max_length=96, **{**FAST, "eval_every": 1, "save_every": 1})
    assert result.status == "completed"
    assert result.train_losses[0] == pytest.approx(math.log(2), abs=1e-4)


def test_unsupported_rope_scaling_is_refused_before_the_merge(trained, monkeypatch, tmp_path):
    """A setting llama.cpp cannot reproduce (here: 'longrope' scaling) fails at `hone export` start, from
    the base's config alone, naming what is supported; nothing is merged or written."""
    import json

    from honing import export
    from honing.errors import ModelError

    result, _ = trained("phi3")
    config_path = tmp_path / "config.json"
    config = json.loads((_base_dir(result) / "config.json").read_text())
    config["rope_scaling"] = config["rope_parameters"] = {"rope_type": "longrope", "rope_theta": 10000.0,
                                                          "short_factor": [1.0] * 8, "long_factor": [2.0] * 8,
                                                          "original_max_position_embeddings": 4096}
    config_path.write_text(json.dumps(config))
    monkeypatch.setattr("honing.models.catalog.resolve_model",
                        lambda ref: type("R", (), {"path": tmp_path})())
    monkeypatch.setattr(export, "_merge", lambda *a: pytest.fail("merged before the check"))
    with pytest.raises(ModelError, match="RoPE scaling 'longrope'.*supported: default, linear, yarn, llama3"):
        export.export_run(result.run_dir, "gguf", out=tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()


# -- SentencePiece tokenizers (Llama 2 / Mistral 7B / Phi-3 style, and Gemma style) -------------------
SP_TEXT = "Hello world,  12345 tabs\tand café — 日本語 🙂\nnew line  x"


def _sentencepiece_tokenizer(kind: str, root: Path):
    """A SentencePiece BPE model with byte fallback trained on this repository's docs (seeded by its fixed
    input; ~2 s), converted by transformers as a real model's tokenizer.model is: Llama/Mistral style (<unk>
    <s> </s>, a ``▁`` before the text) or Gemma style (<pad> <eos> <bos> <unk>, no prefix, its turn markers
    as pieces). Returned as transformers saves it in a run (tokenizer.json only) and that directory."""
    import json

    spm = pytest.importorskip("sentencepiece")
    from transformers import AutoTokenizer

    src, saved = root / f"{kind}-src", root / f"{kind}-saved"
    src.mkdir(parents=True)
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(p.read_text() for p in sorted((Path(__file__).parents[1] / "docs").glob("*.md"))))
    common = {"vocab_size": 1000, "model_type": "bpe", "byte_fallback": True, "character_coverage": 1.0,
              "num_threads": 1, "split_digits": True, "allow_whitespace_only_pieces": True,
              "remove_extra_whitespaces": False, "normalization_rule_name": "identity", "minloglevel": 2}
    if kind == "llama":
        spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(src / "tokenizer"), unk_id=0, bos_id=1,
                                       eos_id=2, pad_id=-1, **common)
        config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    else:
        spm.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=str(src / "tokenizer"), pad_id=0, eos_id=1, bos_id=2, unk_id=3,
            pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", add_dummy_prefix=False,
            user_defined_symbols=["<start_of_turn>", "<end_of_turn>"], **common)
        config = {"tokenizer_class": "GemmaTokenizer", "bos_token": "<bos>", "eos_token": "<eos>",
                  "unk_token": "<unk>", "pad_token": "<pad>"}
    (src / "tokenizer_config.json").write_text(json.dumps({**config, "add_bos_token": True}))
    AutoTokenizer.from_pretrained(str(src)).save_pretrained(saved)
    return AutoTokenizer.from_pretrained(str(saved)), saved


@pytest.mark.parametrize(("kind", "name"), [("llama", "mistral"), ("gemma", "gemma3")])
def test_sentencepiece_tokenizer_in_gguf(kind, name, tmp_path):
    """A SentencePiece tokenizer is written as llama.cpp's 'llama' tokenizer: llama.cpp tokenizes mixed text
    (spaces, digits, tabs, Unicode through byte fallback, the turn markers) to transformers' ids, and
    transformers reads the same tokenizer back from the file."""
    from transformers import AutoTokenizer

    from honing.export.tokenizer_meta import tokenizer_meta

    tok, saved = _sentencepiece_tokenizer(kind, tmp_path)
    model = family_model(FAMILIES[name], len(tok))
    meta = tokenizer_meta(tok, saved, model.config.vocab_size)
    assert (meta.model, meta.add_space_prefix, meta.add_bos) == ("llama", kind == "llama", True)
    path = _write_gguf(model, tok, saved, saved / "m.gguf", "f32")
    ids = tok(SP_TEXT)["input_ids"]
    chat = "<start_of_turn>user\nHi there<end_of_turn>\n" if kind == "gemma" else "[INST] Hi there [/INST] ok"
    back = AutoTokenizer.from_pretrained(str(saved), gguf_file=path.name)
    assert back(SP_TEXT)["input_ids"] == ids
    if llama_cpp is None:
        return
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=1, seed=0, verbose=False, logits_all=True,
                          type_k=0, type_v=0)
    try:
        assert llm.tokenize(SP_TEXT.encode(), add_bos=True, special=True) == ids
        assert llm.tokenize(chat.encode(), add_bos=False, special=True) == tok(chat, add_special_tokens=False)["input_ids"]
        llm.eval(ids)
        got = np.array(llm.scores[: len(ids)])
    finally:
        llm.close()
    assert _rel(got, _logits(model, ids)) < F32_TOLERANCE.get(name, 1e-4)


# -- Ollama ---------------------------------------------------------------------------------------
def _modelfile(folder: Path) -> dict:
    """TEMPLATE, SYSTEM (or None) and the stop strings of an exported Modelfile."""
    import re

    text = (folder / "Modelfile").read_text()
    quoted = dict(re.findall(r'^(TEMPLATE|SYSTEM) """(.*?)"""$', text, re.DOTALL | re.MULTILINE))
    return {"template": quoted["TEMPLATE"], "system": quoted.get("SYSTEM"),
            "stops": re.findall(r'^PARAMETER stop "(.*)"$', text, re.MULTILINE)}


def _requests(name: str) -> list[list[dict]]:
    """The family's chat cut before each reply: what a client sends."""
    chat = [{"role": m.role, "content": m.content} for m in chat_for(name)]
    return [chat[:i] for i, m in enumerate(chat) if m["role"] == "assistant"]


@pytest.mark.parametrize("name", NAMES)
def test_ollama_modelfile_renders_the_training_prompt(name, trained, tmp_path):
    """`hone export --format ollama` of the trained run: the Modelfile's TEMPLATE, rendered as Ollama does
    (the Modelfile's SYSTEM inserted when a request has none), gives the prompt Honing trains and serves
    under, as a string and (llama.cpp built) as the token ids the exported GGUF's tokenizer makes of it,
    BOS included; requests with their own system prompt render it in its place (Gemma: folded into the
    first user turn; Mistral: before the last user message)."""
    from honing.export import export_run
    from honing.export.gotemplate import render_ollama_chat
    from honing.export.ollama import jinja_prompt
    from honing.models.families import family_support
    from honing.models.loading import load_for_inference

    result, _ = trained(name)
    exported = export_run(result.run_dir, "ollama", out=tmp_path / "ollama", quant="q8_0")
    out, modelfile = exported.out, _modelfile(exported.out)
    # Llama 3.2's template writes today's date into its system turn: the export says it is frozen.
    assert any("Today Date" in note for note in exported.notes) == (name == "llama3"), exported.notes
    _, tok, _ = load_for_inference(result.run_dir)  # the tokenizer (and template) training used
    trained_system = None if name == "mistral" else "You add."  # _write_chats' system prompt
    assert modelfile["system"] == trained_system
    assert FAMILIES[name].end_of_turn in modelfile["stops"]
    assert "Ollama" in family_support(_base_dir(result))[1]  # `hone models list` says so
    cases = []
    for request in _requests(name):
        cases.append((request, request))
        if request[0]["role"] == "system":  # no system prompt of its own: Ollama inserts SYSTEM
            cases.append((request[1:], [{"role": "system", "content": trained_system}, *request[1:]]))
    llm = None if llama_cpp is None else llama_cpp.Llama(model_path=str(out / "model.q8_0.gguf"), vocab_only=True,
                                                         verbose=False)
    for request, honing_sees in cases:
        prompt = render_ollama_chat(modelfile["template"], request, modelfile["system"])
        assert request[-1]["content"] in prompt
        assert prompt == jinja_prompt(tok, honing_sees, add_bos=False), request
        if llm is not None:  # Ollama tokenizes with the GGUF's own BOS rule and special tokens parsed
            want = render_prompt(tok, [Message(m["role"], m["content"]) for m in honing_sees])
            assert llm.tokenize(prompt.encode(), add_bos=True, special=True) == want, request
    if llm is not None:
        llm.close()


def test_go_text_template_renders_as_honing(smol_tokenizer, tmp_path):
    """Every family's Go template, rendered by Go's own text/template (as Ollama runs it) on the probe
    conversations and with a Modelfile SYSTEM, gives what Honing's Go-template renderer gives, which the
    export checks against the chat template. Needs a Go toolchain (skipped without one)."""
    import json
    import os
    import shutil
    import subprocess

    from honing.export.gotemplate import collate, render_ollama_chat
    from honing.export.ollama import PROBES, translate_chat_template

    if shutil.which("go") is None:
        pytest.skip("no Go toolchain (apt-get install golang-go) to render with Go's text/template")
    jobs, want = [], []
    for name in NAMES:
        template = translate_chat_template(family_tokenizer(FAMILIES[name], smol_tokenizer), add_bos=False).template
        for messages in PROBES:
            for system in (None, "Be kind."):
                msgs = ([{"role": "system", "content": system}] if system and messages[0]["role"] != "system"
                        else []) + list(messages)
                joined, collated = collate(msgs)
                data = {"Messages": collated, "System": joined, "Prompt": "", "Response": "", "Tools": []}
                jobs.append({"Template": template, "Data": data})
                want.append(render_ollama_chat(template, messages, system))
    # Control: a template Go renders differently from a naive reading (trim markers eat the newline).
    jobs.append({"Template": "a\n{{- .System }}", "Data": {"System": "b"}})
    want.append("ab")
    env = {**os.environ, "GOCACHE": os.environ.get("GOCACHE") or str(tmp_path / "gocache"), "GOFLAGS": "-mod=mod",
           "GOTOOLCHAIN": "local"}
    env.setdefault("HOME", str(tmp_path))
    script = Path(__file__).parent / "fixtures" / "ollama_go" / "render.go"
    done = subprocess.run(["go", "run", str(script)], input=json.dumps(jobs), capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300, check=True)
    got = json.loads(done.stdout)
    assert len(got) == len(want) == len(NAMES) * len(PROBES) * 2 + 1
    assert [g for g, w in zip(got, want) if g != w] == []


# -- full fine-tuning and `hone serve` -------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_full_fine_tuning_step(name, family_dirs, tmp_path):
    """One full fine-tuning step (every weight trained, no adapter): the run completes with a finite loss,
    saves a model of the family's own architecture whose weights moved, and that model loads for inference
    and exports to a GGUF that llama.cpp computes as transformers does (f32; Gemma 5e-3, as above)."""
    from export_helpers import train_run
    from safetensors.torch import load_file

    from honing.export import export_run
    from honing.models.families import model_type
    from honing.models.loading import load_for_inference

    base = family_dirs(name)
    data = _write_chats(tmp_path / "d.jsonl", name)
    result = train_run(str(base), data, tmp_path / "run", method="full", max_steps=1, learning_rate=1e-3,
                       max_length=96, **{**FAST, "eval_every": 1, "save_every": 1})
    assert result.status == "completed" and all(np.isfinite(result.train_losses))
    assert model_type(result.final_dir) == model_type(base)
    before, after = load_file(str(base / "model.safetensors")), load_file(str(result.final_dir / "model.safetensors"))
    moved = [k for k in before if k in after and not torch.equal(before[k], after[k])]
    assert len(moved) >= len(before) // 2, moved
    model, tok, _ = load_for_inference(result.run_dir)
    ids = _chat_ids(tok)
    want = _logits(model, ids)
    out = export_run(result.run_dir, "gguf", out=tmp_path / "full.gguf", quant="f32").out
    if llama_cpp is not None:
        assert _rel(_llama_logits(out, ids), want) < F32_TOLERANCE.get(name, 1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_qlora_step(name, family_dirs, tmp_path):
    """Two QLoRA steps (bitsandbytes on CPU): every linear layer of the family's decoder is 4-bit NF4 under
    its adapter (Phi-3's fused qkv and gate_up projections too), the loss is finite, the base's weights stay
    as loaded and the adapter moves; the saved adapter applies with plain PEFT to the full-precision base."""
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb
    from export_helpers import train_run
    from peft import PeftModel
    from safetensors.torch import load_file

    from honing.train import chain

    seen = {}
    original = chain.load_starting_model

    def capture(config, runtime, say):
        model, tok, resolved, start = original(config, runtime, say)
        # (the parameters themselves, not their names: PEFT's injection renames them)
        seen["model"], seen["frozen"] = model, [(p, p.detach().clone()) for p in model.parameters()]
        return model, tok, resolved, start

    chain.load_starting_model = capture
    try:
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            result = train_run(str(family_dirs(name)), _write_chats(tmp_path / "d.jsonl", name),
                               tmp_path / "run", method="qlora", max_steps=2, learning_rate=2e-2, max_length=96,
                               **FAST)
    finally:
        chain.load_starting_model = original
    # (bitsandbytes' CPU inference layout, taken after the eval before training, has no backward: torch
    # warns that it backpropagates through an op without an autograd kernel, and the gradient is lost)
    assert not [w for w in warned if "autograd kernel" in str(w.message)], [str(w.message) for w in warned]
    assert result.status == "completed" and all(np.isfinite(result.train_losses)), result.train_losses
    model = seen["model"]
    linears = [m for n, m in model.named_modules() if n.endswith("base_layer")]
    assert linears and all(isinstance(m, bnb.nn.Linear4bit) for m in linears), {type(m) for m in linears}
    assert len(linears) == sum(1 for n, _ in model.named_modules() if n.endswith("lora_A"))
    assert all(torch.equal(p, before) for p, before in seen["frozen"])
    adapter = load_file(str(result.final_dir / "adapter_model.safetensors"))
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in adapter.items())
    base, tok = _load(family_dirs(name))
    peft_model = PeftModel.from_pretrained(base, str(result.final_dir)).eval()
    ids = _chat_ids(tok)
    with_adapter = _logits(peft_model, ids)
    with peft_model.disable_adapter():
        without = _logits(peft_model, ids)
    assert np.isfinite(with_adapter).all() and _rel(with_adapter, without) > 1e-6


@pytest.fixture(scope="module", params=["transformers", "llama.cpp"])
def served_families(request, family_dirs, tmp_path_factory):
    """An in-process `hone serve` app offering every family's tiny model (`--models tiny-NAME=PATH`), with
    the given chat engine (llama.cpp at f32, so its greedy tokens are transformers')."""
    from fastapi.testclient import TestClient
    from openai import OpenAI

    from honing.serve.app import create_app
    from honing.serve.settings import Settings

    if request.param == "llama.cpp" and llama_cpp is None:
        pytest.skip("llama-cpp-python is not installed")
    models = {f"tiny-{name}": (str(family_dirs(name)), None) for name in NAMES}
    settings = Settings(data_dir=tmp_path_factory.mktemp("serve"), no_auth=True, embedded_worker=False,
                        engine=request.param, engine_quant="f32", engine_threads=1, base_models=models)
    with TestClient(create_app(settings)) as http:
        yield OpenAI(base_url="http://testserver/v1", api_key="none", http_client=http, max_retries=0)


@pytest.mark.parametrize("name", NAMES)
def test_served_chat(name, served_families, family_dirs):
    """Chat through `hone serve` (the OpenAI API, both engines) with the family's model: the prompt is the
    one Honing trains under (its token count is render_prompt's, the system prompt folded for Gemma 2) and
    the greedy reply is Honing's own greedy decoding of it, stopped at the family's end-of-turn."""
    from export_helpers import greedy_ids

    from honing.evaluate.generation import stop_token_ids

    client = served_families
    model, tok = _load(family_dirs(name))
    chat = chat_for(name)
    messages = chat[: [m.role for m in chat].index("assistant")]
    prompt = render_prompt(tok, messages)
    reply = greedy_ids(model, tok, prompt, 8)
    stopped = bool(reply) and reply[-1] in stop_token_ids(tok)
    r = client.chat.completions.create(model=f"tiny-{name}", max_tokens=8, temperature=0,
                                       messages=[{"role": m.role, "content": m.content} for m in messages])
    choice = r.choices[0]
    assert r.usage.prompt_tokens == len(prompt)
    assert choice.message.content == tok.decode(reply[:-1] if stopped else reply, skip_special_tokens=True)
    assert choice.finish_reason == ("stop" if stopped else "length")
    from honing.models.families import family_support

    assert "serve" in family_support(family_dirs(name))[1]  # `hone models list` says so


# -- Llama 3's real tokenizer (llama-models ships it) ---------------------------------------------------
# Text llama.cpp's llama-bpe pre-tokenizer and Llama 3's split regex must cut alike: spaces runs, digit
# groups of 1-3, contractions, punctuation runs, newlines (\n\n, \r\n), tabs, accents, CJK, emoji, and the
# chat's control tokens.
LLAMA3_PROBES = ("Hello world", "I'm sure they'll say 1234567 + 89 = 1234656.", "  two  spaces\tand\ttabs  ",
                 "line one\n\nline two\r\nthree\n", "café — naïve Ünïcödé, 日本語の文章, 한국어 🙂👍🏽",
                 "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>", "x=[1,2,3];;  ...!!!\n\n\n")


def _render_masked_and_export(model, tok, model_dir, chat, end, path, caplog):
    """A real tokenizer's chat: the replies (through ``end``, the turn's end token) alone trained and the
    prompt a masked prefix of the rendering; then the f32 GGUF written to ``path`` with no library warning.
    Returns (the prompt's ids, the tokenizer metadata)."""
    from honing.export.gguf_writer import write_model_gguf
    from honing.export.tokenizer_meta import tokenizer_meta

    r = render_conversation(tok, Conversation(chat))
    assert [run.strip() for run in _trained_runs(tok, r)] == [f"2 plus 3 is 5.{end}", f"8.{end}"]
    prompt = render_prompt(tok, chat[:2])
    assert r.input_ids[: len(prompt)] == prompt and not any(r.loss_mask[: len(prompt)])
    with caplog.at_level(logging.WARNING):
        meta = tokenizer_meta(tok, model_dir, model.config.vocab_size)
        write_model_gguf(path, model, meta, "f32", name="tiny")  # the meta once: 3 s for 128k tokens
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    return prompt, meta


@pytest.fixture(scope="module")
def llama3_real(tmp_path_factory):
    """(tokenizer, model directory) of a tiny Llama 3.x model (llama3 RoPE scaling, tied embeddings) with
    Llama 3's real tokenizer (128,256 ids) and Llama 3.1's chat template."""
    from family_models import llama3_real_tokenizer, llama3_tokenizer_model

    path = llama3_tokenizer_model()
    if path is None:
        pytest.skip("llama-models is not installed (it ships Llama 3's tokenizer; `make setup` installs it: "
                    "pip install --no-deps llama-models)")
    tok = llama3_real_tokenizer(path)
    model = family_model(FAMILIES["llama3"], vocab_size=len(tok))
    model.config.bos_token_id, model.config.eos_token_id = tok.bos_token_id, tok.eos_token_id
    out = tmp_path_factory.mktemp("llama3-real") / "model"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return tok, out


def test_llama3_real_tokenizer_renders_exports_and_decodes_in_llama_cpp(llama3_real, tmp_path, caplog):
    """Llama 3's own tokenizer through the matrix's path: the chat renders with the replies (and <|eot_id|>)
    alone trained; the GGUF export names llama.cpp's llama-bpe pre-tokenizer; llama.cpp tokenizes mixed
    text to the same ids as transformers and detokenizes them back; its logits and greedy tokens equal
    transformers'."""
    tok, model_dir = llama3_real
    model, tok = _load(model_dir)  # as Honing loads a user's Llama 3 directory
    assert len(tok) == model.config.vocab_size == 128256
    assert tok("Hello world")["input_ids"] == [tok.bos_token_id, 9906, 1917]  # as Meta's tiktoken encodes it
    path = tmp_path / "llama3.gguf"
    # (no library warning reaches the user: gguf's reader warned about the BOS in Llama 3's pair template)
    prompt, meta = _render_masked_and_export(model, tok, model_dir, CHAT, "<|eot_id|>", path, caplog)
    assert (meta.model, meta.pre, meta.add_bos, meta.add_eos) == ("gpt2", "llama-bpe", True, False)
    if llama_cpp is None:
        pytest.skip("llama-cpp-python is not installed; build it from its sdist with `make llama-cpp`")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=1, seed=0, verbose=False, logits_all=True,
                          type_k=0, type_v=0)
    try:
        for text in LLAMA3_PROBES:
            ids = tok(text)["input_ids"]
            assert llm.tokenize(text.encode(), add_bos=True, special=True) == ids, text
            assert llm.detokenize(ids[1:], special=True).decode() == text
        assert llm.tokenize(tok.decode(prompt).encode(), add_bos=False, special=True) == prompt
    finally:
        llm.close()
    _assert_llama_cpp_decodes_as_transformers(path, model, prompt)


# -- Qwen2.5's real vocabulary (dashscope ships it) -----------------------------------------------------
QWEN_PROBES = ("Hello world", "I'm sure they'll say 1234567 + 89 = 1234656.", "  two  spaces\tand\ttabs  ",
               "line one\n\nline two\r\nthree\n", "café — naïve Ünïcödé, 日本語の文章, 中文分词, 🙂👍🏽",
               "def f(x):\n    return x ** 2  # 'quoted' \"double\"", "<tool_call>{\"name\": \"f\"}</tool_call>")


@pytest.fixture(scope="module")
def qwen25_real(tmp_path_factory):
    """(tokenizer, model directory) of a tiny Qwen2.5 model with Qwen's real vocabulary (151,665 ids, the
    embedding padded to 151,936 rows as the released models are) and Qwen2.5's chat template."""
    from family_models import QWEN25_VOCAB_SIZE, qwen25_real_tokenizer, qwen_tokenizer_model

    path = qwen_tokenizer_model()
    if path is None:
        pytest.skip("dashscope is not installed (it ships Qwen's vocabulary; `make setup` installs it: "
                    "pip install --no-deps dashscope)")
    tok = qwen25_real_tokenizer(path)
    model = family_model(FAMILIES["qwen2"], vocab_size=QWEN25_VOCAB_SIZE)
    model.config.bos_token_id, model.config.eos_token_id = None, tok.eos_token_id
    model.config.pad_token_id = tok.pad_token_id
    out = tmp_path_factory.mktemp("qwen25-real") / "model"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return tok, out


def test_qwen25_real_tokenizer_renders_exports_and_decodes_in_llama_cpp(qwen25_real, tmp_path, caplog):
    """Qwen2.5's own vocabulary through the matrix's path: the chat renders with the replies (and
    <|im_end|>) alone trained; the GGUF export names llama.cpp's qwen2 pre-tokenizer and pads the vocabulary
    to the embedding's rows; llama.cpp tokenizes mixed text (code, CJK, digits one by one, the tool-call
    tags) to transformers' ids and back; its logits and greedy tokens equal transformers'."""
    _, model_dir = qwen25_real
    model, tok = _load(model_dir)  # as Honing loads a user's Qwen2.5 directory
    assert (len(tok), model.config.vocab_size) == (151665, 151936)
    assert tok("Hello world")["input_ids"] == [9707, 1879]  # Qwen2.5's ids, no BOS
    path = tmp_path / "qwen25.gguf"
    prompt, meta = _render_masked_and_export(model, tok, model_dir, chat_for("qwen2"), "<|im_end|>", path, caplog)
    assert (meta.model, meta.pre, meta.add_bos) == ("gpt2", "qwen2", False)
    if llama_cpp is None:
        pytest.skip("llama-cpp-python is not installed; build it from its sdist with `make llama-cpp`")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=1, seed=0, verbose=False, logits_all=True,
                          type_k=0, type_v=0)
    try:
        assert llm.n_vocab() == 151936
        for text in QWEN_PROBES:
            ids = tok(text, add_special_tokens=False)["input_ids"]
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids, text
            assert llm.detokenize(ids, special=True).decode() == text
        assert llm.tokenize(tok.decode(prompt).encode(), add_bos=False, special=True) == prompt
    finally:
        llm.close()
    _assert_llama_cpp_decodes_as_transformers(path, model, prompt)


# -- Mistral 7B v0.3's real SentencePiece tokenizer (mistral-common ships it) ------------------------------
# Text that llama.cpp's SentencePiece tokenizer and transformers' conversion of it cut alike (none begins
# with a space: see test_mistral_v3_chat_text_tokenizes_in_llama_cpp_as_in_training).
MISTRAL_PROBES = ("Hello world", "I'm sure they'll say 1234567 + 89 = 1234656.", "line one\n\nline two\r\nthree\n",
                  "café — naïve Ünïcödé, 日本語の文章, 한국어 🙂👍🏽", "x=[1,2,3];;  ...!!!\n\n\n", "a  b\tc")


class _Records(logging.Handler):
    """Every log record at WARNING or above, from any logger (for fixtures, where caplog is not available)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def mistral_v3(tmp_path_factory):
    """A tiny Mistral with Mistral 7B v0.3's real tokenizer, loaded as Honing loads it, and its f32 GGUF:
    (model, tokenizer, model directory, GGUF path, tokenizer metadata, the warnings logged while exporting)."""
    from family_models import mistral_v3_tokenizer, mistral_v3_tokenizer_model

    from honing.export.gguf_writer import write_model_gguf
    from honing.export.tokenizer_meta import tokenizer_meta

    path = mistral_v3_tokenizer_model()
    if path is None:
        pytest.skip("Mistral v0.3's tokenizer.model is not here: `make setup` takes it out of mistral-common's "
                    "wheel (python scripts/test_assets.py .venv/share/honing-tests), or set "
                    "HONING_MISTRAL_V3_MODEL to mistral_common/data/mistral_instruct_tokenizer_240323.model.v3")
    root = tmp_path_factory.mktemp("mistral-v3")
    tok, saved = mistral_v3_tokenizer(path, root)
    model = family_model(FAMILIES["mistral"], vocab_size=len(tok))
    model.config.bos_token_id, model.config.eos_token_id = tok.bos_token_id, tok.eos_token_id
    model.save_pretrained(saved)
    model, tok = _load(saved)  # as Honing loads a user's model directory
    records = _Records()
    logging.getLogger().addHandler(records)
    try:
        meta = tokenizer_meta(tok, saved, model.config.vocab_size)
        write_model_gguf(root / "mistral.gguf", model, meta, "f32", name="tiny")
    finally:
        logging.getLogger().removeHandler(records)
    return model, tok, saved, root / "mistral.gguf", meta, records.messages


def test_mistral_v3_real_tokenizer_renders_exports_and_decodes_in_llama_cpp(mistral_v3):
    """Mistral 7B v0.3's SentencePiece tokenizer (32,768 pieces, its 771 control pieces special tokens): the
    chat renders with the replies (and </s>) alone trained; the GGUF export is llama.cpp's 'llama' tokenizer;
    llama.cpp tokenizes mixed text as transformers does; its logits and greedy tokens equal transformers'."""
    model, tok, _, path, meta, warned = mistral_v3
    assert len(tok) == model.config.vocab_size == 32768
    assert tok.convert_tokens_to_ids(["[INST]", "[/INST]"]) == [3, 4]
    assert tok("[INST]", add_special_tokens=False)["input_ids"] == [3]  # a control token, not text
    chat = chat_for("mistral")
    r = render_conversation(tok, Conversation(chat))
    assert [run.strip() for run in _trained_runs(tok, r)] == ["2 plus 3 is 5.</s>", "8.</s>"]
    prompt = render_prompt(tok, chat[:1])
    assert r.input_ids[: len(prompt)] == prompt and not any(r.loss_mask[: len(prompt)])
    assert (meta.model, meta.add_bos, meta.add_eos) == ("llama", True, False)
    assert warned == []  # no library warning reaches the user
    if llama_cpp is None:
        pytest.skip("llama-cpp-python is not installed; build it from its sdist with `make llama-cpp`")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=1, seed=0, verbose=False, vocab_only=True)
    try:
        for text in MISTRAL_PROBES:
            assert llm.tokenize(text.encode(), add_bos=True, special=True) == tok(text)["input_ids"], text
    finally:
        llm.close()
    _assert_llama_cpp_decodes_as_transformers(path, model, prompt)


def test_mistral_v3_chat_text_tokenizes_in_llama_cpp_as_in_training(mistral_v3):
    """The rendered chat text (what Ollama and llama.cpp's chat tokenize) gives the ids Honing trained on:
    ``[INST]`` ``▁What`` as SentencePiece and mistral-common cut it (transformers alone gives ``What``; Honing's
    tokenizer loading prefixes every run of text, honing.models.loading.prefix_every_text_run)."""
    if llama_cpp is None:
        pytest.skip("llama-cpp-python is not installed; build it from its sdist with `make llama-cpp`")
    _, tok, _, path, _, _ = mistral_v3
    text = tok.apply_chat_template([{"role": "user", "content": "What is 2 plus 3?"}], tokenize=False,
                                   add_generation_prompt=True)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, verbose=False, vocab_only=True)
    try:
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == \
            tok(text, add_special_tokens=False)["input_ids"]
    finally:
        llm.close()
