"""The llama.cpp chat engine (honing.serve.engines) on the real embedded SmolLM2-135M-Instruct: the official
openai client through a real `hone serve --engine llama.cpp`, streamed and not; a LoRA adapter and a
checkpoint of it answer the same greedy tokens through llama.cpp (f16 GGUF, the precision whose greedy
agreement the export tests prove) as through transformers; errors are OpenAI-shaped; an engine killed
mid-stream ends that stream with an error event and the next request starts a new engine; adapters are
evicted least recently used.

Skipped without llama-cpp-python (`make llama-cpp`), as tests/test_export_llamacpp.py. The engine runs
with one thread: on a shared 2-core machine llama.cpp's spinning threads slow to a crawl when a third
process wants a core."""

from __future__ import annotations

import warnings

import pytest
from serve_helpers import start_server

try:
    import llama_cpp
except ImportError:  # pragma: no cover - depends on the environment
    llama_cpp = None

pytestmark = [pytest.mark.skipif(llama_cpp is None, reason="llama-cpp-python is not installed; build it from its "
                                 "sdist with `make llama-cpp`"), pytest.mark.slow]

MODEL = "smollm2-135m-instruct"
QUESTION = "What is the capital of France?"
# The adapter and its checkpoint each answer this one differently from the base model (the control below).
ADAPTED = "Name three colors."


