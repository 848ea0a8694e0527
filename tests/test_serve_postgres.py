"""The service on PostgreSQL (a throwaway cluster started here): the openai-client path through
`hone serve --db postgresql+psycopg://...`, and two `hone worker` processes sharing one queue — each job
runs exactly once, and a job whose worker is killed is resumed by the other."""

from __future__ import annotations

import subprocess
import time

import pytest
from serve_helpers import HONE, _env, chat_rows, start_server

openai = pytest.importorskip("openai")
OpenAI = openai.OpenAI

JOB = {"hyperparameters": {"n_epochs": 1, "batch_size": 4},
       "extra_body": {"honing_config": {"save_every": 1, "dtype": "fp32", "micro_batch_size": 4}}}


@pytest.fixture
def pg(pg_cluster):
    return pg_cluster


def _wait(c, job_id, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        j = c.fine_tuning.jobs.retrieve(job_id)
        if j.status in ("succeeded", "failed", "cancelled"):
            return j
        time.sleep(0.5)
    raise TimeoutError(f"{job_id}: {j.status}")


def test_openai_client_path_on_postgres(pg, tmp_path, tiny_llama_dir):
    url = pg.create_database("single")
    server = start_server(tmp_path, db_url=url)
    try:
        c = OpenAI(base_url=server.base_url, api_key="none", max_retries=0)
        (tmp_path / "t.jsonl").write_text(chat_rows(12))
        f = c.files.create(file=("t.jsonl", (tmp_path / "t.jsonl").read_bytes()), purpose="fine-tune")
        job = c.fine_tuning.jobs.create(model=str(tiny_llama_dir), training_file=f.id, suffix="pg", **JOB)
        job = _wait(c, job.id)
        assert job.status == "succeeded", job.error
        assert len(c.fine_tuning.jobs.checkpoints.list(job.id).data) == 3
        assert [e.data["step"] for e in c.fine_tuning.jobs.list_events(job.id, limit=200).data
                if e.type == "metrics" and e.data["step"] > 0] == [3, 2, 1]
        r = c.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": "hi"}],
                                      max_tokens=4, temperature=0)
        assert r.usage.completion_tokens == 4
        text = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
            model=job.fine_tuned_model, messages=[{"role": "user", "content": "hi"}], max_tokens=4,
            temperature=0, stream=True) if ch.choices)
        assert text == r.choices[0].message.content
        assert c.models.delete(job.fine_tuned_model).deleted
    finally:
        server.stop()


def test_two_workers_run_each_job_exactly_once(pg, tmp_path, tiny_llama_dir):
    import psycopg

    url = pg.create_database("workers")
    data = tmp_path / "data"
    server = start_server(tmp_path, db_url=url, data_dir=data, extra_args=["--workers", "0"])
    workers = [subprocess.Popen([*HONE, "worker", "--db", url, "--data-dir", str(data), "--stale-after", "4"],
                                stdout=subprocess.DEVNULL, stderr=(tmp_path / f"w{i}.log").open("wb"), env=_env())
               for i in range(2)]
    try:
        c = OpenAI(base_url=server.base_url, api_key="none", max_retries=0)
        (tmp_path / "t.jsonl").write_text(chat_rows(12))
        f = c.files.create(file=("t.jsonl", (tmp_path / "t.jsonl").read_bytes()), purpose="fine-tune")
        jobs = [c.fine_tuning.jobs.create(model=str(tiny_llama_dir), training_file=f.id, **JOB) for _ in range(3)]
        # kill -9 whichever worker runs the first job once it has a checkpoint: the other takes it over
        deadline = time.time() + 180
        victim = None
        while time.time() < deadline and victim is None:
            with psycopg.connect(url.replace("postgresql+psycopg", "postgresql")) as db:
                row = db.execute("select worker_id from jobs where id=%s and status='running'",
                                 (jobs[0].id,)).fetchone()
            if row and c.fine_tuning.jobs.checkpoints.list(jobs[0].id).data:
                pid = int(row[0].split(":")[1])
                victim = next(w for w in workers if w.pid == pid)
                victim.kill()
            time.sleep(0.2)
        done = [_wait(c, j.id, timeout=300) for j in jobs]
        assert [j.status for j in done] == ["succeeded"] * 3, [j.error for j in done]
        with psycopg.connect(url.replace("postgresql+psycopg", "postgresql")) as db:
            attempts = dict(db.execute("select id, attempts from jobs").fetchall())
            started = db.execute("select job_id, count(*) from job_events where message like 'Fine-tuning job "
                                 "started%%' group by job_id").fetchall()
        assert dict(started) == {j.id: 1 for j in jobs}  # each job started once ...
        if victim is not None:  # ... and the killed worker's job was resumed exactly once more
            assert attempts[jobs[0].id] == 2
            assert attempts[jobs[1].id] == 1 and attempts[jobs[2].id] == 1
        else:
            assert set(attempts.values()) == {1}
    finally:
        for w in workers:
            w.kill()
            w.wait()
        server.stop()
