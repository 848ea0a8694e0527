"""Machine probes measured once per machine (honing.machine): the bf16 race and the CPU token budget are
read back instead of measured again, keyed by the CPU and torch's version, written atomically; a close
call is not kept."""

from __future__ import annotations

import json

import pytest

from honing import machine


@pytest.fixture
def cache_on(tmp_path, monkeypatch):
    monkeypatch.setenv("HONING_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("HONING_PROBE_CACHE", "1")
    return tmp_path


def _counting(value):
    calls = []

    def measure():
        calls.append(1)
        return value

    return measure, calls


def test_a_measurement_is_made_once_per_machine_and_key(cache_on, monkeypatch):
    measure, calls = _counting([512, "measured forward rates ..."])
    assert machine.measured_once("budget", {"model": "a"}, measure) == ([512, "measured forward rates ..."], False)
    assert machine.measured_once("budget", {"model": "a"}, measure) == ([512, "measured forward rates ..."], True)
    assert len(calls) == 1
    machine.measured_once("budget", {"model": "b"}, measure)  # another key: measured
    assert len(calls) == 2
    files = list((cache_on / "probes").iterdir())
    assert len(files) == 1 and json.loads(files[0].read_text())["machine"]["torch"]  # no temp file left over
    # Another torch (or CPU) is another machine: measured again.
    here = machine.machine_identity()
    monkeypatch.setattr(machine, "machine_identity", lambda: {**here, "torch": "9.9"})
    machine.measured_once("budget", {"model": "a"}, measure)
    assert len(calls) == 3


def test_a_close_call_or_a_broken_file_is_measured_again(cache_on):
    measure, calls = _counting(0.7)
    for _ in range(2):
        assert machine.measured_once("ratio", {}, measure, decisive=lambda r: r < 0.6) == (0.7, False)
    assert len(calls) == 2
    machine.measured_once("other", {}, lambda: 1)
    path = next((cache_on / "probes").iterdir())
    path.write_text("{cut by a cra")
    assert machine.measured_once("other", {}, lambda: 2) == (2, False)


def test_off_by_environment(cache_on, monkeypatch):
    monkeypatch.setenv("HONING_PROBE_CACHE", "0")
    measure, calls = _counting(1)
    machine.measured_once("x", {}, measure)
    machine.measured_once("x", {}, measure)
    assert len(calls) == 2 and not (cache_on / "probes").exists()


def test_the_bf16_race_is_kept_for_the_machine(cache_on, monkeypatch):
    from honing import precision

    races = []
    monkeypatch.setattr(precision, "bf16_race", lambda: races.append(1) or 0.4)  # bf16 clearly faster
    for _ in range(2):
        precision.bf16_is_fast.cache_clear()  # a new process
        assert precision.bf16_is_fast("cpu") is True
    assert len(races) == 1
    precision.bf16_is_fast.cache_clear()


def test_the_token_budget_is_kept_only_when_measured_on_a_quiet_machine(cache_on, monkeypatch):
    from conftest import make_tiny_llama

    from honing.train import auto

    probes = []
    monkeypatch.setattr(auto, "_probe_forward_rates", lambda model, length: probes.append(1) or (160, "rates"))
    model = make_tiny_llama(vocab_size=500)
    key = {"base": "tiny", "method": "lora"}
    monkeypatch.setattr(machine, "quiet_enough", lambda: False)  # busy: used for this run, not kept
    for _ in range(2):
        auto._probe_cache.clear()  # a new process
        assert auto.measure_cpu_token_budget(model, 40, key) == (160, "rates")
    assert len(probes) == 2
    monkeypatch.setattr(machine, "quiet_enough", lambda: True)
    for _ in range(2):
        auto._probe_cache.clear()
        budget, words = auto.measure_cpu_token_budget(model, 40, key)
    assert len(probes) == 3 and budget == 160 and "measured once on this machine" in words
    auto._probe_cache.clear()


def test_torch_compile_is_skipped_for_runs_that_compile_nothing():
    from honing.startup import skip_compiler_imports

    env: dict = {}
    assert skip_compiler_imports("lora", env) and env == {"TORCHDYNAMO_DISABLE": "1"}
    qlora: dict = {}
    assert not skip_compiler_imports("qlora", qlora) and qlora == {}  # its bitsandbytes kernels stay compiled
    user = {"TORCHDYNAMO_DISABLE": "0"}
    assert not skip_compiler_imports("full", user) and user == {"TORCHDYNAMO_DISABLE": "0"}
