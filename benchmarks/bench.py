"""Honing vs TRL SFTTrainer + PEFT on the same job, each side in its own subprocess.

Same model, same examples in the same order, LoRA r=16 (alpha 32, dropout 0) on all linear layers,
batch of 4 examples, max length 1,024, same learning rate and optimizer steps. Reported per side:

* tokens/s: non-padding tokens of the steps (prompt + reply) / seconds of those steps; the first step
  (allocator and kernel warm-up) is excluded on both sides;
* peak RSS (``ru_maxrss`` of the child process, so each side's number is its own);
* first and final training loss (step 1 is the base model's loss on batch 1: it should match on both
  sides, which checks that they train on the same tokens).

Data: synthetic single-turn chats (system + user -> assistant), lengths spread from 64 to ~1,024 tokens,
generated from a fixed seed (benchmarks/README in docs/performance.md). Honing trains the assistant
turn; TRL gets the same chats as prompt/completion records (completion-only loss), so both optimize the
same tokens.

Usage (CPU, ~10-15 min on 2 cores):
    HF_HUB_OFFLINE=1 HONING_CACHE_DIR=.cache .venv/bin/python benchmarks/bench.py --mode cpu
GPU mode (random-weight Llama of Llama-3.2-1B's shape, bf16, max length 2,048; reports MFU and peak GPU
memory; the Honing side is `honing.train.train` with device cuda, the same loop as `hone train`):
    python benchmarks/bench.py --mode gpu --max-length 2048 --examples 512 --steps 6 \
        --sides honing,trl,trl-packed,trl-packed-liger [--method full]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORDS = (  # noqa: SIM905 - a readable word list
    "the a model answer customer order invoice shipping policy refund account update report quarterly "
    "please thank you we will can should would data system service request ticket support team manager "
    "review approve deadline schedule meeting summary draft contract clause liability payment terms net "
    "thirty days warehouse inventory product release version feature bug fix deploy server database "
    "query latency error retry timeout configuration setting user password reset access permission role "
    "because however therefore although while after before during within across between about into over "
    "and or but so if then when where which that this these those it its our your their is are was were "
    "be been has have had do does did not no yes all any each every some many few more most less least"
).split()


def synth_chats(n: int, seed: int, max_tokens: int) -> list[dict]:
    """Chat records with total lengths spread uniformly over [64, max_tokens] tokens (approx.)."""
    rng = random.Random(seed)

    def text(n_words: int) -> str:
        out, sent = [], []
        for _ in range(max(1, n_words)):
            sent.append(rng.choice(WORDS))
            if len(sent) >= rng.randint(6, 18):
                out.append(" ".join(sent).capitalize() + ".")
                sent = []
        if sent:
            out.append(" ".join(sent).capitalize() + ".")
        return " ".join(out)

    chats = []
    for i in range(n):
        total = rng.randint(64, max_tokens)
        words = int(total / 1.25) - 20  # ~1.25 tokens per word here; ~20 template tokens
        prompt_share = rng.uniform(0.2, 0.8)
        chats.append({"messages": [
            {"role": "system", "content": f"You are assistant number {i % 7} of the operations team."},
            {"role": "user", "content": text(int(words * prompt_share))},
            {"role": "assistant", "content": text(int(words * (1 - prompt_share)))},
        ]})
    return chats


def peak_rss_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux


# ----------------------------------------------------------------------------------------- children


def run_honing(job: dict) -> dict:
    """The real product: honing.train.train with a config equivalent to the TRL side."""
    from honing.config import build_config
    from honing.train import train

    out = Path(job["workdir"]) / job.get("out_name", "honing-run")
    config = build_config(values=dict(  # noqa: C408 - keyword form reads like the TRL side
        model=job["model"], data=job["train_file"], eval_data=job["eval_file"], out=str(out), method=job["method"],
        lora={"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
        batch_size=job["batch_size"], micro_batch_size=job["micro_batch_size"], learning_rate=job["lr"],
        lr_scheduler="linear", warmup_ratio=0.0, max_steps=job["steps"], max_length=job["max_length"],
        dtype=job["dtype"], device=job["device"],
        packing=True, seed=job["seed"], eval_every=10_000, save_every=10_000, tensorboard=False,
    ), overrides=job.get("honing_set", []))  # --honing-set: what `hone train --set` would do
    # CPU seconds per step: the loop logs one metrics row per step (row 0 = the base model's eval), so
    # the process CPU time between consecutive rows is one step's (the last also holds a 2-example eval).
    from honing.train import loop

    cpu_marks: list[float] = []

    class TimedMetricsLog(loop.MetricsLog):
        def log(self, row: dict) -> None:
            cpu_marks.append(time.process_time())
            super().log(row)

    loop.MetricsLog = TimedMetricsLog
    t0 = time.perf_counter()
    train(config, log=lambda m: print("[honing]", m, flush=True))
    wall = time.perf_counter() - t0
    cpu_seconds = [b - a for a, b in itertools.pairwise(cpu_marks)]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("train_loss") is not None and r.get("step", 0) >= 1]
    # Non-padding tokens per step: the same order the loop used (honing.train.batching.step_indices).
    from honing.models.loading import load_tokenizer
    from honing.train.batching import step_indices
    from honing.train.dataset import read_examples, render_set

    tok = load_tokenizer(job["model"])
    examples = read_examples(job["train_file"], "auto")
    items = render_set(tok, examples, job["max_length"], job["train_file"], "-").items
    steps = [step_indices(len(items), job["batch_size"], job["seed"], s)[1] for s in range(len(rows))]
    step_tokens = [sum(len(items[i]) for i in idx) for idx in steps]
    step_flops = [sum(example_flops(len(items[i]), sum(items[i].loss_mask[1:])) for i in idx) for idx in steps]
    # The loop logs trained-token throughput per step; its duration is trained tokens / that rate.
    seconds = []
    prev = 0
    for r in rows:
        seconds.append((r["trained_tokens"] - prev) / r["tokens_per_s"])
        prev = r["trained_tokens"]
    res = _summary("honing", step_tokens, seconds, [r["train_loss"] for r in rows], wall, cpu_seconds)
    res["step_model_flops"] = step_flops
    return res


# SmolLM2-135M's shape: 30 layers, hidden 576, 9 query / 3 key-value heads of 64, MLP 1,536, vocabulary 49,152.
SMOL = {"layers": 30, "hidden": 576, "q_dim": 576, "kv_dim": 192, "mlp": 1536, "vocab": 49152, "lora_r": 16}


def example_flops(tokens: int, trained: int, shape: dict = SMOL) -> float:
    """Model FLOPs of one LoRA training example (forward + backward), counting real tokens only.

    Frozen linear weights: 2 FLOPs per weight per token forward and 2 backward (input gradient only) = 4N.
    Adapters (A and B of every linear layer): 2 forward + 4 backward (input and weight gradients) = 6.
    lm_head: forward and input gradient on the trained positions only (4 x vocab x hidden each).
    Causal attention: QK^T and PV over the T(T+1)/2 visible pairs, x2 FLOPs, forward; the backward
    is twice that (4 matmuls). The same count serves both sides: FLOPs spent on padding, on untrained
    positions' logits or on recomputation are not "model FLOPs"."""
    L, h, q, kv, m, r = (shape[k] for k in ("layers", "hidden", "q_dim", "kv_dim", "mlp", "lora_r"))
    linear = [(h, q), (h, kv), (h, kv), (q, h), (h, m), (h, m), (m, h)]
    n_frozen = L * sum(i * o for i, o in linear)
    n_lora = L * sum(r * (i + o) for i, o in linear)
    attention = 3 * 2 * 2 * (tokens * (tokens + 1) / 2) * q * L
    return 4 * n_frozen * tokens + 6 * n_lora * tokens + 4 * shape["vocab"] * h * trained + attention


