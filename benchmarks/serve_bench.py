"""`hone serve` under load: many chat requests at once over one base model with several LoRA adapters,
against the same requests served one at a time by plain transformers + PEFT; and /health while a
training job runs.

    1. start `hone serve --no-auth` on a free port (a fresh data dir);
    2. fine-tune K small LoRA adapters of the base through the API (the official `openai` client, a few
       steps each, different seeds) while a thread polls GET /health and GET /v1/fine_tuning/jobs: their
       latency while training runs in the same server;
    3. one warm-up request per model (loads each adapter; timed apart as "cold"), then N requests sent
       at once (round-robin over the base and the K adapters, different prompts, greedy, max_tokens M),
       /health still polled; per request: latency from the common start to its answer;
    4. the same N requests through plain transformers + PEFT in this process, one at a time (the base
       with the K adapters loaded; set_adapter / disable_adapter per request); latency counted from the
       same kind of common start, so both sides answer "N requests arrive together: when is each done?";
    4b. the same N requests through the server one at a time (what batching gains vs what HTTP costs);
    5. both sides decode greedily from the same weights: their answers are compared (a check that the
       comparison is fair, not a speed number).

tokens/s = completion tokens of all N requests / wall seconds from the common start to the last answer.

The chat engine is a side (``--engines llama.cpp,transformers``): steps 3 (and 4b with ``--sequential``)
run once per engine, each in a fresh server on the same data dir; ``--requests 16,64`` gives a load round
per count, and ``--sampled`` a sampled round after each greedy one (temperature 1, a seed per request).
Every round has prompts of its own (the next rows of the eval set), so no round finds its prompts in the
cache a round before left. With llama.cpp among the engines, the ceiling: the same requests one at a time
through llama-cpp-python's ``Llama`` called directly on the same base GGUF and LoRA GGUFs the engine
converted (one ``Llama`` per model; it keeps its last prompt's cache, as the engine keeps prompts' prefixes).
``--repeats R`` runs the sides R times in turn (llama.cpp, transformers, direct, llama.cpp, ...): ratios
per repeat, from runs minutes apart rather than one side early and one late on a machine whose load
changes. ``--train-while-serving`` (llama.cpp side): a fine-tuning job runs in the same server while a
greedy round is served, /health polled throughout. ``--seeded-adapters`` skips step 2: K random LoRA
adapters (all linear layers, rank 16, seeded), registered as succeeded jobs in the fresh database, cost
the same to serve as trained ones and take seconds instead of minutes. ``--plain-peft`` adds step 4.

Usage (~5-10 min on a shared 2-core CPU):
    HF_HUB_OFFLINE=1 HONING_CACHE_DIR=.cache .venv/bin/python benchmarks/serve_bench.py \\
        --adapters 3 --requests 16 --max-tokens 32 --steps 4
    # the engines side by side, with the llama.cpp ceiling (a few minutes):
    HF_HUB_OFFLINE=1 HONING_CACHE_DIR=.cache .venv/bin/python benchmarks/serve_bench.py --seeded-adapters \\
        --engines llama.cpp,transformers --requests 16,64 --max-tokens 16 --sampled --repeats 2 \
        --train-while-serving --out benchmarks/results/serve_engines.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
EXAMPLE = REPO / "examples" / "docstring_module"


# ---------------------------------------------------------------------------------------------- server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: Path, engine_args: tuple = ()) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    log = open(data_dir / "server.log", "ab")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen([sys.executable, "-c", "from honing.cli import main; main()", "serve", "--no-auth",
                             "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir),
                             *engine_args],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError((data_dir / "server.log").read_text())
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise TimeoutError("hone serve did not answer /health")


class Prober(threading.Thread):
    """GET these paths in turn every `interval` seconds; keeps each one's latencies and failures."""

    def __init__(self, url: str, paths: list[str], interval: float = 0.25, timeout: float = 10.0):
        super().__init__(daemon=True)
        self.url, self.paths, self.interval, self.timeout = url, paths, interval, timeout
        self.latency: dict[str, list[float]] = {p: [] for p in paths}
        self.failures: dict[str, int] = {p: 0 for p in paths}
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            for p in self.paths:
                t = time.perf_counter()
                try:
                    with urllib.request.urlopen(self.url + p, timeout=self.timeout) as r:
                        r.read()
                    self.latency[p].append(time.perf_counter() - t)
                except OSError:
                    self.failures[p] += 1
            self.stop.wait(self.interval)

    def summary(self) -> dict:
        return {p: {**stats_ms(v), "failures": self.failures[p]} for p, v in self.latency.items()}


