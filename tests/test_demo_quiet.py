"""`hone demo` prints no library warning (issue 23): the demo's generation path (an adapter on the base, the
fused LoRA layers the training patches in, a shared-prefix KV cache as few-shot and RAG prompts use, and
the training's eval forward and forgetting probe) on a tiny random Llama, with every warning shown and the
process's stderr read. Seconds, not the demo's minutes."""

from __future__ import annotations

import warnings

from conftest import make_tiny_llama
from eval_helpers import one_torch_thread  # noqa: F401

from honing.data.conversation import Message
from honing.evaluate.forgetting import TextProbe
from honing.evaluate.generation import generate


def _adapter_model():
    from peft import LoraConfig, get_peft_model

    from honing.train.fused_lora import enable_fused_lora

    model = get_peft_model(make_tiny_llama(), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                         target_modules="all-linear"))
    assert enable_fused_lora(model) == 2  # as the training leaves it: the layers' forward patched
    return model


def _demo_generation_and_eval(model, tokenizer) -> None:
    import torch

    system = Message("system", "Name the Python standard-library module this docstring comes from, in one word.")
    prompts = [(system, Message("user", text)) for text in
               ("Return the logger with the given name.", "Add tag NEWTAG to all items above TAGORID.",
                "Formatter instances are used to convert a LogRecord to text.")]
    model.train()
    with torch.no_grad():  # the training's eval forward (train mode off) and the forgetting probe
        model.eval()
        model(input_ids=torch.tensor([[1, 2, 3, 4]]), labels=torch.tensor([[1, 2, 3, 4]]))
        TextProbe(tokenizer, tokens=128, window=32).perplexity(model)
    answers = generate(model, tokenizer, prompts, max_new_tokens=4)  # shared system prefix: its KV cache reused
    assert len(answers.texts) == 3
    generate(model, tokenizer, prompts, max_new_tokens=4, share_prefix=False)


def test_the_demo_generation_path_prints_no_library_warning(smol_tokenizer, capfd):
    model = _adapter_model()
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # not once per location: a warning raised earlier must show here too
        _demo_generation_and_eval(model, smol_tokenizer)
    shown = [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in caught]
    assert shown == []
    assert capfd.readouterr().err == ""  # nor logged by a library's logger
