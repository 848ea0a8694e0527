"""Where `hone train`'s time to first step goes (docs/performance.md, "Time to first step").

Runs `hone train ARGS...` in this process with timers around the setup's parts; the imports of torch,
transformers, PEFT and Honing are timed first, as one block each (in a plain run they happen inside the
first part that needs them, and the environment `hone train` sets first is set first here too). Prints one
"TTFS wall cpu part" line per part to stderr (seconds; CPU = this process's user + system time, which
depends less on other jobs than wall time does), the total from the process's start (/proc) to the end of
the first optimizer step, and the time from the last optimizer step to the process's exit. The eval before
training is listed where it runs (after the first step for a new LoRA adapter, honing.train.loop).

    python benchmarks/time_to_first_step.py --model smollm2-135m-instruct --data train80.jsonl \
        --set max_steps=1 --set eval_every=100 --set threads=1 --no-eval --out /tmp/ttfs

TTFS_FORCE_STORE=1 keeps the token-budget probe's result in the machine cache even on a busy machine
(honing.machine.quiet_enough), to measure the warm-cache path where the machine is never quiet.
PYTHONPATH=<other checkout>/src measures another version of Honing with the same harness.
"""
import functools
import os
import sys
import time


def process_start() -> float:
    """Unix time this process started: /proc/uptime less the process's age (10 ms resolution)."""
    with open("/proc/self/stat") as f:
        start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    return time.time() - (uptime - start_ticks / os.sysconf("SC_CLK_TCK"))


T0 = process_start()
times = []


def mark(name, t, cpu=None):
    times.append((name, t, cpu))


def cpu_seconds() -> float:
    """This process's CPU seconds so far, all threads (less load-dependent than wall on a shared machine)."""
    r = os.times()
    return r.user + r.system


mark("python start (to harness)", time.time() - T0, cpu_seconds())


def timed_import(label, do_import):
    t, c = time.time(), cpu_seconds()
    do_import()
    mark(label, time.time() - t, cpu_seconds() - c)


# The environment `hone train` sets before its imports (what they load depends on it).
try:  # (honing.startup imports nothing heavy)
    from honing.startup import prepare_imports
except ImportError:  # an older Honing (PYTHONPATH=<other checkout>/src)
    from honing.startup import skip_compiler_imports as prepare_imports

prepare_imports("qlora" if "qlora" in " ".join(sys.argv) else "lora")
timed_import("import torch", lambda: __import__("torch"))
timed_import("import transformers (+llama)", lambda: __import__("transformers.models.llama.modeling_llama"))
timed_import("import peft", lambda: __import__("peft"))
timed_import("import honing", lambda: [__import__(m) for m in ("honing.cli", "honing.train.loop")])


last_step: list[float] = []  # (time, CPU seconds) at the end of the latest optimizer step


def wrap(mod, name, label=None, once=False):
    f = getattr(mod, name)
    done = []
    @functools.wraps(f)
    def w(*a, **k):
        if once and done:
            try:
                return f(*a, **k)
            finally:
                last_step[:] = [time.time(), cpu_seconds()]
        s, c = time.time(), cpu_seconds()
        try:
            return f(*a, **k)
        finally:
            done.append(1)
            mark(label or name, time.time() - s, cpu_seconds() - c)
            if name == "_optimizer_step":
                mark("== TIME TO FIRST STEP (process start -> first optimizer step done)", time.time() - T0,
                     cpu_seconds())
                last_step[:] = [time.time(), cpu_seconds()]
    setattr(mod, name, w)

import honing.models.loading as L
import honing.precision as P
import honing.threads as TH
import honing.train.auto as A
import honing.train.chain as CH
import honing.train.loop as LP
import honing.train.replay as R

wrap(P, "bf16_is_fast", "dtype probe (bf16_is_fast)")
wrap(LP, "create_runtime", "create_runtime (incl. dtype probe)")
wrap(TH, "training_threads", "thread probe")
wrap(L, "load_tokenizer", "tokenizer load")
wrap(L, "load_model", "model load (incl. tokenizer)")
wrap(CH, "load_starting_model", "load_starting_model")
wrap(LP, "_load_datasets", "datasets: read + render")
wrap(A, "measure_cpu_token_budget", "token-budget probe")
wrap(LP, "_prepare_trainable", "LoRA / trainable setup")
wrap(LP, "_optimizer_and_schedule", "optimizer")
wrap(R, "build_replay", "replay set")
wrap(LP, "_setup", "_setup total")
wrap(LP, "_evaluate_base", "eval before training")
wrap(LP, "_optimizer_step", "first optimizer step", once=True)
import atexit


@atexit.register
def report():
    if last_step:
        mark("== last optimizer step done -> exit (final eval, saves, summary)", time.time() - last_step[0],
             cpu_seconds() - last_step[1])
    print("TTFS    wall     cpu  part (seconds)", file=sys.stderr)
    for n, v, c in times:
        cpu = f"{c:7.2f}" if c is not None else "       "
        print(f"TTFS {v:7.2f} {cpu}  {n}", file=sys.stderr)
if os.environ.get("TTFS_FORCE_STORE"):
    import honing.machine
    honing.machine.quiet_enough = lambda: True
import honing

print("TTFS honing from", honing.__file__, file=sys.stderr)
sys.argv = ["hone", "train", *sys.argv[1:]]
from honing.cli import main

main()
