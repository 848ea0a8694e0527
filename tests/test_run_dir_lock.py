"""One training process per run directory: a second `train()` on an `out` another process is writing is
refused before it writes anything, and a killed writer leaves no stale lock."""

import os
import signal
import subprocess
import sys
import time

import pytest

from honing.config import TrainConfig
from honing.errors import ConfigError
from honing.train import train

HOLDER = """
import sys, time
from honing.rundir import sole_writer
with sole_writer(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def _hold(path):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "RANK": "0"})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_of_a_run_directory_is_refused_and_a_killed_one_releases_it(tmp_path, monkeypatch):
    from honing import rundir

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setattr(rundir, "LOCK_WAIT_S", 0.5)  # a live holder: refused after the grace period
    out = tmp_path / "run"
    data = tmp_path / "train.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n')
    holder = _hold(out)
    try:
        with pytest.raises(ConfigError, match="being written by another training run"):
            train(TrainConfig(model="tiny-random-llama", data=str(data), out=str(out), max_steps=1))
        assert sorted(os.listdir(out)) == []  # nothing written by the refused run
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    from honing.rundir import sole_writer

    deadline = time.time() + 10
    while True:  # the kernel drops a dead process's lock
        try:
            with sole_writer(out):
                break
        except ConfigError:
            assert time.time() < deadline
            time.sleep(0.1)