def probe_gemm_gflops(seconds: float = 3.0) -> float:
    """Sustained fp32 GEMM rate of this machine now (the shapes of a SmolLM2 MLP projection over 512
    tokens), in a child process with torch's default threads: the ceiling any CPU trainer works under."""
    code = (
        "import time, torch\n"
        "a, b = torch.randn(512, 576), torch.randn(576, 1536)\n"
        "for _ in range(5): a @ b\n"
        "n, t0 = 0, time.perf_counter()\n"
        f"while time.perf_counter() - t0 < {seconds}:\n"
        "    a @ b; n += 1\n"
        "print(n * 2 * 512 * 576 * 1536 / (time.perf_counter() - t0) / 1e9)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def run_trl(job: dict) -> dict:
    """TRL SFTTrainer + PEFT with its defaults, except what must match the Honing side."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from torch.utils.data import SequentialSampler
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from honing.models.catalog import resolve_model
    from honing.train.batching import step_indices

    chats = [json.loads(line) for line in Path(job["train_file"]).read_text().splitlines()]
    # Same examples in the same order as Honing's steps; TRL then reads them sequentially.
    bs = job["batch_size"]
    order = [i for s in range(job["steps"]) for i in step_indices(len(chats), bs, job["seed"], s)[1]]
    records = [{"prompt": chats[i]["messages"][:-1], "completion": chats[i]["messages"][-1:]} for i in order]
    path = str(resolve_model(job["model"]).path)
    dtype = torch.bfloat16 if job["dtype"] == "bf16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(path)
    variant = job.get("trl_variant", "")  # "", "packed", "packed-liger"
    args = SFTConfig(
        output_dir=str(Path(job["workdir"]) / "trl-run"), per_device_train_batch_size=bs,
        packing="packed" in variant, padding_free="packed" in variant, use_liger_kernel="liger" in variant,
        gradient_accumulation_steps=1, max_steps=job["steps"], max_length=job["max_length"],
        learning_rate=job["lr"], lr_scheduler_type="linear", warmup_steps=0, logging_steps=1,
        save_strategy="no", report_to=[], bf16=dtype == torch.bfloat16, use_cpu=job["device"] == "cpu",
        seed=job["seed"], dataloader_num_workers=0, max_grad_norm=1.0,
    )

    class SequentialSFT(SFTTrainer):
        def _get_train_sampler(self, *a, **k):
            return SequentialSampler(self.train_dataset)

    times: list[float] = []
    cpu_times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.t, self.c = time.perf_counter(), time.process_time()

        def on_step_end(self, *a, **k):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.t)
            cpu_times.append(time.process_time() - self.c)

    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SequentialSFT(model=model, args=args, train_dataset=Dataset.from_list(records),
                            processing_class=tok, peft_config=lora if job["method"] == "lora" else None,
                            callbacks=[Clock()])
    if "packed" in variant:  # packed rows hold several examples: count tokens per optimizer step directly
        lengths = [len(x) for x in records_tokens(tok, records)]
    else:
        lengths = [len(x) for x in trainer.train_dataset["input_ids"]]
    step_tokens = [sum(lengths[s * bs : s * bs + bs]) for s in range(job["steps"])]
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return _summary("trl", step_tokens, times, losses, wall, cpu_times)


def records_tokens(tok, records: list[dict]) -> list[list[int]]:
    """Token ids of each prompt/completion record under the chat template (what TRL trains on)."""
    return [tok.apply_chat_template(r["prompt"] + r["completion"], tokenize=True) for r in records]


def _summary(side, step_tokens, seconds, losses, wall, cpu_seconds=None) -> dict:
    timed = slice(1, None) if len(seconds) > 1 else slice(None)  # drop the warm-up step
    tok, sec = sum(step_tokens[timed]), sum(seconds[timed])
    cpu = sum(cpu_seconds[timed]) if cpu_seconds else 0.0
    return {"side": side, "tokens_per_s": tok / sec if sec else 0.0, "timed_tokens": tok, "timed_seconds": sec,
            "tokens_per_cpu_s": tok / cpu if cpu else None, "timed_cpu_seconds": cpu,
            "step_seconds": seconds, "step_cpu_seconds": cpu_seconds, "step_tokens": step_tokens,
            "steps": len(seconds), "first_loss": losses[0] if losses else None,
            "final_loss": losses[-1] if losses else None, "losses": losses, "wall_s": wall,
            "peak_rss_gb": peak_rss_gb()}


# ----------------------------------------------------------------------------------------- driver


def child(side: str, job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    if side.startswith("honing") and job.get("malloc_mmap_threshold"):
        # the training loop's own allocator knob (honing.train.loop._heap_releaser reads it)
        os.environ["HONING_MALLOC_MMAP_THRESHOLD"] = str(job["malloc_mmap_threshold"])
    torch_threads = job.get("threads")
    if torch_threads:
        import torch

        torch.set_num_threads(torch_threads)
    if side == "honing-lean":  # the memory-first setting of the same product
        job = dict(job, honing_set=[*job.get("honing_set", []), "activation_checkpointing=layers"],
                   out_name="honing-lean-run")
        res = run_honing(job)
        res["side"] = side
    elif side == "honing":
        res = run_honing(job)  # the product's own loop, on CPU or CUDA
    else:  # trl, trl-packed, trl-packed-liger
        res = run_trl(dict(job, trl_variant=side.removeprefix("trl").lstrip("-")))
        res["side"] = side
    if job["mode"] == "gpu":
        import torch

        if job["device"] == "cuda":
            res["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 1024**3
        # MFU: model FLOPs (6 x params per token, the usual convention, although LoRA skips the frozen
        # weights' gradients) / a dense bf16 rate: the H100 SXM's 989 TFLOP/s datasheet peak (the earlier
        # H100 figures) and the H200's measured 790 TFLOP/s (an 8192^3 bf16 matmul on the lent machine).
        model_flops = res["tokens_per_s"] * 6 * job["n_params"]
        res["mfu"] = model_flops / job["peak_flops"]
        res["mfu_measured"] = model_flops / job["measured_flops"]
    Path(job["workdir"], f"{side}.json").write_text(json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps per side (first one untimed)")
    ap.add_argument("--examples", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default=None,
                    help="both sides; default fp32 on CPU (see docs/performance.md), bf16 on GPU")
    ap.add_argument("--micro-batch-size", default=None,
                    help="Honing: examples per packed forward (default 1 on CPU, auto on GPU: 16k-token rows)")
    ap.add_argument("--batch-size", type=int, default=None, help="examples per optimizer step (default 4 on CPU, 32 on GPU)")
    ap.add_argument("--method", choices=["lora", "full"], default="lora")
    ap.add_argument("--device", choices=["cuda", "cpu"], default=None,
                    help="GPU mode's device (default cuda); cpu rehearses the GPU mode's code with --shape tiny")
    ap.add_argument("--shape", choices=["llama-1b", "tiny"], default="llama-1b",
                    help="GPU mode's random-weight model: Llama-3.2-1B's shape, or a 2-layer one for a CPU rehearsal")
    ap.add_argument("--tokenizer", default="smollm2-135m-instruct",
                    help="GPU mode: the tokenizer saved with the random model (catalog name or a directory)")
    ap.add_argument("--sides", default="honing,trl",
                    help="comma-separated: honing (default settings), honing-lean (activation_checkpointing=layers), "
                         "trl (padded batches), trl-packed (packing + padding-free), trl-packed-liger (+ Liger kernels)")
    ap.add_argument("--malloc-mmap-threshold", type=int, default=0,
                    help="Honing side: glibc M_MMAP_THRESHOLD in bytes (0 = glibc default); see loop_patches.md")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads per side (0 = torch's default). On a machine shared with other jobs, "
                         "1 avoids OpenMP threads waiting on descheduled siblings; compare tokens/CPU-s then")
    ap.add_argument("--honing-set", action="append", default=[], metavar="KEY=VALUE",
                    help="Honing side: a training config override, as `hone train --set` (repeatable), e.g. "
                         "activation_checkpointing=true or lora.fused=false")
    ap.add_argument("--repeats", type=int, default=1,
                    help="rounds of all sides, alternating which goes first; ratios are the median over rounds")
    ap.add_argument("--json", default=str(HERE / "results" / "latest.json"))
    ap.add_argument("--child", nargs=2, metavar=("SIDE", "JOB"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(*a.child)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    workdir = tempfile.mkdtemp(prefix="honing-bench-")
    chats = synth_chats(a.examples, seed=0, max_tokens=a.max_length)
    train_file, eval_file = Path(workdir, "train.jsonl"), Path(workdir, "eval.jsonl")
    train_file.write_text("".join(json.dumps(c) + "\n" for c in chats))
    eval_file.write_text("".join(json.dumps(c) + "\n" for c in synth_chats(2, seed=1, max_tokens=128)))
    job = {"mode": a.mode, "model": "smollm2-135m-instruct", "train_file": str(train_file),
           "eval_file": str(eval_file), "workdir": workdir, "steps": a.steps, "max_length": a.max_length,
           "dtype": a.dtype or ("fp32" if a.mode == "cpu" else "bf16"), "lr": 2e-4, "seed": 42,
           "micro_batch_size": a.micro_batch_size or ("auto" if a.mode == "gpu" else 1),
           "batch_size": a.batch_size or (32 if a.mode == "gpu" else 4), "method": a.method, "threads": a.threads,
           "malloc_mmap_threshold": a.malloc_mmap_threshold, "honing_set": a.honing_set,
           "device": a.device or ("cuda" if a.mode == "gpu" else "cpu")}
    if a.mode == "gpu":
        job.update(gpu_model_dir(workdir, a.shape, a.tokenizer))
    job_path = Path(workdir, "job.json")
    job_path.write_text(json.dumps(job))
    sides = a.sides.split(",")
    rounds = []
    for rnd in range(a.repeats):
        # Alternate which side goes first: the machine's speed drifts over minutes (shared hosts), and a
        # ratio of two runs minutes apart carries that drift; the median over rounds mostly cancels it.
        order = sides if rnd % 2 == 0 else sides[::-1]
        results = {}
        for side in order:
            print(f"== round {rnd + 1}/{a.repeats}: {side} ...", flush=True)
            t0 = time.time()
            shutil.rmtree(Path(workdir, f"{side}-run"), ignore_errors=True)  # the previous round's run
            gemm_before = probe_gemm_gflops() if a.mode == "cpu" else None
            subprocess.run([sys.executable, __file__, "--child", side, str(job_path)], check=True)
            res = json.loads(Path(workdir, f"{side}.json").read_text())
            if gemm_before is not None:
                res["gemm_gflops_probe"] = (gemm_before + probe_gemm_gflops()) / 2
            results[side] = res
            print(f"== {side} done in {time.time() - t0:.0f}s", flush=True)
        counted = [r for r in results.values() if r.get("step_model_flops")]
        if counted and a.mode == "cpu":
            # model FLOPs are the same for all sides (same examples, same steps): a Honing side counts them
            flops = counted[0]["step_model_flops"]
            for res in results.values():
                timed = slice(1, None) if len(flops) > 1 else slice(None)
                res["model_gflops_per_s"] = sum(flops[timed]) / res["timed_seconds"] / 1e9
                res["gemm_utilization"] = res["model_gflops_per_s"] / res["gemm_gflops_probe"]
        rounds.append(results)
    report = {"job": job, "results": rounds[-1], "rounds": rounds, "host": host_info()}
    import statistics

    peers = [s_ for s_ in sides if s_.startswith("trl")]
    ours = [s_ for s_ in sides if s_.startswith("honing")] if peers else []

    def best_peer(r: dict) -> dict:
        """The fastest TRL variant of a round: the ratio is against TRL at its best."""
        return max((r[p] for p in peers), key=lambda x: x.get("tokens_per_s") or 0)

    def ratio(side, key, rs):
        vals = [r[side][key] / best_peer(r)[key] for r in rs if r[side].get(key) and best_peer(r).get(key)]
        return statistics.median(vals) if vals else None

    keys = {"tokens_per_s": "tokens_per_s", "tokens_per_cpu_s": "tokens_per_cpu_s", "peak_rss": "peak_rss_gb"}
    if ours:
        # "ratios": the default Honing side (or the only one) vs TRL, median over rounds
        report["ratios_by_side"] = {o: {k: ratio(o, v, rounds) for k, v in keys.items()} for o in ours}
        report["ratios"] = report["ratios_by_side"][ours[0]]
    for rnd, results in enumerate(rounds):
        print(f"\nround {rnd + 1}:", end="")
        print_table({"job": job, "results": results})
        for o in ours:
            q = {k: ratio(o, v, [results]) for k, v in keys.items()}
            print(f"{o}/TRL this round: tokens/s x{q['tokens_per_s']:.2f}, peak RSS x{q['peak_rss']:.2f}")
    for o in ours:
        q = report["ratios_by_side"][o]
        print(f"\nmedian over {len(rounds)} round(s), {o}/TRL: tokens/s x{q['tokens_per_s']:.2f}, "
              f"tokens/CPU-s x{q['tokens_per_cpu_s']:.2f}, peak RSS x{q['peak_rss']:.2f}")
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(a.json).with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, a.json)
    print(f"wrote {a.json}")


def host_info() -> dict:
    import platform

    import torch

    return {"cpu_count": os.cpu_count(), "torch": torch.__version__, "machine": platform.machine(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_avg_at_end": os.getloadavg()}


def print_table(report: dict) -> None:
    rows = report["results"]
    cols = ["side", "tokens/s", "tokens/CPU-s", "peak RSS GB", "first loss", "final loss", "steps"]
    if report["job"]["mode"] == "gpu":
        cols += ["peak GPU GB", "MFU of 989", "of measured"]
    else:
        cols += ["model GFLOP/s", "of GEMM peak"]
    print("\n" + " | ".join(f"{c:>12}" for c in cols))
    for r in rows.values():
        cpu = r.get("tokens_per_cpu_s")
        vals = [r["side"], f"{r['tokens_per_s']:.1f}", f"{cpu:.1f}" if cpu else "-", f"{r['peak_rss_gb']:.2f}",
                f"{r['first_loss']:.4f}",
                f"{r['final_loss']:.4f}", str(r["steps"])]
        if report["job"]["mode"] == "gpu":
            vals += [f"{r.get('peak_gpu_gb', 0):.2f}", f"{r.get('mfu', 0):.1%}", f"{r.get('mfu_measured', 0):.1%}"]
        elif r.get("model_gflops_per_s"):
            vals += [f"{r['model_gflops_per_s']:.1f}", f"{r['gemm_utilization']:.0%} of {r['gemm_gflops_probe']:.0f}"]
        print(" | ".join(f"{v:>12}" for v in vals))
    if "ratios" in report:
        q = report["ratios"]
        cpu = f", tokens/CPU-s x{q['tokens_per_cpu_s']:.2f}" if "tokens_per_cpu_s" in q else ""
        print(f"Honing/TRL: tokens/s x{q['tokens_per_s']:.2f}{cpu}, peak RSS x{q['peak_rss']:.2f}")


# ----------------------------------------------------------------------------------------- GPU mode


# Llama-3.2-1B's shape; "tiny" runs the same code on a CPU in seconds (benchmarks/gpu_check.py's rehearsal).
SHAPES = {"llama-1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                       "num_attention_heads": 32, "num_key_value_heads": 8},
          "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                   "num_attention_heads": 4, "num_key_value_heads": 2}}
H100_PEAK_FLOPS = 989e12  # H100 SXM dense bf16, datasheet
H200_MEASURED_FLOPS = 790e12  # H200, 8192^3 bf16 matmul through PyTorch on the lent machine (769-798)


def gpu_model_dir(workdir: str, shape: str = "llama-1b", tokenizer: str = "smollm2-135m-instruct") -> dict:
    """A random-weight Llama of the given shape (bf16), saved with the SmolLM2 tokenizer (its ids fit the
    vocabulary). MFU only depends on the shape, not the weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from honing.models.loading import load_tokenizer

    tok = load_tokenizer(tokenizer)
    cfg = LlamaConfig(vocab_size=max(len(tok), 49152), max_position_embeddings=4096, tie_word_embeddings=True,
                      rope_theta=500000.0, **SHAPES[shape])
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    out = Path(workdir, "llama-1b-shape")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    return {"model": str(out), "n_params": n, "peak_flops": H100_PEAK_FLOPS, "measured_flops": H200_MEASURED_FLOPS,
            "shape": shape}


if __name__ == "__main__":
    main()