def _prompt(tok, question: str) -> list[int]:
    from honing.data.conversation import Message
    from honing.data.render import render_prompt

    return render_prompt(tok, [Message("user", question)])


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A LoRA adapter on SmolLM2 (random A and B, B scaled so answers change but stay fluent) and a
    checkpoint of it with other B values, saved as the training loop saves checkpoints."""
    import torch
    from safetensors.torch import save_file

    with warnings.catch_warnings():  # PEFT -> bitsandbytes -> torch's own deprecated torch.jit.script_method
        warnings.filterwarnings("ignore", message=".*script_method.*", category=DeprecationWarning)
        from peft import LoraConfig, get_peft_model

    from honing.models.loading import load_model

    root = tmp_path_factory.mktemp("llamacpp-adapter")
    model, _, _ = load_model(MODEL)
    torch.manual_seed(7)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, init_lora_weights=False,
                                                target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.mul_(0.3)
    peft.save_pretrained(root / "final")
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.mul_(-1.5)
    save_file({n: p.detach().contiguous() for n, p in peft.named_parameters() if p.requires_grad},
              str(root / "checkpoint.safetensors"))
    return root


def _engines(kind: str, cache, adapter_cache: int = 4):
    from honing.serve.engines import Engines

    return Engines(kind, cache, adapter_cache, threads=1)


def test_adapter_and_checkpoint_answer_the_same_through_both_engines(adapter, tmp_path):
    from honing.serve.inference import Params, Target

    targets = [Target(MODEL), Target(MODEL, "ftjob-a", adapter / "final"),
               Target(MODEL, "ftckpt-a", adapter / "final", adapter / "checkpoint.safetensors")]
    p = Params(max_new_tokens=10, temperature=0)
    answers = {}
    for kind in ("transformers", "llama.cpp"):
        e = _engines(kind, tmp_path / "cache")
        try:
            tok = e.tokenizer(MODEL)
            for t in targets:
                assert e.engine_for(t).name == kind
                c = e.complete(t, _prompt(tok, ADAPTED), p)[0]
                answers.setdefault(t.adapter_key, {})[kind] = (c.text, c.finish_reason, c.completion_tokens)
        finally:
            e.close()
    for key, by_engine in answers.items():
        assert by_engine["llama.cpp"] == by_engine["transformers"], key
    # control: the adapter and the checkpoint each change an answer (else agreement proves nothing)
    assert len({a["transformers"][0] for a in answers.values()}) == 3, answers
    assert sorted(p.name for p in (tmp_path / "cache" / "lora").iterdir()) == ["ftckpt-a.gguf", "ftjob-a.gguf"]


def test_unknown_adapter_and_lru_eviction(adapter, tmp_path):
    from honing.serve.errors import APIError
    from honing.serve.inference import Params, Target

    e = _engines("llama.cpp", tmp_path / "cache", adapter_cache=1)
    try:
        ids = _prompt(e.tokenizer(MODEL), QUESTION)
        p = Params(max_new_tokens=2, temperature=0)
        with pytest.raises(APIError) as err:
            e.complete(Target(MODEL, "ftjob-gone", tmp_path / "no-such-run" / "final"), ids, p)
        assert err.value.status == 409 and err.value.code == "model_not_ready"
        one = Target(MODEL, "ftjob-a", adapter / "final")
        two = Target(MODEL, "ftckpt-a", adapter / "final", adapter / "checkpoint.safetensors")
        for t in (one, two, one):
            e.complete(t, ids, p)
            assert e.loaded_adapters(MODEL) == [t.adapter_key]  # the other one was evicted
        e.unload(["ftjob-a"])
        assert e.loaded_adapters(MODEL) == []
    finally:
        e.close()


def _engine_pid(server_pid: int) -> int:
    import psutil

    for child in psutil.Process(server_pid).children(recursive=True):
        if "honing.serve.engines.llamacpp_worker" in " ".join(child.cmdline()):
            return child.pid
    raise AssertionError("no llama.cpp engine process under the server")


def test_openai_client_through_hone_serve_llamacpp(tmp_path):
    import os
    import signal

    import openai
    from openai import OpenAI

    server = start_server(tmp_path, extra_args=["--engine", "llama.cpp", "--engine-threads", "1"])
    try:
        client = OpenAI(base_url=server.base_url, api_key="none", max_retries=0, timeout=120)
        assert "chat engine: llama.cpp" in server.log()
        assert {m.id: m.engine for m in client.models.list().data}[MODEL] == "llama.cpp"
        msgs = [{"role": "user", "content": QUESTION}]
        r = client.chat.completions.create(model=MODEL, messages=msgs, temperature=0, max_tokens=16)
        text = r.choices[0].message.content
        assert "Paris" in text and r.choices[0].finish_reason == "stop"
        assert r.usage.prompt_tokens > 0 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
        chunks = list(client.chat.completions.create(model=MODEL, messages=msgs, temperature=0, max_tokens=16,
                                                     stream=True, stream_options={"include_usage": True}))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
        assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens
        # stop strings, max_tokens, n with a seed (reproducible), sampled
        cut = client.chat.completions.create(model=MODEL, messages=msgs, temperature=0, max_tokens=16, stop=["Paris"])
        assert cut.choices[0].message.content == text[: text.index("Paris")] and cut.choices[0].finish_reason == "stop"
        short = client.chat.completions.create(model=MODEL, messages=msgs, temperature=0, max_tokens=3)
        assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3
        sampled = [client.chat.completions.create(model=MODEL, messages=msgs, temperature=1.0, seed=11, n=3,
                                                  max_tokens=8) for _ in range(2)]
        answers = [[c.message.content for c in s.choices] for s in sampled]
        assert answers[0] == answers[1] and len(set(answers[0])) > 1, answers
        assert 3 <= sampled[0].usage.completion_tokens <= 3 * 8
        with pytest.raises(openai.NotFoundError) as err:
            client.chat.completions.create(model="ft:nope", messages=msgs, max_tokens=2)
        assert err.value.body["code"] == "model_not_found"

        # the engine dies mid-stream: the stream ends with an OpenAI-shaped error, the next request works
        stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Count to 500."}],
                                                temperature=0, max_tokens=400, stream=True)
        got = []
        with pytest.raises(openai.APIError) as err:
            for chunk in stream:
                got.append(chunk)
                if len(got) == 3:
                    os.kill(_engine_pid(server.proc.pid), signal.SIGKILL)
        assert "engine" in str(err.value.message)
        again = client.chat.completions.create(model=MODEL, messages=msgs, temperature=0, max_tokens=16)
        assert again.choices[0].message.content == text
    finally:
        server.stop()


def test_a_model_whose_conversion_fails(tmp_path):
    """A Llama whose RoPE scaling ('dynamic') llama.cpp would compute differently: the export refuses to
    write it. With auto, transformers answers it; with llama.cpp, an OpenAI-shaped error names the reason."""
    import json as _json

    from conftest import make_tiny_llama

    from honing.models import load_tokenizer
    from honing.serve.errors import APIError
    from honing.serve.inference import Params, Target

    model_dir = tmp_path / "dynamic-rope"
    make_tiny_llama().save_pretrained(model_dir)
    load_tokenizer(MODEL).save_pretrained(model_dir)
    config = _json.loads((model_dir / "config.json").read_text())
    config["rope_scaling"] = config["rope_parameters"] = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}
    (model_dir / "config.json").write_text(_json.dumps(config))
    t = Target(str(model_dir))
    strict = _engines("llama.cpp", tmp_path / "cache")
    with pytest.raises(APIError) as err:
        strict.engine_for(t)
    assert err.value.status == 500 and err.value.code == "engine_conversion_failed" and "dynamic" in err.value.message
    auto = _engines("auto", tmp_path / "cache")
    assert auto.engine_for(t).name == "transformers" and auto.name_for(t) == "transformers"
    ids = _prompt(auto.tokenizer(str(model_dir)), QUESTION)
    assert auto.complete(t, ids, Params(max_new_tokens=2, temperature=0))[0].completion_tokens == 2
    assert not list((tmp_path / "cache").rglob("*.gguf"))  # nothing half-written


class _Pipe:
    def send(self, msg):
        pass


def _run_worker(worker, requests: list[dict]) -> dict[int, list[int]]:
    """Submit ``requests`` together and step the engine's loop until all end: rid -> answer tokens."""
    worker.handle(("submit", requests))
    answers: dict[int, list[int]] = {}
    while worker.busy():
        worker.admit()
        worker.step()
        for rid, token, _ in worker.out:
            answers.setdefault(rid, []).append(token)
        worker.out = []
    return answers