def _probe_loop(url, paths, interval, timeout, stop, out) -> None:
    prober = Prober(url, paths, interval, timeout)
    prober.stop = stop
    prober.run()
    out.put((prober.latency, prober.failures))


class ProberProcess:
    """A Prober in a process of its own: its latencies are the server's, not those of this process's GIL
    (busy with the load's own HTTP client). Same start / stop.set / join / summary as Prober."""

    def __init__(self, url: str, paths: list[str], interval: float = 0.25, timeout: float = 10.0):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.stop, self._out = ctx.Event(), ctx.Queue()
        self._proc = ctx.Process(target=_probe_loop, args=(url, paths, interval, timeout, self.stop, self._out),
                                 daemon=True)
        self.latency: dict[str, list[float]] = {p: [] for p in paths}
        self.failures: dict[str, int] = {p: 0 for p in paths}

    def start(self) -> None:
        self._proc.start()

    def join(self) -> None:
        self.latency, self.failures = self._out.get(timeout=120)
        self._proc.join(30)

    summary = Prober.summary


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def stats_ms(xs: list[float]) -> dict:
    if not xs:
        return {"n": 0}
    return {"n": len(xs), "p50_ms": round(1000 * pct(xs, 0.5), 1), "p95_ms": round(1000 * pct(xs, 0.95), 1),
            "max_ms": round(1000 * max(xs), 1)}


def latency_summary(latencies: list[float], tokens: int, wall: float) -> dict:
    return {"p50_s": round(pct(latencies, 0.5), 3), "p95_s": round(pct(latencies, 0.95), 3),
            "mean_s": round(statistics.mean(latencies), 3), "max_s": round(max(latencies), 3),
            "wall_s": round(wall, 3), "completion_tokens": tokens, "tokens_per_s": round(tokens / wall, 2)}


# ---------------------------------------------------------------------------------------------- data
def chats(path: Path, n: int, offset: int = 0) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows[offset: offset + n]


def prompt_messages(row: dict) -> list[dict]:
    """The conversation up to (not including) the last assistant turn."""
    msgs = row["messages"]
    last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    return msgs[:last]


# ---------------------------------------------------------------------------------------------- phases
def build_adapters(client, base: str, k: int, steps: int, train_file: Path) -> list[dict]:
    """K fine-tuning jobs through the API; returns the finished job objects (their fine_tuned_model)."""
    with train_file.open("rb") as f:
        file_id = client.files.create(file=f, purpose="fine-tune").id
    jobs = []
    for i in range(k):
        job = client.fine_tuning.jobs.create(
            model=base, training_file=file_id, seed=1000 + i, suffix=f"bench{i}",
            # A large learning rate so that each adapter really moves the model in a few steps.
            hyperparameters={"n_epochs": 1, "batch_size": 2, "learning_rate_multiplier": 10},
            # No held-out eval and one checkpoint: the adapters are load-test material, not results.
            extra_body={"honing_config": {"max_steps": steps, "eval_fraction": 0, "save_every": steps}})
        jobs.append(job.id)
    done = []
    for jid in jobs:
        while True:
            job = client.fine_tuning.jobs.retrieve(jid)
            if job.status in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(1)
        if job.status != "succeeded":
            raise RuntimeError(f"{jid} {job.status}: {job.error}")
        done.append({"id": jid, "model": job.fine_tuned_model, "seconds": job.finished_at - job.created_at})
    return done


def _seeded_job(base: str, i: int) -> dict:
    jid = f"ftjob-seeded{i}"
    return {"id": jid, "model": f"ft:{base}:default:bench{i}:{jid}"}


