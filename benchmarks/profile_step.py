"""Where a training step's time goes: Honing's own loop (``honing.train.loop``) under torch.profiler.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/profile_step.py [--case short|demo|both] [--steps 8]
        [--warmup 3] [--out benchmarks/results/profile_step.json]
        [--undo compare [--compare replay-fold] [--rounds 2]]   # as shipped vs fixes undone, interleaved

Cases (both on the embedded SmolLM2-135M-Instruct, ``dtype: auto``):

* ``short``: 4 short chats per step (~50 tokens each, the Unicode-category task with a one-line system
  prompt), every other setting ``auto`` (LoRA r 16 on every linear layer, replay as ``auto`` picks it);
* ``demo``: the demo recipe's step (examples/recipes/docstring_module_lora.yaml: 8 x ~89 tokens, LoRA on the
  top 8 layers, one replay example per step).

Each case trains ``warmup`` steps unprofiled, then ``steps`` steps under the profiler, and reports for those:
the wall and process CPU time per step; its split by phase (the task's forward and backward, the replay
example's forward+backward where it runs alone (folded into a task forward, it is part of that forward and
backward), clipping + optimizer, the rest of the loop); and by operator (matmuls, attention,
element-wise and other ops, and the time no operator ran: Python, dispatch, the loop's bookkeeping). The
matmul FLOPs the profiler counts, divided by the wall time, give the step's achieved rate, set against this
machine's bf16 matmul rate at the step's own MLP shape (measured in the same process, best of 10).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::_addmm_activation", "aten::baddbmm")
ATTENTION_MARK = "scaled_dot_product"
PHASES = ("forward", "backward", "replay", "optimizer")


def short_chats(path: Path, n: int = 400) -> None:
    """The Unicode-category task with a one-line system prompt: ~50-token chats (the issue's short case)."""
    rows = [json.loads(x) for x in (REPO / "examples/unicode_category/train.jsonl").read_text().splitlines()][:n]
    with path.open("w") as f:
        for r in rows:
            user, answer = r["messages"][1], r["messages"][2]
            f.write(json.dumps({"messages": [{"role": "system", "content": "Name the Unicode general category."},
                                             user, answer]}) + "\n")


def case_config(case: str, work: Path) -> dict:
    from honing.config import load_recipe

    if case == "demo":
        raw = load_recipe(REPO / "examples/recipes/docstring_module_lora.yaml")
        raw.update(data=str(REPO / "examples/docstring_module/train.jsonl"))
    else:
        data = work / "short.jsonl"
        short_chats(data)
        raw = {"model": "smollm2-135m-instruct", "data": str(data), "method": "lora", "batch_size": 4,
               "epochs": "auto", "learning_rate": "auto", "dtype": "auto", "seed": 42}
    raw.update(out=str(work / f"run-{case}"), eval_data=None, eval_fraction=0.0, max_steps=10_000)
    if THREADS:
        raw["threads"] = THREADS  # one thread: no OpenMP barrier spinning when other jobs share the cores
    return raw


THREADS: int | None = None  # --threads: torch threads for every case (default: the case's auto)


class StepProfiler:
    """Wraps the loop's step, replay, update and every backward in named ranges; profiles steps
    [warmup, warmup + steps) and stops the run after them."""

    def __init__(self, warmup: int, steps: int, shapes: bool = False):
        self.shapes = shapes
        self.warmup, self.steps, self.n, self.walls, self.prof, self.tokens = warmup, steps, 0, [], None, []
        self.cpus = []  # process CPU seconds per profiled step (both threads): steadier than wall under load

    def install(self):
        import torch
        from torch.profiler import record_function

        from honing.train import loop

        step, replay, update, backward = (loop._optimizer_step, loop._replay_backward, loop._clip_and_update,
                                          torch.Tensor.backward)
        me = self

        def ranged(name, fn):
            def inner(*a, **k):
                with record_function(name):
                    return fn(*a, **k)
            return inner

        def profiled_step(run):
            if me.n == me.warmup:
                me.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], with_flops=True,
                                                  record_shapes=me.shapes)
                me.prof.start()
            if not getattr(run.objective, "_profiled", False):  # the forward, once per objective
                run.objective.loss = ranged("forward", run.objective.loss)
                run.objective._profiled = True
            t, c = time.perf_counter(), time.process_time()
            row = step(run)
            if me.prof is not None:
                me.walls.append(time.perf_counter() - t)
                me.cpus.append(time.process_time() - c)
                me.tokens.append(row["input_tokens_per_s"] * row["step_seconds"])
            me.n += 1
            if me.n == me.warmup + me.steps:
                me.prof.stop()
                run.state.step = run.hp.total_steps  # ends the loop; the run is not the point here
            return row

        loop._optimizer_step = profiled_step
        loop._replay_backward = ranged("replay", replay)
        loop._clip_and_update = ranged("optimizer", update)
        torch.Tensor.backward = ranged("backward", backward)


