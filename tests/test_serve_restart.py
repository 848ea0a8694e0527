"""Jobs survive faults: `kill -9` of the server mid-job, then a restart, resumes the job from its last
checkpoint and it ends with the same adapter, bitwise, as an identical job that ran uninterrupted; the
job queued behind it stays queued; nothing is lost or duplicated. Pause/resume ends with the same adapter
too; cancel stops the training process group."""

from __future__ import annotations

import os
import sqlite3
import time
import urllib.request

import pytest
from serve_helpers import chat_rows, start_server

openai = pytest.importorskip("openai")
OpenAI = openai.OpenAI

# Same data, seed and settings for every job here, nothing left to a measurement (auto dtype and auto
# micro-batch size are measured on the machine, so two jobs could differ in summation order): fp32, 4
# examples per forward, a checkpoint every step, 6 steps.
JOB = {"hyperparameters": {"n_epochs": 2, "batch_size": 4}, "seed": 11,
       "extra_body": {"honing_config": {"save_every": 1, "dtype": "fp32", "micro_batch_size": 4,
                                        "keep_checkpoints": 10}}}


def _adapter(run_dir) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "final" / "adapter_model.safetensors"))


def _same(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _wait(c, job_id, statuses, timeout=240, what=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        j = c.fine_tuning.jobs.retrieve(job_id)
        if j.status in statuses and (what is None or what(j)):
            return j
        time.sleep(0.3)
    raise TimeoutError(f"{job_id}: {j.status}")


def test_kill9_restart_resumes_bitwise_and_keeps_the_queue(tmp_path, tiny_llama_dir):
    data = tmp_path / "data"
    # A slow checkpoint save (test hook) gives a window to kill the server while the job is mid-run.
    server = start_server(tmp_path, data_dir=data, env={"HONING_TEST_SAVE_DELAY": "1.0"})
    c = OpenAI(base_url=server.base_url, api_key="none", max_retries=2)
    (tmp_path / "train.jsonl").write_text(chat_rows(12))
    f = c.files.create(file=("train.jsonl", (tmp_path / "train.jsonl").read_bytes()), purpose="fine-tune")
    a = c.fine_tuning.jobs.create(model=str(tiny_llama_dir), training_file=f.id, **JOB)
    b = c.fine_tuning.jobs.create(model=str(tiny_llama_dir), training_file=f.id, **JOB)
    paused = c.fine_tuning.jobs.create(model=str(tiny_llama_dir), training_file=f.id, **JOB)
    cancelled = c.fine_tuning.jobs.create(model=str(tiny_llama_dir), training_file=f.id, **JOB)
    _wait(c, a.id, ("running",), what=lambda j: len(c.fine_tuning.jobs.checkpoints.list(a.id).data) >= 2)
    assert c.fine_tuning.jobs.retrieve(b.id).status == "queued"
    # the server stays responsive while a job trains (training runs in its own process)
    t0 = time.perf_counter()
    with urllib.request.urlopen(server.url + "/health", timeout=5) as r:
        assert r.status == 200
    assert time.perf_counter() - t0 < 2.0
    server.kill9()
    time.sleep(1.0)  # the kernel delivers the parent-death signal to the training process
    events_before = _event_keys(data, a.id)

    server = start_server(tmp_path, data_dir=data, port=int(server.url.rsplit(":", 1)[1]))
    c = OpenAI(base_url=server.base_url, api_key="none", max_retries=2)
    try:
        assert c.fine_tuning.jobs.retrieve(b.id).status == "queued"
        assert [x.id for x in c.files.list()] == [f.id]
        ja = _wait(c, a.id, ("succeeded", "failed"))
        assert ja.status == "succeeded", ja.error
        # pause the third job while it runs, then resume it
        _wait(c, paused.id, ("running",), what=lambda j: len(c.fine_tuning.jobs.checkpoints.list(paused.id).data))
        c.fine_tuning.jobs.pause(paused.id)
        assert _wait(c, paused.id, ("paused", "succeeded")).status in ("paused", "succeeded")
        # the fourth job is next in the queue: cancel it while it runs
        jd = _wait(c, cancelled.id, ("running",))
        c.fine_tuning.jobs.cancel(jd.id)
        assert _wait(c, cancelled.id, ("cancelled", "succeeded", "failed")).status == "cancelled"
        if c.fine_tuning.jobs.retrieve(paused.id).status == "paused":
            assert c.fine_tuning.jobs.resume(paused.id).status == "queued"
        jb = _wait(c, b.id, ("succeeded", "failed"))
        jp = _wait(c, paused.id, ("succeeded", "failed"))
        assert jb.status == "succeeded" and jp.status == "succeeded"
    finally:
        server.stop()

    runs = data / "runs"
    ref = _adapter(runs / b.id)
    assert _same(_adapter(runs / a.id), ref), "resumed after kill -9 differs from the uninterrupted run"
    assert _same(_adapter(runs / paused.id), ref), "paused + resumed differs from the uninterrupted run"
    # control: the comparison sees a one-ulp change in one element
    import torch

    k = next(iter(ref))
    nudged = dict(ref)
    nudged[k] = ref[k].clone()
    nudged[k].view(-1)[0] = torch.nextafter(ref[k].view(-1)[0], torch.tensor(float("inf")))
    assert not _same(nudged, ref)
    # nothing duplicated: one event per key, one metrics event per step, every pre-kill event kept
    after = _event_keys(data, a.id)
    assert set(events_before) <= set(after) and len(after) == len(set(after))
    steps = [k for k in after if k.startswith("metrics:") and k != "metrics:0"]
    assert sorted(int(k.split(":")[1]) for k in steps) == [1, 2, 3, 4, 5, 6]
    with sqlite3.connect(data / "honing.db") as db:
        attempts = dict(db.execute("select id, attempts from jobs").fetchall())
        n_files = db.execute("select count(*) from files where purpose='fine-tune'").fetchone()[0]
    assert attempts[a.id] == 2 and attempts[b.id] == 1 and n_files == 1
    # the cancelled job's training process is gone (its process group was killed)
    assert not _training_processes_of(cancelled.id)


def _event_keys(data, job_id) -> list[str]:
    with sqlite3.connect(data / "honing.db") as db:
        return [r[0] for r in db.execute("select key from job_events where job_id=?", (job_id,))]


def _training_processes_of(job_id: str) -> list[int]:
    pids = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/cmdline", "rb") as fh:
                    cmd = fh.read()
            except OSError:
                continue
            if job_id.encode() in cmd and b"train" in cmd:
                pids.append(int(p))
    return pids


def test_no_auth_is_refused_off_localhost(tmp_path):
    from serve_helpers import hone

    r = hone("serve", "--host", "0.0.0.0", "--no-auth", "--data-dir", str(tmp_path), check=False)
    assert r.returncode == 2 and "no_auth" in r.stderr and "localhost" in r.stderr
    assert not (tmp_path / "honing.db").exists()  # refused before touching anything