def seeded_adapters(data: Path, base: str, k: int) -> list[dict]:
    """K random LoRA adapters (all linear layers, r=16, alpha=32: Honing's defaults; seeded) saved as runs'
    final/ directories and registered as succeeded jobs of project "default" in a fresh database."""
    import warnings

    import torch

    from honing.models.loading import load_model
    from honing.serve.db import Job, make_engine, now, sessions, upgrade
    from honing.serve.settings import Settings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from peft import LoraConfig, get_peft_model
    settings = Settings(data_dir=data)
    upgrade(settings.db_url)
    engine = make_engine(settings.db_url)
    jobs = []
    for i in range(k):
        model, _, _ = load_model(base)
        torch.manual_seed(1000 + i)
        peft = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, init_lora_weights=False,
                                                target_modules="all-linear"))
        with torch.no_grad():
            for name, p in peft.named_parameters():
                if "lora_B" in name:
                    p.mul_(0.05)  # answers change, yet stay text (not a random walk over the vocabulary)
        jobs.append(_seeded_job(base, i))
        jid = jobs[-1]["id"]
        run = data / "runs" / jid
        peft.save_pretrained(run / "final")
        with sessions(engine).begin() as s:
            s.add(Job(id=jid, project="default", model=base, training_file="file-none", status="succeeded",
                      method={"type": "supervised", "supervised": {"hyperparameters": {
                          "n_epochs": 1, "batch_size": 1, "learning_rate_multiplier": 1.0}}}, config={}, suffix=f"bench{i}", seed=i,
                      fine_tuned_model=jobs[-1]["model"], model_deleted=False, result_files=[], run_dir=str(run),
                      created_at=now(), finished_at=now(), attempts=1))
    engine.dispose()
    return jobs


def llama_direct(gguf: Path, loras: dict[str, Path | None], requests: list[dict], max_tokens: int,
                 threads: int, sampled: bool = False, warm: list[dict] = ()) -> tuple[list[dict], float]:
    """The ceiling: the requests one at a time through llama-cpp-python's Llama on the same GGUF files the
    engine serves (one Llama per model: a LoRA is fixed when a Llama is made), the same token ids; greedy,
    or sampled as the server samples (temperature 1, nothing else cut, a seed per request). ``warm``: one
    request per model first, not timed (as the server side got)."""
    import llama_cpp

    from honing.data.conversation import Message
    from honing.data.render import render_prompt
    from honing.evaluate.generation import stop_token_ids
    from honing.models.loading import load_tokenizer

    tok = load_tokenizer(requests[0]["base"])
    stops = set(stop_token_ids(tok))
    llms = {m: llama_cpp.Llama(model_path=str(gguf), lora_path=str(p) if p else None, n_ctx=2048,
                               n_threads=threads, n_threads_batch=threads, verbose=False)
            for m, p in loras.items()}

    def one(req) -> tuple[int, str]:
        ids = render_prompt(tok, [Message(m["role"], m["content"]) for m in req["messages"]])
        out, llm = [], llms[req["model"]]
        how = {"temp": 0.0, "top_k": 1}
        if sampled:
            llm.set_seed(req["seed"])
            how = {"temp": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "typical_p": 1.0}
        for t in llm.generate(ids, repeat_penalty=1.0, reset=True, **how):
            out.append(t)
            if t in stops or len(out) == max_tokens:
                break
        return len(out), tok.decode([t for t in out if t not in stops], skip_special_tokens=True)

    for r in warm:
        one(r)
    results, t0 = [], time.perf_counter()
    for r in requests:
        tokens, text = one(r)
        results.append({"latency": time.perf_counter() - t0, "tokens": tokens, "text": text})
    wall = time.perf_counter() - t0
    for llm in llms.values():
        llm.close()
    return results, wall