def split(prof, walls: list[float]) -> dict:
    """Phase and operator shares of the profiled steps' wall time, and the matmul FLOPs."""
    events = prof.key_averages()
    wall_us = sum(walls) * 1e6
    phase_us = {p: 0.0 for p in PHASES}
    ops = {"matmul": 0.0, "attention": 0.0, "other ops": 0.0}
    flops, by_op = 0, {}
    for e in events:
        if e.key in PHASES:
            phase_us[e.key] += e.cpu_time_total
            continue
        if e.key.startswith("ProfilerStep") or not e.key.startswith(("aten::", "mkldnn::", "honing")):
            continue
        kind = "matmul" if e.key in MATMUL_OPS else "attention" if ATTENTION_MARK in e.key else "other ops"
        ops[kind] += e.self_cpu_time_total
        by_op[e.key] = by_op.get(e.key, 0.0) + e.self_cpu_time_total
        flops += e.flops or 0
    # The replay range holds its own forward and backward ranges: count them once, under replay.
    nested = {k: 0.0 for k in ("forward", "backward")}
    for e in prof.events():
        if e.name in nested and any(p.name == "replay" for p in _ancestors(e)):
            nested[e.name] += e.cpu_time_total
    for k, v in nested.items():
        phase_us[k] -= v
    phase_us["rest of the loop"] = wall_us - sum(phase_us.values())
    ops["no operator (Python, dispatch, bookkeeping)"] = wall_us - sum(ops.values())
    share = lambda d: {k: round(v / wall_us, 3) for k, v in d.items()}
    top = dict(sorted(by_op.items(), key=lambda kv: -kv[1])[:12])
    return {"phase_share": share(phase_us), "op_share": share(ops), "top_ops_share": share(top),
            "matmul_gflop": flops / 1e9,
            "achieved_matmul_gflops": flops / 1e9 / max(sum(walls), 1e-9)}


def _ancestors(e):
    p = e.cpu_parent
    while p is not None:
        yield p
        p = p.cpu_parent


def bf16_matmul_gflops(rows: int) -> float:
    """This machine's bf16 rate for the model's MLP matmul ([rows, 576] @ [576, 1536]), best of 10."""
    import torch

    sys.path.insert(0, str(REPO / "benchmarks" / "quality"))
    from step_flops import matmul_gflops

    return matmul_gflops(rows, 576, 1536, torch.bfloat16, reps=10)


def by_shape(prof, op: str, top: int = 10) -> list:
    """The costliest input shapes of one operator (``--shapes``): where its time comes from."""
    rows = [e for e in prof.key_averages(group_by_input_shape=True) if e.key == op]
    rows.sort(key=lambda e: -e.self_cpu_time_total)
    return [{"shapes": str(e.input_shapes), "calls": e.count, "self_ms": round(e.self_cpu_time_total / 1e3, 1)}
            for e in rows[:top]]


LEVERS = ("head-bmm", "fp32-lora-math", "replay-fold", "packed-by-example")


