"""Grades per second of a trivial python grader in the bubblewrap sandbox,
and what a worker restart costs. Interleaved rounds of 1 and 2 workers; wall-clock grades/s and the
grading process's own CPU per grade.

    .venv/bin/python benchmarks/bench_graders.py [--samples 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

from honing.graders import Sample, SandboxLimits, load_grader

TRIVIAL = "def grade(sample, item):\n    return float(sample['output_text'] == item['answer'])\n"
CRASHING = "import os\ndef grade(sample, item):\n    os._exit(1)\n"


def _cpu() -> float:
    """This process's CPU seconds (the workers' own CPU is not visible until they are reaped)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def _rate(grader, samples) -> tuple[float, float]:
    grader.grade(samples[:10])  # workers started
    wall, cpu = time.perf_counter(), _cpu()
    results = grader.grade(samples)
    wall, cpu = time.perf_counter() - wall, _cpu() - cpu
    assert all(not r.errors for r in results)
    return len(samples) / wall, cpu / len(samples) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    samples = [Sample(str(k % 2), {"answer": "0"}) for k in range(args.samples)]
    spec = {"type": "python", "name": "trivial", "source": TRIVIAL}
    rows = []
    for rnd in range(args.rounds):
        for workers in (1, 2):
            with load_grader(spec, limits=SandboxLimits(workers=workers)) as g:
                rate, cpu_us = _rate(g, samples)
            rows.append({"round": rnd, "workers": workers, "grades_per_s": round(rate), "parent_cpu_us_per_grade": round(cpu_us, 1)})
            print(json.dumps(rows[-1]), flush=True)
    with load_grader({"type": "python", "name": "crash", "source": CRASHING}, limits=SandboxLimits(workers=1)) as g:
        start = time.perf_counter()
        results = g.grade(samples[:50])
        per = (time.perf_counter() - start) / 50
    assert all(r.reward == 0.0 for r in results)
    summary = {"restart_s_per_sample": round(per, 4), "cpus": os.cpu_count(),
               "load_avg_1m": round(os.getloadavg()[0], 2)}
    print(json.dumps(summary))
    out = Path(__file__).parent / "results" / "graders.json"
    out.write_text(json.dumps({"command": "python benchmarks/bench_graders.py", "rounds": rows, **summary}, indent=2))


if __name__ == "__main__":
    main()
