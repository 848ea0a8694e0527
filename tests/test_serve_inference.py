"""The chat model pool: many PEFT adapters on one base model. Greedy requests for different adapters that
wait together run as one batch (PEFT adapter_names, left padding) and answer exactly what each would have
answered alone; the least recently used adapter leaves; a deleted model's adapters are unloaded."""

from __future__ import annotations

import threading
import time
import warnings

import pytest

from honing.serve.inference import ModelPool, Params, Target


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """A tiny random Llama and three random LoRA adapters (init_lora_weights=False: B is not zero, so
    each adapter visibly changes the output)."""
    import torch
    from conftest import make_tiny_llama

    with warnings.catch_warnings():  # PEFT -> bitsandbytes -> torch's own deprecated torch.jit.script_method
        warnings.filterwarnings("ignore", message=".*script_method.*", category=DeprecationWarning)
        from peft import LoraConfig, get_peft_model

    from honing.models import load_tokenizer, resolve_model

    root = tmp_path_factory.mktemp("pool")
    base = root / "tiny"
    make_tiny_llama(hidden=64).save_pretrained(base)
    load_tokenizer(resolve_model("smollm2-135m-instruct")).save_pretrained(base)
    dirs = []
    for i in range(3):
        torch.manual_seed(100 + i)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            m = get_peft_model(make_tiny_llama(hidden=64), LoraConfig(r=8, lora_alpha=64, init_lora_weights=False,
                                                                      target_modules=["q_proj", "v_proj",
                                                                                      "down_proj"]))
        m.save_pretrained(root / f"a{i}")
        dirs.append(root / f"a{i}")
    return str(base), dirs


def _prompts(tok, n):
    from honing.data.conversation import Message
    from honing.data.render import render_prompt

    return [render_prompt(tok, [Message("user", f"Tell me about item {i}" + " and more" * i)]) for i in range(n)]


def test_batched_greedy_equals_one_at_a_time(adapters):
    base, dirs = adapters
    pool = ModelPool(adapter_cache=4)
    targets = [Target(base), *(Target(base, f"a{i}", d) for i, d in enumerate(dirs))]
    prompts = _prompts(pool.tokenizer(base), 8)
    params = [Params(max_new_tokens=6 + i % 3, temperature=0) for i in range(8)]
    alone = [pool._complete_alone(targets[i % 4], prompts[i], params[i])[0] for i in range(8)]
    # control: the adapters change the answer (else the comparison below could not tell them apart)
    assert len({alone[i].text for i in range(4)}) >= 3, [c.text for c in alone]

    slot = pool.slot(base)
    calls = []
    real_generate = slot.model.generate

    results = [None] * 8

    def ask(i):
        results[i] = pool.complete(targets[i % 4], prompts[i], params[i])[0]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    with slot.lock:  # hold the model so all eight requests queue up
        for t in threads:
            t.start()
        deadline = time.time() + 30
        while len(slot.pending) < 8 and time.time() < deadline:
            time.sleep(0.01)
        assert len(slot.pending) == 8
        model = slot.model
        model.generate = lambda *a, **k: calls.append(k.get("input_ids").shape[0]) or real_generate(*a, **k)
    for t in threads:
        t.join()
    model.generate = real_generate
    assert calls == [8]  # one generate() for four adapters' requests
    assert [r.text for r in results] == [c.text for c in alone]
    assert [r.completion_tokens for r in results] == [c.completion_tokens for c in alone]
    assert [r.finish_reason for r in results] == [c.finish_reason for c in alone]


def test_lru_and_unload(adapters):
    base, dirs = adapters
    pool = ModelPool(adapter_cache=2)
    prompt = _prompts(pool.tokenizer(base), 1)[0]
    p = Params(max_new_tokens=2, temperature=0)
    for i in (0, 1, 0, 2):  # a1 is the least recently used when a2 arrives
        pool.complete(Target(base, f"a{i}", dirs[i]), prompt, p)
    assert pool.loaded_adapters(base) == ["a0", "a2"]
    pool.unload(["a0"])
    assert pool.loaded_adapters(base) == ["a2"]
    pool.unload(["a2"])
    assert pool.loaded_adapters(base) == []
    # the bare base model answers as before any adapter was loaded
    fresh = ModelPool(adapter_cache=2)
    assert pool.complete(Target(base), prompt, p)[0].text == fresh.complete(Target(base), prompt, p)[0].text
