"""A week of production traffic against a served model, and the retraining loop that answers it.

    python examples/maintenance/week_of_traffic.py [--out runs/maintenance-week] [--port 8765]

What it does, with a real `hone serve` (SQLite, no auth, localhost) and the embedded model:

1. **Production.** A supervised job trains the maintenance walkthrough's recipe (LoRA on the demo task: name
   the standard-library module a docstring comes from, ten labels) on ``data/v2.jsonl``, with a validation
   file of 24 held-out docstrings of the ten modules and 12 docstrings of ``math``, a module the client
   application has started to send (its system prompt now lists eleven modules).
2. **A retraining policy** on the production model: check once the week's requests are in, retrain on drift
   or 10 corrected answers, the gate against production and the cheaper baselines (zero-shot, few-shot).
3. **A week of traffic**: 12 requests a day, held-out docstrings of the ten modules (never in training or
   validation) and a growing share of ``math`` docstrings (0% on day 1 to 50% from day 5), each stored
   (``store: true``). A simulated rater compares every answer with the reference: a right one gets a thumbs
   up, a wrong one a correction (the reference).
4. The loop runs by itself: drift of the week's requests against the training data, the decision, the
   training file (production's data + the corrections), the retrain job, its evaluation against production
   and the baselines, the gate, and the promotion or the refusal. The script prints every step as the
   production model's page shows it, then the gate's checks with their numbers.

Everything it prints is also written to ``OUT/week.json``. The data are chosen with a fixed seed from the
demo's files and the docstrings of this Python's ``math`` module (PSF licence).
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import random
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEMO = HERE.parent / "docstring_module"
SEED = 22
TEN = "asyncio, decimal, email, http, importlib, logging, os, tkinter, unittest, xml"
ELEVEN = "asyncio, decimal, email, http, importlib, logging, math, os, tkinter, unittest, xml"
SYSTEM = ("You are given the docstring of a function, method or class from the Python standard library. Reply "
          "with only the name of the module it comes from, one of: {}.")
PER_DAY = 12
SHIFTED_SHARE = [0.0, 0.1, 0.2, 0.35, 0.5, 0.5, 0.5]  # day 1 .. day 7
VALID_KNOWN, VALID_MATH = 24, 12
# The walkthrough's recipe (recipe.yaml), as a job's training keys; sized for a shared CPU.
TRAINING = {"lora": {"r": 16, "alpha": 32, "top_layers": 8}, "learning_rate": 1e-3, "micro_batch_size": 8,
            "warmup_ratio": 0.0, "packing": False, "eval_max_examples": 24, "early_stopping_patience": None}
GATE = {"margin": 0.0, "baselines": ["zero-shot", "few-shot"], "production_tolerance": 0.02, "forgetting": True}


# -- data ------------------------------------------------------------------------------------------
def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _chat(system: str, question: str, answer: str | None = None) -> dict:
    msgs = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    return {"messages": msgs + ([{"role": "assistant", "content": answer}] if answer is not None else [])}


def math_docstrings() -> list[str]:
    """The first line of each public function's docstring in ``math`` (one per distinct text)."""
    seen: dict[str, None] = {}
    for name, f in sorted(vars(math).items()):
        if callable(f) and not name.startswith("_"):
            line = (inspect.getdoc(f) or "").splitlines()[0].strip() if inspect.getdoc(f) else ""
            if line:
                seen.setdefault(line)
    return list(seen)


def build(out: Path) -> dict:
    """training file, validation file, and the week's requests with their references."""
    rng = random.Random(SEED)
    evaluation = _rows(HERE / "data" / "eval.jsonl")
    used = {r["messages"][1]["content"] for r in evaluation} | {
        r["messages"][1]["content"] for r in _rows(HERE / "data" / "v2.jsonl")}
    known = [(r["messages"][1]["content"], r["messages"][2]["content"]) for r in _rows(DEMO / "eval.jsonl")
             if r["messages"][1]["content"] not in used]
    shifted = math_docstrings()
    rng.shuffle(known)
    rng.shuffle(shifted)
    valid = [_chat(SYSTEM.format(TEN), r["messages"][1]["content"], r["messages"][2]["content"])
             for r in rng.sample(evaluation, VALID_KNOWN)]
    valid += [_chat(SYSTEM.format(ELEVEN), q, "math") for q in shifted[:VALID_MATH]]
    shifted = shifted[VALID_MATH:]
    days = []
    for share in SHIFTED_SHARE:
        n_shift = round(PER_DAY * share)
        day = [{"system": SYSTEM.format(ELEVEN), "question": shifted.pop(), "reference": "math", "shifted": True}
               for _ in range(n_shift)]
        day += [{"system": SYSTEM.format(TEN), "question": q, "reference": a, "shifted": False}
                for q, a in (known.pop() for _ in range(PER_DAY - n_shift))]
        rng.shuffle(day)
        days.append(day)
    out.mkdir(parents=True, exist_ok=True)
    (out / "valid.jsonl").write_text("".join(json.dumps(r) + "\n" for r in valid))
    return {"train": HERE / "data" / "v2.jsonl", "valid": out / "valid.jsonl", "days": days}


# -- the server ------------------------------------------------------------------------------------
class Api:
    def __init__(self, base: str):
        self.base = base

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        req = urllib.request.Request(self.base + path, method=method, headers={"Content-Type": "application/json"},
                                     data=None if body is None else json.dumps(body).encode())
        try:
            with urllib.request.urlopen(req, timeout=600) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise SystemExit(f"{method} {path}: {e.code} {e.read().decode()[:2000]}") from None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: Path, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-c", "from honing.cli import main; main()", "serve", "--no-auth", "--port", str(port),
           "--data-dir", str(data_dir), "--eval-baselines", "zero-shot,few-shot", "--engine", "transformers"]
    log = open(data_dir.parent / "server.log", "ab")  # noqa: SIM115 (the server's lifetime)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"hone serve exited ({proc.returncode}); see {data_dir.parent / 'server.log'}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("hone serve did not answer /health in 180 s")