def _lcp(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b) - 1) and a[n] == b[n]:
        n += 1
    return n


def test_prompt_prefixes_are_shared_per_adapter_with_the_same_answers(adapter, tmp_path):
    """The engine reads a prompt prefix once per adapter (running and ended sequences lend their cells):
    the same greedy tokens as reading every prompt whole, requests of the base and an adapter interleaved,
    fewer tokens decoded, never a prefix computed with another adapter, and kept cells give way to new ones."""
    from honing.evaluate.generation import stop_token_ids
    from honing.models.catalog import cache_root
    from honing.models.loading import load_tokenizer
    from honing.serve.engines import llamacpp_worker as W
    from honing.serve.engines.gguf_cache import base_gguf, lora_gguf

    W._quiet_llama_cpp(llama_cpp)
    llama_cpp.llama_backend_init()
    base = str(base_gguf(cache_root() / "serve-gguf", MODEL, "f16"))
    lora = str(lora_gguf(tmp_path / "cache", MODEL, "ftjob-a", adapter / "final", None))
    tok = load_tokenizer(MODEL)
    system = "You answer in one short sentence, in plain English, and never use lists or markdown."
    prompts = [_prompt_with(tok, system, q) for q in (QUESTION, ADAPTED, "Name a planet.", "Say hello.",
                                                      "What is two plus two?")]

    def req(rid, i, key):
        return {"rid": rid, "base": base, "adapter_key": key, "adapter_path": lora if key else None,
                "prompt": prompts[i], "max_tokens": 10, "stop_ids": tuple(stop_token_ids(tok))}

    class Counting(W.Worker):
        fed = 0

        def _fill(self, b, seqs):
            out = super()._fill(b, seqs)
            self.fed += b.batch.n_tokens
            return out

    first = [req(1, 0, None), req(2, 2, "ftjob-a"), req(3, 1, None), req(4, 0, "ftjob-a"), req(5, 2, None)]
    later = [req(6, 3, None), req(7, 1, "ftjob-a")]  # prompt 1: whole in the base's cells only
    cfg = {"n_ctx": 1024, "n_seq": 8, "n_batch": 512, "n_threads": 1, "adapter_cache": 2}
    whole, shared = Counting(_Pipe(), {**cfg, "share_prefixes": False}), Counting(_Pipe(), cfg)
    try:
        expected = {**_run_worker(whole, first), **_run_worker(whole, later)}
        got = _run_worker(shared, first)
        assert expected[2] != expected[5]  # control: the adapter changes this answer
        assert got == {r: expected[r] for r in got}
        # the base reads prompt 0 whole, then 1 and 2 after their longest prefix it holds; the adapter 2, then 0
        reads = len(prompts[0]) + len(prompts[1]) - _lcp(prompts[0], prompts[1]) \
            + len(prompts[2]) - max(_lcp(prompts[0], prompts[2]), _lcp(prompts[1], prompts[2])) \
            + len(prompts[2]) + len(prompts[0]) - _lcp(prompts[2], prompts[0])
        decoded = sum(len(a) - 1 for a in got.values())  # each answer token but the last is decoded
        assert shared.fed == reads + decoded < whole.fed
        fed = shared.fed
        # ended sequences keep their prompts' cells, each for its own adapter only
        got = _run_worker(shared, later)
        assert got == {r: expected[r] for r in (6, 7)}
        reads = len(prompts[3]) - max(_lcp(prompts[i], prompts[3]) for i in (0, 1, 2)) \
            + len(prompts[1]) - max(_lcp(prompts[i], prompts[1]) for i in (2, 0))
        assert shared.fed - fed == reads + sum(len(a) - 1 for a in got.values())
        # kept cells give way to the cells promised to a new request (then it is cancelled)
        b = shared.bases[base]
        before = len(b.kept)
        assert before >= 2
        shared.handle(("submit", [{**req(8, 4, None), "max_tokens": cfg["n_ctx"] - len(prompts[4]) - 8}]))
        shared.admit()
        assert b.reserved == cfg["n_ctx"] - 8 and len(b.seqs) == 1
        assert b.reserved + sum(len(p) for _, p in b.kept.values()) <= cfg["n_ctx"] and len(b.kept) < before - 1
        shared.handle(("cancel", 8))
        assert not shared.busy() and b.reserved == 0
    finally:
        whole.close()
        shared.close()


def _prompt_with(tok, system: str, question: str) -> list[int]:
    from honing.data.conversation import Message
    from honing.data.render import render_prompt

    return render_prompt(tok, [Message("system", system), Message("user", question)])
