"""Builders for evaluation tests: a tiny classification dataset and a fine-tuned run directory
(tiny random Llama + PEFT LoRA adapter in final/, run.json, metrics.jsonl), as honing.train writes it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SYSTEM = "Name the animal's class: one of bird, fish, mammal."
ANIMALS = {
    "mammal": ["dog", "cat", "horse", "whale", "bat", "cow", "mouse", "lion"],
    "bird": ["eagle", "sparrow", "penguin", "owl", "parrot", "duck", "crow", "swan"],
    "fish": ["salmon", "trout", "shark", "tuna", "cod", "carp", "eel", "perch"],
}


def chat_record(question: str, answer: str) -> dict:
    return {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question},
                         {"role": "assistant", "content": answer}]}


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def animal_split(tmp: Path) -> tuple[Path, Path]:
    """(train.jsonl, eval.jsonl): 5 animals per class to train on, 3 per class to evaluate."""
    train, ev = [], []
    for label, names in ANIMALS.items():
        for i, name in enumerate(names):
            (train if i < 5 else ev).append(chat_record(f"What is a {name}?", label))
    return write_jsonl(tmp / "train.jsonl", train), write_jsonl(tmp / "eval.jsonl", ev)


def write_docs(tmp: Path) -> Path:
    docs = tmp / "docs"
    docs.mkdir()
    (docs / "mammals.md").write_text("Mammals are warm-blooded animals with fur that feed their young milk. "
                                     "Dogs, cats, horses, whales and bats are mammals. " * 3)
    (docs / "birds.txt").write_text("Birds have feathers and lay eggs. Eagles, owls, penguins and swans are birds.")
    (docs / "ignored.bin").write_bytes(b"\x00\x01")
    return docs


def make_run_dir(tmp: Path, base_dir: Path, train_path: Path, random_adapter: bool = True) -> Path:
    """A run directory whose final/ holds a LoRA adapter over the tiny model in ``base_dir``.

    ``random_adapter=False`` keeps PEFT's default init (B = 0), so the adapter changes nothing."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(str(base_dir))
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=not random_adapter)
    model = get_peft_model(base, cfg)
    if random_adapter:
        with torch.no_grad():  # a clearly different model, so base and fine-tuned answers differ
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.normal_(0, 0.5)
    run = tmp / "run"
    model.save_pretrained(str(run / "final"))
    (run / "run.json").write_text(json.dumps({
        "base_model": {"reference": str(base_dir)}, "method": "lora",
        "dataset": {"train": {"path": str(train_path)}, "eval": None}, "status": "completed"}))
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"step": 1, "train_loss": 10.9}, {"step": 2, "train_loss": 10.5, "eval_loss": 10.7},
        {"step": 3, "train_loss": 10.1}, {"step": 4, "train_loss": 9.8, "eval_loss": 10.2}]))
    return run


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine each tiny op can wait on
    an OpenMP barrier for a descheduled thread (measured: 21 ms vs 0.012 ms for a 40x64 linear)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
