"""The runtime (device, heap policy, RNG) and the loop's contracts with the service: events.jsonl and
pausing at a checkpoint, which must resume to exactly the uninterrupted result."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import build_tiny_model_dir, write_arithmetic_chat

from honing.errors import ConfigError
from honing.rundir import RunDir
from honing.train import build_config, train
from honing.train.runtime import HeapTrimmer, capture_rng, resolve_device, restore_rng


def test_device_auto_is_cpu_without_cuda_and_cuda_request_says_why():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert resolve_device("auto").type == "cpu"
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ConfigError, match="device: cuda was requested but"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="expected auto, cpu or cuda"):
        resolve_device("tpu")


def test_heap_trimmer_trims_on_growth_only():
    """Trim once, then only when RSS grew past growth + slack: short steps that reuse the same memory
    stop paying page faults (the control: every growth does trim)."""
    rss = iter([1000, 900, 905, 910, 1200, 1000, 1010, 2000, 1500])
    trimmer = HeapTrimmer(growth=0.10, slack_mb=64, rss=lambda: next(rss))
    if trimmer._trim is None:
        pytest.skip("not glibc")
    calls = []
    trimmer._trim = lambda: calls.append(1)
    decisions = [trimmer.after_step() for _ in range(5)]
    # step 1: first trim (1000 -> 900); steps 2-3 within 900*1.1+64; step 4 (1200) trims -> 1000; 5 (1010) not
    assert decisions == [True, False, False, True, False]
    assert trimmer.trims == 2 and trimmer.baseline_mb == 1000


def test_rng_capture_restore_roundtrip():
    import random

    import numpy as np

    state = capture_rng()
    a = (torch.rand(3), random.random(), np.random.rand())
    restore_rng(state)
    b = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


def test_machine_probes_leave_the_seeded_rng_alone():
    """The dtype, thread and 4-bit probes run after the user's seed; drawing from the global RNG there
    changed LoRA's initialisation (and every loss after it) depending on whether a probe ran."""
    from honing.precision import bf16_race
    from honing.threads import fastest_thread_count

    torch.manual_seed(0)
    before = torch.get_rng_state()
    bf16_race()  # the measurement itself (bf16_is_fast may answer from the machine's cache)
    fastest_thread_count(reps=1, rows=8)
    try:
        from honing.train.qlora import check_supported

        check_supported("cpu")
    except Exception:  # noqa: BLE001, S110 - no 4-bit here: the other probes still count
        pass
    assert torch.equal(torch.get_rng_state(), before)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("runtime")
    build_tiny_model_dir(d / "tiny")
    write_arithmetic_chat(d / "train.jsonl", 24)
    return d


def _cfg(d, out, **kw):
    values = {"model": str(d / "tiny"), "data": str(d / "train.jsonl"), "out": str(d / out), "batch_size": 4,
              "max_steps": 6, "learning_rate": 5e-3, "dtype": "fp32", "tensorboard": False, "seed": 3,
              "eval_every": 3, "device": "cpu"}
    values.update(kw)
    return build_config(values=values)


