"""Continued pre-training through the one loop on a folder of .txt files (held-out domain perplexity falls),
then SFT on top of it with init_from: the SFT run's base is the CPT run's full model."""

from __future__ import annotations

import json

from train_helpers import build_tiny_model_dir, write_arithmetic_chat

from honing.config import build_config
from honing.train import train

COMMON = {"dtype": "fp32", "tensorboard": False, "early_stopping_patience": None}


def test_cpt_lowers_domain_loss_then_sft_starts_from_it(tmp_path):
    build_tiny_model_dir(tmp_path / "tiny")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(8):
        (corpus / f"doc{i}.txt").write_text(f"Valve {i} must be closed before the pump {i} is primed. " * 6)
    cpt = train(build_config(values={**COMMON, "model": str(tmp_path / "tiny"), "data": str(corpus), "method": "full",
                                     "objective": "cpt", "cpt.block_size": 64, "out": str(tmp_path / "cpt"),
                                     "batch_size": 4, "max_steps": 6, "learning_rate": 2e-3, "eval_fraction": 0.25}),
                log=lambda _m: None)
    run = json.loads((cpt.run_dir / "run.json").read_text())
    train_src = run["dataset"]["train"]
    assert train_src["documents"] == 6 and train_src["trained_tokens"] == train_src["tokens"] - 1
    assert run["dataset"]["eval"]["documents"] == 2
    (_, before), (_, after) = cpt.eval_losses[0], cpt.eval_losses[-1]
    assert after < before - 0.5, cpt.eval_losses  # held-out domain perplexity exp(loss) falls

    write_arithmetic_chat(tmp_path / "sft.jsonl", 16)
    sft = train(build_config(values={**COMMON, "model": str(tmp_path / "tiny"), "data": str(tmp_path / "sft.jsonl"),
                                     "init_from": str(cpt.run_dir), "out": str(tmp_path / "sft"), "batch_size": 4,
                                     "max_steps": 2, "eval_fraction": 0, "lora.r": 4}), log=lambda _m: None)
    sft_run = json.loads((sft.run_dir / "run.json").read_text())
    assert sft_run["base_model"]["reference"] == str(cpt.final_dir)
    assert sft_run["init_from"]["objective"] == "cpt" and sft_run["init_from"]["method"] == "full"
    assert (sft.final_dir / "adapter_config.json").is_file()
