"""Honing DPO vs TRL's DPOTrainer + PEFT on the same job, each side in its own subprocess.

Same model (SmolLM2-135M-Instruct), same preference pairs in the same order, LoRA r=16 (alpha 32, dropout 0)
on all linear layers, sigmoid loss with beta 0.1, the reference = the same model with the adapter disabled
(both sides' default for a new adapter), batch of 4 pairs, same max length, learning rate and steps.
Reported per side:

* tokens/s: the tokens of both sequences of every pair of a step (prompt + chosen, prompt + rejected, with
  the chat template, no padding), counted the same way for both sides, / seconds of those steps; the first
  step (warm-up) is excluded;
* peak RSS of the child process;
* first and final loss (step 1 is log 2 on both sides: a fresh adapter is the reference).

Sides: ``honing`` (each pair's prompt once: one row per pair, a mask keeping each reply off the other),
``trl``, ``honing-two-seq``: Honing with chosen and rejected each carrying the whole prompt (the layout
before the shared prompt, still Honing's fallback), and ``honing-head-checkpoint``: Honing with the frozen
output head recomputed in the backward (before its gradient was taken in the forward), for before/after in
one interleaved run.

Data: synthetic chats from benchmarks/bench.py (lengths spread over [64, max_length / 2] tokens); the
chosen reply is the chat's own, the rejected one another chat's reply.

TRL lives outside Honing's venv (the project does not depend on it): a venv of its own that sees .venv's
packages through a .pth line and adds TRL and datasets, whose python runs the trl side (``--trl-python``):
    .venv/bin/python -m venv --without-pip /tmp/venv-trl
    echo "import site; site.addsitedir('$PWD/.venv/lib/python3.11/site-packages')" \
        > /tmp/venv-trl/lib/python3.11/site-packages/honing_venv.pth
    /tmp/venv-trl/bin/python -m pip install "trl==1.16.*" datasets   # only what .venv lacks lands there

Usage (CPU; ~10-20 min on 2 cores):
    HF_HUB_OFFLINE=1 HONING_CACHE_DIR=.cache .venv/bin/python benchmarks/bench_dpo.py --trl-python /tmp/venv-trl/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench import host_info, peak_rss_gb, synth_chats

MODEL = "smollm2-135m-instruct"


def make_pairs(n: int, seed: int, max_length: int) -> list[dict]:
    chats = synth_chats(n + 1, seed, max_length // 2)
    pairs = []
    for i in range(n):
        m, other = chats[i]["messages"], chats[i + 1]["messages"]
        pairs.append({"prompt": m[:-1], "chosen": m[-1:], "rejected": other[-1:]})
    return pairs


def chat_tokens(tok, messages: list[dict]) -> int:
    ids = tok.apply_chat_template(messages, tokenize=True)
    return len(ids["input_ids"] if hasattr(ids, "keys") else ids)  # transformers 5 returns a BatchEncoding


def pair_tokens(tok, pairs: list[dict]) -> list[int]:
    return [chat_tokens(tok, p["prompt"] + p["chosen"]) + chat_tokens(tok, p["prompt"] + p["rejected"]) for p in pairs]


def step_orders(job: dict) -> list[list[int]]:
    from honing.train.batching import step_indices

    return [step_indices(job["examples"], job["batch_size"], job["seed"], s)[1] for s in range(job["steps"])]


def run_honing(job: dict, side: str = "honing") -> dict:
    from honing.config import build_config
    from honing.train import train

    if side == "honing-two-seq":
        from honing.train.preference import _PairObjective

        _PairObjective.shared_prompt = False  # the two-sequence layout (prompt + chosen, prompt + rejected)
    if side == "honing-head-checkpoint":
        from honing.train import preference

        preference.FROZEN_HEAD_JACOBIAN = False  # the frozen head recomputed in the backward (before)

    out = Path(job["workdir"]) / f"{side}-run-{job['round']}"  # a fresh run directory per side and round
    config = build_config(values=dict(
        model=MODEL, data=job["train_file"], eval_data=job["eval_file"], out=str(out), method="lora",
        objective="dpo", dpo={"beta": 0.1, "loss_type": "sigmoid"},
        lora={"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
        batch_size=job["batch_size"], micro_batch_size=job["micro_batch_size"], learning_rate=job["lr"],
        lr_scheduler="linear", warmup_ratio=0.0, max_steps=job["steps"], max_length=job["max_length"],
        dtype="fp32", device="cpu", packing=True, seed=job["seed"], eval_every=10_000, save_every=10_000,
        tensorboard=False, **({"threads": job["threads"]} if job.get("threads") else {}),
    ))
    t0 = time.perf_counter()
    train(config, log=lambda m: print("[honing]", m, flush=True))
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("train_loss") is not None]
    seconds = [r["step_seconds"] for r in rows]  # each optimizer step's wall time, as the loop measured it
    return summary(side, job, seconds, [r["train_loss"] for r in rows], wall)


def run_trl(job: dict) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from torch.utils.data import SequentialSampler
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from honing.models.catalog import resolve_model

    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    pairs = [json.loads(line) for line in Path(job["train_file"]).read_text().splitlines()]
    records = [pairs[i] for order in step_orders(job) for i in order]  # Honing's order, read sequentially
    path = str(resolve_model(MODEL).path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(path)
    args = DPOConfig(
        output_dir=str(Path(job["workdir"]) / "trl-run"), per_device_train_batch_size=job["batch_size"],
        gradient_accumulation_steps=1, max_steps=job["steps"], max_length=job["max_length"], beta=0.1,
        loss_type=["sigmoid"], learning_rate=job["lr"], lr_scheduler_type="linear", warmup_steps=0, logging_steps=1,
        save_strategy="no", report_to=[], use_cpu=True, seed=job["seed"], dataloader_num_workers=0,
        max_grad_norm=1.0, disable_tqdm=True,
    )

    class SequentialDPO(DPOTrainer):
        def _get_train_sampler(self, *a, **k):
            return SequentialSampler(self.train_dataset)

    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t)

    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SequentialDPO(model=model, args=args, train_dataset=Dataset.from_list(records), processing_class=tok,
                            peft_config=lora, callbacks=[Clock()])
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return summary("trl", job, times, losses, wall)


def summary(side: str, job: dict, seconds: list[float], losses: list[float], wall: float) -> dict:
    from honing.models.loading import load_tokenizer

    pairs = [json.loads(line) for line in Path(job["train_file"]).read_text().splitlines()]
    lengths = pair_tokens(load_tokenizer(MODEL), pairs)
    step_tokens = [sum(lengths[i] for i in order) for order in step_orders(job)][: len(seconds)]
    timed = slice(1, None) if len(seconds) > 1 else slice(None)
    tokens, secs = sum(step_tokens[timed]), sum(seconds[timed])
    return {"side": side, "tokens_per_s": tokens / secs if secs else 0.0, "timed_tokens": tokens,
            "timed_seconds": secs, "step_seconds": seconds, "step_tokens": step_tokens,
            "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
            "losses": losses, "wall_s": wall, "peak_rss_gb": peak_rss_gb()}


def child(side: str, job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    res = run_trl(job) if side == "trl" else run_honing(job, side)
    Path(job["workdir"], f"{side}-{job['round']}.json").write_text(json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps per side (the first is untimed)")
    ap.add_argument("--examples", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--micro-batch-size", default="auto", help="Honing's micro-batch (auto: its CPU token budget)")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=1, help="interleaved rounds (honing, trl, honing, trl, ...)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads per side (default: each side's own "
                    "choice); 1 keeps a loaded machine from stalling two-thread parallel regions")
    ap.add_argument("--sides", default="honing,trl", help="comma-separated, run in this order each round: "
                    "honing, trl, honing-two-seq (Honing without the shared prompt), honing-head-checkpoint (without the "
                    "head Jacobian)")
    ap.add_argument("--trl-python", default=sys.executable, help="the interpreter of the trl side (one with TRL "
                    "installed; the module docstring shows a venv for it); the honing sides run this one")
    ap.add_argument("--json", default=str(HERE / "results" / "dpo_latest.json"))
    ap.add_argument("--child", nargs=2, metavar=("SIDE", "JOB"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(*a.child)
        return
    work = Path(tempfile.mkdtemp(prefix="bench-dpo-"))
    pairs = make_pairs(a.examples + 4, seed=0, max_length=a.max_length)
    (work / "train.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs[: a.examples]))
    (work / "eval.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs[a.examples :]))
    micro = a.micro_batch_size if a.micro_batch_size == "auto" else int(a.micro_batch_size)
    job = {"workdir": str(work), "train_file": str(work / "train.jsonl"), "eval_file": str(work / "eval.jsonl"),
           "examples": a.examples, "batch_size": a.batch_size, "micro_batch_size": micro, "steps": a.steps,
           "max_length": a.max_length, "lr": 5e-5, "seed": 0, "threads": a.threads}
    sides = a.sides.split(",")
    if "trl" not in sides or not set(sides) <= {"honing", "trl", "honing-two-seq", "honing-head-checkpoint"}:
        sys.exit(f"--sides: trl and any of honing, honing-two-seq, honing-head-checkpoint (got {a.sides})")
    results: dict[str, list[dict]] = {side: [] for side in sides}
    for r in range(a.repeats):
        for side in sides:
            path = work / f"job-{r}.json"
            path.write_text(json.dumps(dict(job, round=r)))
            env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
            python = a.trl_python if side == "trl" else sys.executable
            load_before = os.getloadavg()
            done = subprocess.run([python, __file__, "--child", side, str(path)], env=env, check=False,
                                  capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"{side} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
            results[side].append(json.loads((work / f"{side}-{r}.json").read_text()))
            print(side, r, json.dumps({k: results[side][-1][k] for k in ("tokens_per_s", "peak_rss_gb", "first_loss",
                                                                         "final_loss")}),
                  f"load {[round(x, 1) for x in os.getloadavg()]}", flush=True)
            results[side][-1].update(load_before=load_before, load_after=os.getloadavg())
    med = {s: {k: statistics.median(x[k] for x in rs) for k in ("tokens_per_s", "peak_rss_gb")}
           for s, rs in results.items()}
    ratios = {s: {"speed": med[s]["tokens_per_s"] / med["trl"]["tokens_per_s"],
                  "memory": med[s]["peak_rss_gb"] / med["trl"]["peak_rss_gb"]} for s in sides if s != "trl"}
    # Per round too: a side and the TRL run beside it saw about the same load from other jobs.
    per_round = {s: [x["tokens_per_s"] / t["tokens_per_s"] for x, t in zip(results[s], results["trl"])] for s in ratios}
    report = {"job": job, "host": host_info(), "rounds": results, "median": med, "vs_trl": ratios,
              "speed_ratio_per_round": per_round}
    if "honing" in ratios:
        report.update(speed_ratio=ratios["honing"]["speed"], memory_ratio=ratios["honing"]["memory"])
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(report, indent=1))
    print("| side | tokens/s | peak RSS GB | first loss | final loss |\n| --- | --- | --- | --- | --- |")
    for s, rs in results.items():
        print(f"| {s} | {med[s]['tokens_per_s']:.1f} | {med[s]['peak_rss_gb']:.2f} | {rs[0]['first_loss']:.4f} | "
              f"{rs[0]['final_loss']:.4f} |")
    for s, ratio in ratios.items():
        print(f"{s} / TRL: x{ratio['speed']:.2f} tokens/s, x{ratio['memory']:.2f} peak RSS")


if __name__ == "__main__":
    main()