async def served(url: str, requests: list[dict], max_tokens: int, sampled: bool = False
                 ) -> tuple[list[dict], float]:
    """All requests sent at once through the official async client; per request: latency, tokens, text."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url + "/v1", api_key="none", timeout=3600, max_retries=0)

    async def one(req, t0):
        how = {"temperature": 1.0, "seed": req["seed"]} if sampled else {"temperature": 0}
        r = await client.chat.completions.create(model=req["model"], messages=req["messages"],
                                                 max_tokens=max_tokens, **how)
        return {"latency": time.perf_counter() - t0, "tokens": r.usage.completion_tokens,
                "text": r.choices[0].message.content}

    t0 = time.perf_counter()
    out = await asyncio.gather(*(one(r, t0) for r in requests))
    wall = time.perf_counter() - t0
    await client.close()
    return list(out), wall


def server_sequential(client, requests: list[dict], max_tokens: int) -> tuple[list[dict], float]:
    out = []
    t0 = time.perf_counter()
    for req in requests:
        r = client.chat.completions.create(model=req["model"], messages=req["messages"], max_tokens=max_tokens,
                                           temperature=0)
        out.append({"latency": time.perf_counter() - t0, "tokens": r.usage.completion_tokens,
                    "text": r.choices[0].message.content})
    return out, time.perf_counter() - t0


def plain_peft(base_path: Path, adapters: dict[str, Path], requests: list[dict], max_tokens: int):
    """The same requests, one at a time, through transformers + PEFT (base + all adapters in memory)."""
    from honing.quiet import quiet_libraries

    quiet_libraries()  # before PEFT's import: its kernel notice, deprecation warnings and loading bars
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t_load = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(base_path)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    names = {}
    for i, (mid, path) in enumerate(adapters.items()):
        name = f"a{i}"
        if i == 0:
            model = PeftModel.from_pretrained(model, str(path), adapter_name=name)
        else:
            model.load_adapter(str(path), adapter_name=name)
        names[mid] = name
    model.eval()
    load_s = time.perf_counter() - t_load
    stop = [t for t in {tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")} if t is not None]

    def generate(req):
        ids = tok.apply_chat_template(req["messages"], add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True)["input_ids"]
        ctx = model.disable_adapter() if req["model"] not in names else _nullcontext()
        if req["model"] in names:
            model.set_adapter(names[req["model"]])
        with torch.no_grad(), ctx:
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                 do_sample=False, eos_token_id=stop, pad_token_id=stop[0])
        row = out[0, ids.shape[1]:].tolist()
        end = next((i for i, x in enumerate(row) if x in stop), None)
        return (end + 1 if end is not None else len(row)), tok.decode(row[:end] if end is not None else row,
                                                                       skip_special_tokens=True)

    for r in {r["model"]: r for r in requests}.values():  # warm-up, as the server side got
        generate(r)
    results = []
    t0 = time.perf_counter()
    for r in requests:
        s = time.perf_counter()
        tokens, text = generate(r)
        results.append({"latency": time.perf_counter() - t0, "service": time.perf_counter() - s,
                        "tokens": tokens, "text": text})
    return results, time.perf_counter() - t0, load_s


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def machine() -> dict:
    import torch

    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),  # the server inherits it
            "python": platform.python_version(), "load_average_start": os.getloadavg()}


# ---------------------------------------------------------------------------------------------- main
def _args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="smollm2-135m-instruct")
    ap.add_argument("--adapters", type=int, default=3, help="LoRA adapters fine-tuned through the API")
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps per adapter")
    ap.add_argument("--requests", default="16", help="chat requests sent at once; a comma list gives a round "
                    "per count (16,64)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--engines", default="transformers", help="comma-separated `hone serve --engine` values, "
                    "each a side (llama.cpp adds the llama.cpp-direct ceiling)")
    ap.add_argument("--engine-threads", type=int, default=None, help="llama.cpp threads (server and direct)")
    ap.add_argument("--sampled", action="store_true", help="a sampled round after each greedy one (temperature 1, "
                    "seeded)")
    ap.add_argument("--repeats", type=int, default=1, help="run the sides this many times in turn")
    ap.add_argument("--train-while-serving", action="store_true", help="llama.cpp side: a greedy round while a "
                    "fine-tuning job trains in the same server, /health polled")
    ap.add_argument("--sequential", action="store_true", help="also the requests one at a time through each server")
    ap.add_argument("--plain-peft", action="store_true", help="also plain transformers + PEFT, one at a time")
    ap.add_argument("--seeded-adapters", action="store_true", help="random seeded adapters registered as jobs "
                    "instead of fine-tuning them through the API (skips step 2)")
    ap.add_argument("--out", default=str(HERE / "results" / "serve.json"))
    ap.add_argument("--note", default="", help="recorded with the results (e.g. what else ran on the machine)")
    ap.add_argument("--reuse", default=None, metavar="DATA_DIR",
                    help="serve this earlier run's data dir and its succeeded jobs' adapters (skips step 2)")
    args = ap.parse_args(argv)
    args.counts = [int(x) for x in str(args.requests).split(",") if x.strip()]
    return args


def _train_or_reuse(args, client, url, data: Path, result: dict) -> list[dict]:
    if args.seeded_adapters:
        result["training"] = {"seeded": str(data), "jobs": args.seeded}
        return args.seeded
    if args.reuse:
        jobs = [{"id": j.id, "model": j.fine_tuned_model} for j in client.fine_tuning.jobs.list(limit=100)
                if j.status == "succeeded" and (j.user_provided_suffix or "").startswith("bench")]
        jobs = sorted(jobs, key=lambda j: j["model"])[: args.adapters]
        result["training"] = {"reused": str(data), "jobs": jobs}
        return jobs
    # 2. adapters, with /health and a database-backed list polled while the jobs train
    train = data.parent / "train.jsonl"
    # The 48 shortest training chats: short steps, so the adapters cost little of the run.
    shortest = sorted(chats(EXAMPLE / "train.jsonl", 10_000), key=lambda r: len(json.dumps(r)))[:48]
    train.write_text("".join(json.dumps(r) + "\n" for r in shortest))
    probe = Prober(url, ["/health", "/v1/fine_tuning/jobs?limit=5"])
    probe.start()
    t = time.perf_counter()
    jobs = build_adapters(client, args.base, args.adapters, args.steps, train)
    probe.stop.set()
    probe.join()
    result["training"] = {"jobs": jobs, "seconds": round(time.perf_counter() - t, 1),
                          "probes_while_training": probe.summary()}
    return jobs


def _load_round(url: str, requests: list[dict], max_tokens: int, sampled: bool) -> tuple[dict, list[dict]]:
    probe = ProberProcess(url, ["/health"])
    probe.start()
    out, wall = asyncio.run(served(url, requests, max_tokens, sampled))
    probe.stop.set()
    probe.join()
    return {**latency_summary([o["latency"] for o in out], sum(o["tokens"] for o in out), wall),
            "health_during_load": probe.summary()["/health"]}, out


def _rounds(args, models: list[str]) -> list[tuple[str, bool, list[dict]]]:
    """(round name, sampled, requests) for every load round; each round's prompts are rows of the eval set
    no other round uses, round-robin over the models."""
    rows = chats(EXAMPLE / "eval.jsonl", 10_000)
    out, offset = [], 1  # row 0: the first-use request per model
    for n in args.counts:
        for sampled in (False, True) if args.sampled else (False,):
            if offset + n > len(rows):
                raise SystemExit(f"the eval set has {len(rows)} rows: not enough for these rounds")
            reqs = [{"model": models[i % len(models)], "messages": prompt_messages(r), "seed": i, "base": args.base}
                    for i, r in enumerate(rows[offset: offset + n])]
            out.append((f"{'sampled' if sampled else 'greedy'}_{n}", sampled, reqs))
            offset += n
    return out


def _train_while_serving(args, client, url: str, data: Path, models: list[str]) -> dict:
    """A fine-tuning job in the same server while a greedy round of the first count is served; /health
    polled from before the job starts until it is cancelled."""
    train = data.parent / "train.jsonl"
    shortest = sorted(chats(EXAMPLE / "train.jsonl", 10_000), key=lambda r: len(json.dumps(r)))[:48]
    train.write_text("".join(json.dumps(r) + "\n" for r in shortest))
    with train.open("rb") as f:
        file_id = client.files.create(file=f, purpose="fine-tune").id
    probe = ProberProcess(url, ["/health"], interval=0.1)
    probe.start()
    job = client.fine_tuning.jobs.create(model=args.base, training_file=file_id, seed=7, suffix="load",
                                         hyperparameters={"n_epochs": 1, "batch_size": 2},
                                         extra_body={"honing_config": {"max_steps": 200, "eval_fraction": 0}})
    deadline = time.time() + 600
    while client.fine_tuning.jobs.retrieve(job.id).status != "running" and time.time() < deadline:
        time.sleep(0.5)
    time.sleep(5)  # past the job's start: its model is loaded and it steps
    rows = chats(EXAMPLE / "eval.jsonl", 10_000)[-args.counts[0]:]  # rows the load rounds do not use
    reqs = [{"model": models[i % len(models)], "messages": prompt_messages(r), "seed": i} for i, r in enumerate(rows)]
    out, wall = asyncio.run(served(url, reqs, args.max_tokens))
    status = client.fine_tuning.jobs.retrieve(job.id).status
    client.fine_tuning.jobs.cancel(job.id)
    probe.stop.set()
    probe.join()
    return {"job_status_after_round": status,
            "round": latency_summary([o["latency"] for o in out], sum(o["tokens"] for o in out), wall),
            "health": probe.summary()["/health"], "load_average": os.getloadavg()}


def _engine_side(args, engine: str, data: Path, result: dict, first: bool, side: dict
                 ) -> tuple[dict, list[dict], list[dict]]:
    """One server with this engine, every load round: (round name -> answers, rounds, the first-use requests)."""
    from openai import OpenAI

    extra = ["--engine", engine] + (["--engine-threads", str(args.engine_threads)] if args.engine_threads else [])
    proc, url = start_server(data, tuple(extra))
    answers = {}
    try:
        client = OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)
        jobs = _train_or_reuse(args, client, url, data, result) if first else result["training"]["jobs"]
        if first:
            print("adapters:", json.dumps(result["training"], indent=1), flush=True)
        models = [args.base] + [j["model"] for j in jobs]
        side["served_by"] = {m.id: m.engine for m in client.models.list().data if m.id in models}
        rounds = _rounds(args, models)
        warm = [{"model": m, "messages": prompt_messages(chats(EXAMPLE / "eval.jsonl", 1)[0]), "seed": 0,
                 "base": args.base} for m in models]
        cold = {}
        for w in warm:  # first use converts / loads the base and the adapter: timed apart from the load
            t = time.perf_counter()
            client.chat.completions.create(model=w["model"], messages=w["messages"], max_tokens=4, temperature=0)
            cold[w["model"]] = round(time.perf_counter() - t, 2)
        side["first_request_per_model_s"] = cold
        side["load_average_start"] = os.getloadavg()
        for name, sampled, requests in rounds:
            side[name], answers[name] = _load_round(url, requests, args.max_tokens, sampled)
            print(f"{engine}, {name}:", json.dumps(side[name]), f"load {os.getloadavg()[0]:.1f}", flush=True)
        side["load_average_end"] = os.getloadavg()
        if args.sequential:  # what batching gains vs what serving over HTTP costs
            requests = rounds[0][2]
            seq, seq_wall = server_sequential(client, requests, args.max_tokens)
            side["one_at_a_time"] = latency_summary([o["latency"] for o in seq], sum(o["tokens"] for o in seq),
                                                    seq_wall)
        if args.train_while_serving and engine == "llama.cpp":
            side["while_training"] = _train_while_serving(args, client, url, data, models)
            print(f"{engine} while a job trains:", json.dumps(side["while_training"]), flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return answers, rounds, warm


def _direct_side(args, data: Path, jobs: list[dict], rounds, warm) -> tuple[dict, dict]:
    """llama.cpp called directly, every load round, on the files the engine converted."""
    from honing.models.catalog import cache_root
    from honing.serve.engines.gguf_cache import base_gguf
    from honing.serve.engines.llamacpp import default_threads

    gguf = base_gguf(cache_root() / "serve-gguf", args.base, "f16")  # the server's file (already converted)
    loras = {args.base: None, **{j["model"]: data / "engine-cache" / "lora" / f"{j['id']}.gguf" for j in jobs}}
    side, answers = {"load_average_start": os.getloadavg()}, {}
    for name, sampled, requests in rounds:
        out, wall = llama_direct(gguf, loras, requests, args.max_tokens, args.engine_threads or default_threads(),
                                 sampled=sampled, warm=warm)
        side[name] = latency_summary([r["latency"] for r in out], sum(r["tokens"] for r in out), wall)
        answers[name] = out
        print(f"llama.cpp direct, {name}:", json.dumps(side[name]), f"load {os.getloadavg()[0]:.1f}", flush=True)
    side["load_average_end"] = os.getloadavg()
    return side, answers


def _ratios(rep: dict, rounds) -> dict:
    """Per round: hone serve llama.cpp vs llama.cpp direct and vs hone serve transformers."""
    out = {}
    for name, _, _ in rounds:
        r = {}
        fast = rep.get("llama.cpp", {}).get(name)
        slow = rep.get("transformers", {}).get(name)
        direct = rep.get("llama.cpp direct", {}).get(name)
        if fast and slow:
            r["llama.cpp_vs_transformers"] = {"tokens_per_s": round(fast["tokens_per_s"] / slow["tokens_per_s"], 2),
                                              "p95_latency": round(fast["p95_s"] / slow["p95_s"], 3)}
        if fast and direct:
            r["llama.cpp_served_vs_direct"] = round(fast["tokens_per_s"] / direct["tokens_per_s"], 2)
        out[name] = r
    return out


def main(argv=None) -> None:
    args = _args(argv)
    from honing.models.catalog import resolve_model

    result = {"command": "HF_HUB_OFFLINE=1 HONING_CACHE_DIR=.cache .venv/bin/python benchmarks/serve_bench.py "
                         + shlex.join(argv if argv is not None else sys.argv[1:]),
              "config": dict(vars(args)), "machine": machine(), "note": args.note}
    if args.reuse:
        data = Path(args.reuse).resolve()
        if args.seeded_adapters:  # the jobs an earlier --seeded-adapters run registered there
            args.seeded = [_seeded_job(args.base, i) for i in range(args.adapters)]
    else:
        data = Path(tempfile.mkdtemp(prefix="serve-bench-")) / "data"
        data.mkdir()
        if args.seeded_adapters:
            args.seeded = seeded_adapters(data, args.base, args.adapters)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    result["repeats"] = []
    for i in range(args.repeats):
        rep, answers = {}, {}
        for j, engine in enumerate(engines):
            rep[engine] = {}
            answers[engine], rounds, warm = _engine_side(args, engine, data, result, i == 0 and j == 0, rep[engine])
        jobs = result["training"]["jobs"]
        if "llama.cpp" in engines:  # the ceiling, on the files the engine converted
            rep["llama.cpp direct"], answers["llama.cpp direct"] = _direct_side(args, data, jobs, rounds, warm)
        rep["ratios"] = _ratios(rep, rounds)
        # the fairness check: the sides decode greedily from the same weights
        names = list(answers)
        rep["same_greedy_answers"] = {
            f"{name} {a} vs {b}": f"{sum(x['text'] == y['text'] for x, y in zip(answers[a][name], answers[b][name], strict=True))}/{len(reqs)}"
            for name, sampled, reqs in rounds if not sampled for k, a in enumerate(names) for b in names[k + 1:]}
        result["repeats"].append(rep)
        print(json.dumps({"repeat": i, "ratios": rep["ratios"], "same_greedy_answers": rep["same_greedy_answers"]}),
              flush=True)
        if args.plain_peft and i == 0:  # 4. plain transformers + PEFT, one at a time (no server: the CPU is its own)
            requests = rounds[0][2]
            adapter_dirs = {j["model"]: data / "runs" / j["id"] / "final" for j in jobs}
            ref, ref_wall, load_s = plain_peft(Path(resolve_model(args.base).path), adapter_dirs, requests,
                                               args.max_tokens)
            result["plain_peft_sequential"] = {
                **latency_summary([r["latency"] for r in ref], sum(r["tokens"] for r in ref), ref_wall),
                "service_p50_s": round(pct([r["service"] for r in ref], 0.5), 3), "load_s": round(load_s, 2)}
    result["machine"]["load_average_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print("->", args.out)


if __name__ == "__main__":
    main()