def test_pause_then_resume_equals_uninterrupted(data_dir, monkeypatch):
    from honing.train import loop

    whole = train(_cfg(data_dir, "whole", threads=1), log=lambda _m: None)
    assert RunDir(whole.run_dir).record()["threads"] == 1

    real_step = loop._optimizer_step

    def step_then_pause(run):
        row = real_step(run)
        if row["step"] == 2:
            RunDir(run.run_dir).request_pause()  # what the service's worker does
        return row

    monkeypatch.setattr(loop, "_optimizer_step", step_then_pause)
    paused = train(_cfg(data_dir, "paused", threads=1), log=lambda _m: None)
    assert paused.status == "paused" and paused.steps == 2
    rd = RunDir(paused.run_dir)
    assert rd.record()["status"] == "paused" and [c.step for c in rd.checkpoints()][-1] == 2
    assert not rd.final_dir.exists()
    monkeypatch.setattr(loop, "_optimizer_step", real_step)

    # The resume asks for 2 threads but keeps the recorded 1 (thread count can change summation order);
    # the process gets its own thread count back when a run ends.
    before = torch.get_num_threads()
    lines: list[str] = []
    resumed = train(_cfg(data_dir, "paused", threads=2), resume=True, log=lines.append)
    assert resumed.status == "completed" and resumed.steps == 6
    assert any(m.startswith("CPU threads: 1 (as recorded") for m in lines) and torch.get_num_threads() == before
    a = load_file(str(whole.final_dir / "adapter_model.safetensors"))
    b = load_file(str(resumed.final_dir / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name  # bitwise on CPU

    # events.jsonl: seq strictly increasing across the pause, metrics for every step with total_steps,
    # messages for the pause and the end.
    events = rd.events()
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    metric_steps = [e["data"]["step"] for e in events if e["type"] == "metrics"]
    assert set(metric_steps) == set(range(7)) and all(
        e["data"]["total_steps"] == 6 for e in events if e["type"] == "metrics")
    messages = [e["message"] for e in events if e["type"] == "message"]
    assert any(m.startswith("paused at step 2") for m in messages)
    assert any("resuming from" in m for m in messages) and messages[-1] == "run completed"
    assert rd.events(after_seq=seqs[-2]) == events[-1:]
    # the metrics rows carry all-token throughput and examples/s besides the trained-token rate
    row = json.loads(rd.metrics_path.read_text().splitlines()[-1])
    assert row["input_tokens_per_s"] > row["tokens_per_s"] > 0 and row["examples_per_s"] > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on a GPU machine)")
def test_cuda_training_matches_cpu_losses(data_dir):
    """The same run on the GPU: same data order, losses within fp32 tolerance of the CPU run."""
    cpu = train(_cfg(data_dir, "cpu-ref", eval_every=6), log=lambda _m: None)
    gpu = train(_cfg(data_dir, "gpu", device="cuda", eval_every=6), log=lambda _m: None)
    assert RunDir(gpu.run_dir).record()["device"].startswith("cuda")
    assert gpu.train_losses == pytest.approx(cpu.train_losses, rel=1e-3)
    assert [r.get("lines") for r in RunDir(gpu.run_dir).metrics()] == [r.get("lines") for r in RunDir(cpu.run_dir).metrics()]


def test_training_threads_auto_keeps_the_default_unless_one_thread_is_clearly_faster(monkeypatch):
    from honing import threads

    default = torch.get_num_threads()
    monkeypatch.setattr(threads, "fastest_thread_count", lambda rows=64, reps=15: default)
    assert threads.training_threads("auto")[0] == default
    monkeypatch.setattr(threads, "fastest_thread_count", lambda rows=64, reps=15: 1)
    n, why = threads.training_threads("auto")
    assert (n == 1 and "faster" in why) if default > 1 else n == 1
    assert threads.training_threads(3) == (3, "set in the config")
    assert threads.training_threads("auto", recorded=2)[0] == 2


def test_the_thread_race_stops_once_every_sample_agrees(monkeypatch):
    """An idle machine's race (more threads win every round) is decided after CLEAR_AFTER rounds, not 15;
    an overlapping one runs to the end and is decided by the medians."""
    import time

    import torch.nn.functional as F

    from honing import threads
    from honing.threads import CLEAR_AFTER, _clear_cut, fastest_thread_count, torch_threads

    assert _clear_cut([2.0, 2.1], [1.0, 1.1], 2) == 2
    assert _clear_cut([0.5, 0.6], [1.0, 1.1], 2) == 1
    assert _clear_cut([0.9, 1.2], [1.0, 1.1], 2) is None  # overlapping: no early answer
    assert _clear_cut([0.85, 0.86], [1.0, 1.1], 2) is None  # faster, but not by 20% everywhere

    calls = []

    def fake_linear(x, w, seconds):
        one = torch.get_num_threads() == 1
        calls.append(one)
        time.sleep(seconds[one][calls.count(one) % 2])  # each setting alternates between its two times

    def race(seconds) -> tuple[int, int]:
        calls.clear()
        monkeypatch.setattr(F, "linear", lambda x, w: fake_linear(x, w, seconds))
        with torch_threads(2):
            return fastest_thread_count(reps=15, rows=8), len(calls)

    clear = {True: (0.004, 0.004), False: (0.001, 0.001)}  # 1 thread always 4x slower
    assert race(clear) == (2, 2 + 2 * CLEAR_AFTER)
    mixed = {True: (0.0009, 0.004), False: (0.001, 0.001)}  # 1 thread alternately a little faster and slower
    assert race(mixed) == (2, 2 + 2 * 15)
    assert threads.CLEAR_AFTER < 15