def wait(what, every: float = 5.0, timeout: float = 4 * 3600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = what()
        if found:
            return found
        time.sleep(every)
    raise SystemExit(f"timed out: {what.__doc__}")


def say(text: str, log: list) -> None:
    print(text, flush=True)
    log.append(text)


# -- the week --------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/maintenance-week", help="Working directory (the server's data dir).")
    ap.add_argument("--port", type=int, default=0, help="Port (default: a free one).")
    ap.add_argument("--steps", type=int, default=10, help="Optimizer steps of the production job.")
    ap.add_argument("--retrain-steps", type=int, default=16, help="Optimizer steps of the retrain.")
    args = ap.parse_args(argv)
    from openai import OpenAI

    out = Path(args.out).resolve()
    data = build(out)
    port = args.port or free_port()
    server = start_server(out / "data", port)
    log: list[str] = []
    summary: dict = {"days": []}
    t0 = time.time()
    try:
        c = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=600)
        api = Api(f"http://127.0.0.1:{port}/v1")
        train = c.files.create(file=("v2.jsonl", data["train"].read_bytes()), purpose="fine-tune")
        valid = c.files.create(file=("valid.jsonl", data["valid"].read_bytes()), purpose="fine-tune")
        job = c.fine_tuning.jobs.create(model="smollm2-135m-instruct", training_file=train.id,
                                        validation_file=valid.id, suffix="docstrings", seed=42,
                                        hyperparameters={"n_epochs": 1, "batch_size": 8},
                                        extra_body={"honing_config": {**TRAINING, "max_steps": args.steps}})
        say(f"production job {job.id}: training {args.steps} steps on v2.jsonl (180 examples)", log)
        prod = wait(lambda: (j := c.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed") and j)
        if prod.status != "succeeded":
            raise SystemExit(f"the production job failed: {prod.error}")
        model = prod.fine_tuned_model
        say(f"production model: {model} ({time.time() - t0:.0f} s)", log)
        total = PER_DAY * len(SHIFTED_SHARE)
        policy = api.call("POST", "/fine_tuning/retraining_policies", {
            "model": model, "every_n_completions": total, "min_feedback": 10, "gate": GATE,
            "honing_config": {"max_steps": args.retrain_steps}})
        say(f"retraining policy {policy['id']}: checks after {total} stored completions, retrains on drift or 10 "
            f"corrections, gate {json.dumps(GATE)}", log)
        for d, day in enumerate(data["days"], 1):
            right = {True: 0, False: 0}
            count = {True: 0, False: 0}
            for req in day:
                r = c.chat.completions.create(model=model, temperature=0, max_tokens=8, store=True,
                                              metadata={"day": str(d), "shifted": str(req["shifted"]).lower()},
                                              messages=[{"role": "system", "content": req["system"]},
                                                        {"role": "user", "content": req["question"]}])
                answer = (r.choices[0].message.content or "").strip().strip(".").split()
                ok = bool(answer) and answer[0].lower() == req["reference"]
                count[req["shifted"]] += 1
                right[req["shifted"]] += ok
                feedback = {"rating": "up"} if ok else {"rating": "down", "correction": req["reference"]}
                api.call("POST", f"/chat/completions/{r.id}/feedback", feedback)
            row = {"day": d, "requests": len(day), "math": count[True], "right_known": right[False],
                   "known": count[False], "right_math": right[True]}
            summary["days"].append(row)
            say(f"day {d}: {len(day)} requests ({count[True]} math): right {right[False]}/{count[False]} known, "
                f"{right[True]}/{count[True]} math; {len(day) - right[False] - right[True]} corrected", log)
        say(f"the week's traffic is in ({time.time() - t0:.0f} s); the policy's check runs now", log)

        def ended():
            """the policy's retrain job ended"""
            p = api.call("GET", f"/fine_tuning/retraining_policies/{policy['id']}")
            return p["cycles"] >= 1 and p["current_job"] is None and p
        final = wait(ended)
        events = list(reversed(api.call("GET", f"/fine_tuning/jobs/{job.id}/events?limit=500")["data"]))
        say("\nthe production model's page (its job's events):", log)
        for e in events:
            if (e.get("data") or {}).get("policy") == policy["id"]:
                say(f"  [{e['level']}] {e['message']}", log)
        retrain_id = (final.get("last_cycle") or {}).get("job")
        if retrain_id:
            gate = [e for e in api.call("GET", f"/fine_tuning/jobs/{retrain_id}/events?limit=500")["data"]
                    if e["message"].startswith("Release gate")]
            if gate:
                say(f"\nretrain job {retrain_id}: {gate[0]['message']}", log)
                for ch in gate[0]["data"].get("checks", []):
                    say(f"  [{'ok' if ch['passed'] else 'FAIL'}] {ch['name']}: {ch['detail']}", log)
                summary["gate"] = gate[0]["data"]
        say(f"\npolicy: production model {final['model']}; last check: {json.dumps(final['last_cycle'])}", log)
        say(f"wall time {time.time() - t0:.0f} s", log)
        summary.update(policy=final, log=log, production_job=job.id, retrain_job=retrain_id)
        (out / "week.json").write_text(json.dumps(summary, indent=2) + "\n")
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