def apply_levers(levers: list[str]) -> None:
    """Undo one of this issue's fixes, to measure before and after in one invocation:
    ``head-bmm``: the head's 3-D input as before (torch's matmul copies the head weight for a one-row slice);
    ``fp32-lora-math``: fp32 adapter math on a bf16 base (every projection's output converted and back);
    ``replay-fold``: the replay items in a forward of their own again (not as extra rows of a task forward);
    ``packed-by-example``: a packed row's attention over the whole row under its block-diagonal mask again."""
    from honing.models import fast_ops, loading
    from honing.train import fused_lora, loop

    unknown = sorted(set(levers) - set(LEVERS))
    if unknown:
        raise SystemExit(f"--undo: unknown fix {', '.join(unknown)} (known: {', '.join(LEVERS)})")
    if "head-bmm" in levers:
        loading.flat_head_input = lambda model: None
    if "fp32-lora-math" in levers:
        fused_lora.LORA_MATH_IN_BASE_DTYPE = False
    if "replay-fold" in levers:
        loop.FOLD_REPLAY = False
    if "packed-by-example" in levers:
        fast_ops.PACKED_BY_EXAMPLE = False


def profile_case(case: str, warmup: int, steps: int, shapes: bool = False, levers: tuple = ()) -> dict:
    from honing.config import TrainConfig
    from honing.train.loop import train

    apply_levers(list(levers))
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(**case_config(case, Path(tmp)))
        prof = StepProfiler(warmup, steps, shapes)
        prof.install()
        t0 = time.perf_counter()
        train(cfg, log=lambda m: None)
        total = time.perf_counter() - t0
    tokens_per_step = sum(prof.tokens) / len(prof.tokens)
    result = {"case": case, "undone": list(levers), "step_seconds": [round(w, 4) for w in prof.walls],
              "median_step_seconds": sorted(prof.walls)[len(prof.walls) // 2],
              "step_cpu_seconds": [round(c, 4) for c in prof.cpus],
              "median_step_cpu_seconds": sorted(prof.cpus)[len(prof.cpus) // 2],
              "input_tokens_per_step": round(tokens_per_step, 1), "run_seconds": round(total, 1),
              **split(prof.prof, prof.walls)}
    if shapes:
        result["by_shape"] = {op: by_shape(prof.prof, op) for op in ("aten::copy_", "aten::mm", "aten::addmm_")}
    rate = bf16_matmul_gflops(int(tokens_per_step))
    result["bf16_matmul_gflops_at_step_shape"] = round(rate, 1)
    result["share_of_bf16_matmul_rate"] = round(result["achieved_matmul_gflops"] / rate, 3)
    return result


def paired_steps(case: str, warmup: int, pairs: int, lever: str = "replay-fold") -> dict:
    """Unprofiled: each of ``pairs`` optimizer steps run twice back to back on the same data (the step index
    rewound), once as shipped and once with ``lever`` undone, in alternating order, in one process: the
    load's drift falls on both alike. Wall and process CPU seconds per step, and their ratios (undone / shipped)."""
    from honing.config import TrainConfig
    from honing.models import fast_ops
    from honing.train import loop

    flags = {"replay-fold": (loop, "FOLD_REPLAY"), "packed-by-example": (fast_ops, "PACKED_BY_EXAMPLE")}
    if lever not in flags:
        raise SystemExit(f"--paired: lever {lever} has no switch here (known: {', '.join(flags)})")
    module, flag = flags[lever]
    with tempfile.TemporaryDirectory() as tmp:
        run = loop._setup(TrainConfig(**case_config(case, Path(tmp))), resume=False, progress=False,
                          log=lambda m: None)
        run.model.train()
        for _ in range(warmup):
            loop._optimizer_step(run)
        rows = []
        for i in range(pairs):
            step, times = run.state.step, {}
            for shipped in ((True, False) if i % 2 == 0 else (False, True)):
                setattr(module, flag, shipped)
                run.state.step = step
                t, c = time.perf_counter(), time.process_time()
                loop._optimizer_step(run)
                times["shipped" if shipped else "undone"] = (time.perf_counter() - t, time.process_time() - c)
            rows.append({"step": step, "load": round(os.getloadavg()[0], 2),
                         **{f"{k}_wall_cpu": [round(x, 3) for x in v] for k, v in times.items()},
                         "wall_ratio": round(times["undone"][0] / times["shipped"][0], 3),
                         "cpu_ratio": round(times["undone"][1] / times["shipped"][1], 3)})
        run.runtime.close()
    med = lambda xs: sorted(xs)[len(xs) // 2]
    return {"case": case, "lever": lever, "threads": THREADS or "auto", "pairs": rows,
            "median_wall_ratio": med([r["wall_ratio"] for r in rows]),
            "median_cpu_ratio": med([r["cpu_ratio"] for r in rows]),
            "median_shipped_wall_cpu": [med([r["shipped_wall_cpu"][k] for r in rows]) for k in (0, 1)],
            "median_undone_wall_cpu": [med([r["undone_wall_cpu"][k] for r in rows]) for k in (0, 1)]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", choices=("short", "demo", "both"), default="both")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", default=None, help="Write the results here as JSON.")
    ap.add_argument("--shapes", action="store_true", help="Also the costliest input shapes of copy_, mm, addmm_.")
    ap.add_argument("--undo", default="", help=f"Comma-separated fixes to undo ({', '.join(LEVERS)}); "
                    "'compare' runs each case as it is and with the --compare fixes undone, interleaved, one process "
                    "each.")
    ap.add_argument("--compare", default="head-bmm,fp32-lora-math",
                    help="The fixes --undo compare undoes (default: the first round's two).")
    ap.add_argument("--rounds", type=int, default=1,
                    help="--undo compare: alternate the two variants this many times per case (load drifts).")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for every case (default: auto).")
    ap.add_argument("--paired", type=int, default=0, metavar="PAIRS",
                    help="Instead: unprofiled, PAIRS steps each run as shipped and with --compare's one fix undone "
                    "(replay-fold), back to back on the same data, in one process per case.")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    global THREADS
    THREADS = args.threads
    if args.paired:
        cases = ("short", "demo") if args.case == "both" else (args.case,)
        out = {"cpu": _cpu_model(), "results": [paired_steps(c, args.warmup, args.paired, args.compare) for c in cases],
               "load_average": os.getloadavg()}
        print(json.dumps(out, indent=1))
        if args.out:
            Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
        return 0
    cases = ("short", "demo") if args.case == "both" else (args.case,)
    compared = tuple(filter(None, args.compare.split(",")))
    variants = [(), compared] if args.undo == "compare" else [tuple(filter(None, args.undo.split(",")))]
    rounds = args.rounds if args.undo == "compare" else 1
    runs = [(c, v) for c in cases for _ in range(rounds) for v in variants]
    results = []
    for case, undo in runs:
        # one process per run: the patched loop and one run's caches stay out of the next
        r = (_in_subprocess(case, args.warmup, args.steps, undo) if len(runs) > 1 else
             profile_case(case, args.warmup, args.steps, args.shapes, undo))
        results.append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "by_shape"}, indent=1))
    out = {"load_average": os.getloadavg(), "cpu": _cpu_model(), "results": results}
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


def _in_subprocess(case: str, warmup: int, steps: int, undo: tuple) -> dict:
    import subprocess

    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        load = os.getloadavg()[0]
        subprocess.run([sys.executable, __file__, "--case", case, "--warmup", str(warmup), "--steps", str(steps),
                        "--undo", ",".join(undo), "--out", f.name, *(["--threads", str(THREADS)] if THREADS else [])],
                       check=True, stdout=subprocess.DEVNULL)
        return {**json.loads(Path(f.name).read_text())["results"][0], "load_average_before": round(load, 2)}


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())
