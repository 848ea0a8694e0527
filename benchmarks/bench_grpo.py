"""Honing GRPO vs TRL's GRPOTrainer + PEFT on the same job, each side in its own subprocess, interleaved.

Same model (the embedded SmolLM2-135M-Instruct, TRL loading Honing's converted safetensors), the same
prompts in the same order (RFT rows from examples/signature_json: system + user turn, the reference JSON as
the item's ``answer``), P prompts per optimizer step, G completions per prompt (TRL's num_generations),
the same max completion length, temperature 1, top_p 1, LoRA r=16 alpha 32 dropout 0 on all linear layers,
fp32, beta 0 (no reference forward), loss_type dapo, scale_rewards group, linear LR from the same peak,
gradient clipping at 1. TRL generates once per optimizer step (steps_per_generation = its accumulation), with
the KV cache, no vLLM; its micro-batch is Honing's (micro prompts x G completions).

The reward is ONE python function (GRADE_SOURCE): Honing runs it as a ``python`` grader in its bubblewrap
sandbox (what `hone train --grader` does); TRL calls it in-process as its reward function.

Reported per side (the first step, warm-up, is left out of every rate):

* step seconds (median) and step throughput: completion tokens trained / seconds of the timed steps (the
  whole step: sampling, grading, loss forward and backward, optimizer);
* sampled tokens/s: completion tokens generated / seconds spent in the sampler (Honing: TorchSampler.sample;
  TRL: GRPOTrainer._generate_single_turn, i.e. model.generate);
* the step's split: sampling, grading (Honing: the sandboxed grader's wall time; TRL: its reward call), the
  rest (loss forward + backward + optimizer);
* peak RSS of the child process (ru_maxrss); Honing's sandbox worker is a separate process, reported apart
  (grader_rss_gb) and added for the memory ratio;
* mean reward of the timed steps (the two sides sample different tokens: same distribution, not same draws).

Usage (CPU). One round took ~4 min for Honing and ~25 min for TRL on 2 cores under load average ~12;
--repeats N adds interleaved rounds (the JSON is rewritten after each):
    HF_HUB_OFFLINE=1 HONING_CACHE_DIR=.cache .venv/bin/python benchmarks/bench_grpo.py [--repeats 2]
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
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from bench import host_info, peak_rss_gb

from honing.fileio import write_text_atomic

MODEL = "smollm2-135m-instruct"
PROMPTS = ROOT / "examples" / "signature_json" / "train.jsonl"

# The reward, one source for both sides: 0.2 for a JSON object, 0.8 x the share of the five keys whose value
# equals the reference's. Partial credit keeps the groups' rewards from being all equal (no signal).
GRADE_SOURCE = '''
import json

KEYS = ("name", "required", "optional", "keyword_only", "variadic")


def grade(sample, item):
    try:
        got = json.loads(sample["output_text"])
    except (ValueError, RecursionError):
        return 0.0
    if not isinstance(got, dict):
        return 0.0
    want = json.loads(item["answer"])
    return 0.2 + 0.8 * sum(got.get(k) == want[k] for k in KEYS) / len(KEYS)
'''


def make_rows(n: int) -> list[dict]:
    """The first ``n`` rows of the prompt file as RFT rows: the prompt turns + the reference as ``answer``."""
    rows = []
    for line in PROMPTS.read_text(encoding="utf-8").splitlines()[:n]:
        messages = json.loads(line)["messages"]
        rows.append({"messages": messages[:-1], "answer": messages[-1]["content"]})
    return rows


def step_orders(job: dict) -> list[list[int]]:
    from honing.train.batching import step_indices

    return [step_indices(job["examples"], job["prompts_per_step"], job["seed"], s)[1] for s in range(job["steps"])]


def descendants() -> list[tuple[int, float, float]]:
    """(pid, peak RSS GB, CPU seconds) of every live process below this one (Honing's sandbox workers:
    bwrap and the Python inside; ru_maxrss of children would count the parent's pages at fork)."""
    parents, stats = {}, {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            hwm = next((int(x.split()[1]) for x in (d / "status").read_text().splitlines()
                        if x.startswith("VmHWM:")), 0)
        except (OSError, StopIteration, IndexError, ValueError):
            continue
        parents[int(d.name)] = int(fields[1])
        stats[int(d.name)] = (hwm / 1024**2, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
    mine, todo = [], [os.getpid()]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        mine += kids
        todo += kids
    return [(p, *stats[p]) for p in mine if p in stats]


class Timer:
    """Wall seconds spent inside wrapped calls, per optimizer step (``mark`` closes a step)."""

    def __init__(self):
        self.now, self.steps = 0.0, []

    def wrap(self, fn):
        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.now += time.perf_counter() - t0
        return timed

    def mark(self) -> None:
        self.steps.append(self.now)
        self.now = 0.0


class Marks:
    """At each step's end: the process's CPU seconds, and its descendants' summed peak RSS and CPU seconds."""

    def __init__(self):
        self.cpu, self.child_rss, self.child_cpu = [time.process_time()], 0.0, {}

    def mark(self) -> None:
        self.cpu.append(time.process_time())
        kids = descendants()
        self.child_rss = max(self.child_rss, sum(k[1] for k in kids))
        self.child_cpu.update({k[0]: k[2] for k in kids})

    def step_cpu(self) -> list[float]:
        return [b - a for a, b in zip(self.cpu, self.cpu[1:])]


# ----------------------------------------------------------------------------------------- children


def run_honing(job: dict) -> dict:
    """The real product: honing.train.train with objective grpo and a python grader (the sandbox)."""
    from honing.config import build_config
    from honing.graders.python import PythonGrader
    from honing.train import loop, train
    from honing.train.sampler import TorchSampler

    sampling, grading, marks = Timer(), Timer(), Marks()
    TorchSampler.sample = sampling.wrap(TorchSampler.sample)
    PythonGrader.grade = grading.wrap(PythonGrader.grade)

    class StepMarks(loop.MetricsLog):  # one metrics row per optimizer step closes that step's timers
        def log(self, row: dict) -> None:
            if "step_seconds" in row:
                sampling.mark()
                grading.mark()
                marks.mark()
            super().log(row)

    loop.MetricsLog = StepMarks
    out = Path(job["workdir"]) / f"honing-run-{job['round']}"
    grader = {"type": "python", "name": "signature_fields", "source": GRADE_SOURCE}
    config = build_config(values=dict(  # noqa: C408 - keyword form reads like the TRL side
        model=MODEL, data=job["train_file"], out=str(out), method="lora", objective="grpo",
        grpo={"grader": grader, "group_size": job["group_size"], "max_completion_tokens": job["max_completion"],
              "temperature": 1.0, "top_p": 1.0, "loss_type": job["loss_type"], "scale_rewards": "group", "beta": 0.0},
        lora={"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
        batch_size=job["prompts_per_step"], micro_batch_size=job["micro_batch_size"], learning_rate=job["lr"],
        lr_scheduler="linear", warmup_ratio=0.0, max_steps=job["steps"], max_length=job["max_length"],
        dtype="fp32", device="cpu", seed=job["seed"], eval_fraction=0.0, eval_every=10_000, save_every=10_000,
        tensorboard=False,
    ), overrides=job.get("honing_set", []))  # --honing-set: what `hone train --set` would do
    t0 = time.perf_counter()
    train(config, log=lambda m: print("[honing]", m, flush=True))
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "step_seconds" in r]
    trained = [0] + [r["trained_tokens"] for r in rows]  # cumulative completion tokens trained
    steps = [{"seconds": r["step_seconds"], "cpu_seconds": c, "completion_tokens": b - a, "reward": r["train_reward"]}
             for r, a, b, c in zip(rows, trained, trained[1:], marks.step_cpu())]
    micro = json.loads((out / "run.json").read_text()).get("hyperparameters", {}).get("micro_batch_size")
    res = summary("honing", steps, sampling.steps, grading.steps, wall)
    res.update(micro_batch_size=micro, grader_rss_gb=marks.child_rss, grader_cpu_s=sum(marks.child_cpu.values()))
    return res


def run_trl(job: dict) -> dict:
    """TRL GRPOTrainer + PEFT with its defaults, except what must match the Honing side."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from honing.models.catalog import resolve_model

    rows = make_rows(job["examples"])
    records = [{"prompt": rows[i]["messages"], "answer": rows[i]["answer"]} for o in step_orders(job) for i in o]
    path = str(resolve_model(MODEL).path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(path)
    g, micro = job["group_size"], job["micro_batch_size"]
    accumulation = job["prompts_per_step"] // micro
    args = GRPOConfig(
        output_dir=str(Path(job["workdir"]) / f"trl-run-{job['round']}"), per_device_train_batch_size=micro * g,
        gradient_accumulation_steps=accumulation, steps_per_generation=accumulation,  # one generation per step
        num_generations=g, max_completion_length=job["max_completion"], temperature=1.0, top_p=1.0, top_k=0,
        beta=0.0, loss_type=job["loss_type"], scale_rewards="group", num_iterations=1, shuffle_dataset=False,
        learning_rate=job["lr"], lr_scheduler_type="linear", warmup_steps=0, max_steps=job["steps"],
        max_grad_norm=1.0, bf16=False, fp16=False, use_cpu=True, seed=job["seed"], logging_steps=1,
        save_strategy="no", report_to=[], dataloader_num_workers=0, disable_tqdm=True,
        gradient_checkpointing=job["trl_gradient_checkpointing"],
    )
    namespace: dict = {}
    exec(compile(GRADE_SOURCE, "GRADE_SOURCE", "exec"), namespace)  # noqa: S102 - our own constant source
    grade = namespace["grade"]
    sampling, grading = Timer(), Timer()
    tokens: list[int] = []

    def signature_fields(completions, answer, completion_ids, **_):
        tokens.append(sum(len(c) for c in completion_ids))
        return [grade({"output_text": c[0]["content"].strip()}, {"answer": a}) for c, a in zip(completions, answer)]

    times: list[tuple[float, float]] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = (time.perf_counter(), time.process_time())

        def on_step_end(self, *a, **k):
            times.append((time.perf_counter() - self.t[0], time.process_time() - self.t[1]))
            sampling.mark()
            grading.mark()

    GRPOTrainer._generate_single_turn = sampling.wrap(GRPOTrainer._generate_single_turn)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = GRPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(records), processing_class=tok,
                          reward_funcs=[grading.wrap(signature_fields)], peft_config=lora, callbacks=[Clock()])
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    steps = [{"seconds": s, "cpu_seconds": c, "completion_tokens": n, "reward": r}
             for (s, c), n, r in zip(times, tokens, rewards)]
    return summary("trl", steps, sampling.steps, grading.steps, wall)


def summary(side: str, steps: list[dict], sampling: list[float], grading: list[float], wall: float) -> dict:
    timed = steps[1:] if len(steps) > 1 else steps
    first = len(steps) - len(timed)
    secs, cpu = sum(s["seconds"] for s in timed), sum(s["cpu_seconds"] for s in timed)
    toks = sum(s["completion_tokens"] for s in timed)
    samp, grad = sum(sampling[first:len(steps)]), sum(grading[first:len(steps)])
    return {"side": side, "steps": steps, "sampling_seconds": sampling, "grading_seconds": grading,
            "step_seconds_median": statistics.median(s["seconds"] for s in timed),
            "trained_tokens_per_s": toks / secs if secs else 0.0,
            "trained_tokens_per_cpu_s": toks / cpu if cpu else 0.0,
            "sampled_tokens_per_s": toks / samp if samp else 0.0,
            "split": {"sampling": samp / secs, "grading": grad / secs, "loss_and_update": 1 - (samp + grad) / secs},
            "mean_reward": statistics.fmean(s["reward"] for s in timed), "wall_s": wall,
            "peak_rss_gb": peak_rss_gb(), "grader_rss_gb": 0.0, "grader_cpu_s": 0.0}


def child(side: str, job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    res = run_honing(job) if side == "honing" else run_trl(job)
    Path(job["workdir"], f"{side}-{job['round']}.json").write_text(json.dumps(res))


# ----------------------------------------------------------------------------------------- parent

KEYS = ("step_seconds_median", "trained_tokens_per_s", "trained_tokens_per_cpu_s", "sampled_tokens_per_s",
        "peak_rss_gb", "mean_reward")


def run_side(side: str, job: dict, work: Path, r: int) -> dict:
    path = work / f"job-{side}-{r}.json"
    path.write_text(json.dumps(dict(job, round=r)))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run([sys.executable, __file__, "--child", side, str(path)], env=env, check=False,
                          capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{side} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    res = json.loads((work / f"{side}-{r}.json").read_text())
    print(side, r, json.dumps({k: round(res[k], 3) for k in KEYS}), json.dumps(res["split"]), flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3, help="optimizer steps per side (the first is untimed)")
    ap.add_argument("--examples", type=int, default=32, help="prompts (the first rows of signature_json)")
    ap.add_argument("--prompts-per-step", type=int, default=2)
    ap.add_argument("--group-size", type=int, default=4, help="completions per prompt (num_generations)")
    ap.add_argument("--max-completion", type=int, default=32)
    ap.add_argument("--micro-batch-size", default="auto",
                    help="prompts per forward; auto: Honing's choice, then given to TRL as micro x G completions")
    ap.add_argument("--loss-type", default="dapo", choices=("dapo", "grpo"))
    ap.add_argument("--trl-gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True,
                    help="TRL's GRPOConfig default is on (Honing's activation_checkpointing default is off)")
    ap.add_argument("--honing-set", action="append", default=[], metavar="KEY=VALUE",
                    help="a Honing setting on top of the matched ones, e.g. activation_checkpointing=layers")
    ap.add_argument("--repeats", type=int, default=1, help="interleaved rounds (honing, trl, honing, trl, ...)")
    ap.add_argument("--json", default=str(HERE / "results" / "bench_grpo_latest.json"))
    ap.add_argument("--child", nargs=2, metavar=("SIDE", "JOB"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(*a.child)
        return
    work = Path(tempfile.mkdtemp(prefix="bench-grpo-"))
    (work / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in make_rows(a.examples)))
    job = {"workdir": str(work), "train_file": str(work / "train.jsonl"), "examples": a.examples,
           "prompts_per_step": a.prompts_per_step, "group_size": a.group_size, "max_completion": a.max_completion,
           "micro_batch_size": a.micro_batch_size if a.micro_batch_size == "auto" else int(a.micro_batch_size),
           "loss_type": a.loss_type, "steps": a.steps, "max_length": 512, "lr": 1e-5, "seed": 0,
           "trl_gradient_checkpointing": a.trl_gradient_checkpointing, "honing_set": a.honing_set}
    results: dict[str, list[dict]] = {"honing": [], "trl": []}
    t0 = time.time()
    for r in range(a.repeats):
        results["honing"].append(run_side("honing", job, work, r))
        if job["micro_batch_size"] == "auto":  # TRL gets the micro-batch Honing chose
            job["micro_batch_size"] = results["honing"][-1]["micro_batch_size"]
        results["trl"].append(run_side("trl", job, work, r))
        report = build_report(job, results, time.time() - t0)  # after every round: a long run keeps what it has
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(Path(a.json), json.dumps(report, indent=1))
    print_table(report)


def build_report(job: dict, results: dict, wall: float) -> dict:
    med = {s: {k: statistics.median(x[k] for x in rs) for k in KEYS} for s, rs in results.items()}
    for s, rs in results.items():
        med[s]["grader_rss_gb"] = statistics.median(x["grader_rss_gb"] for x in rs)
        med[s]["split"] = {k: statistics.median(x["split"][k] for x in rs) for k in rs[0]["split"]}
    # Per round, Honing against the TRL run next to it: the machine's load moves between rounds.
    speed = [h["trained_tokens_per_s"] / t["trained_tokens_per_s"] for h, t in zip(results["honing"], results["trl"])]
    memory = [(h["peak_rss_gb"] + h["grader_rss_gb"]) / t["peak_rss_gb"]
              for h, t in zip(results["honing"], results["trl"])]
    return {"job": job, "host": host_info(), "bench_wall_s": wall, "rounds": results, "median": med,
            "speed_ratio_per_round": speed, "memory_ratio_per_round": memory,
            "speed_ratio": statistics.median(speed), "memory_ratio": statistics.median(memory),
            "targets": {"speed_ratio": ">= 2", "memory_ratio": "<= 0.5"}}


def print_table(report: dict) -> None:
    med = report["median"]
    print("| side | step s (median) | trained tok/s | sampled tok/s | sampling / grading / loss+update | "
          "peak RSS GB | mean reward |\n| --- | --- | --- | --- | --- | --- | --- |")
    for s, m in med.items():
        split = " / ".join(f"{m['split'][k]:.0%}" for k in ("sampling", "grading", "loss_and_update"))
        rss = f"{m['peak_rss_gb']:.2f}" + (f" + {m['grader_rss_gb']:.2f} grader" if m["grader_rss_gb"] else "")
        print(f"| {s} | {m['step_seconds_median']:.2f} | {m['trained_tokens_per_s']:.1f} | "
              f"{m['sampled_tokens_per_s']:.1f} | {split} | {rss} | {m['mean_reward']:.3f} |")
    print(f"Honing / TRL: x{report['speed_ratio']:.2f} step throughput (rounds: "
          f"{', '.join(f'{x:.2f}' for x in report['speed_ratio_per_round'])}), x{report['memory_ratio']:.2f} peak "
          f"RSS; load average at the end {report['host']['load_avg_at_end']}")


if __name__ == "__main__":
    main()
