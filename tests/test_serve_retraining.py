"""The retraining loop against a real `hone serve` on PostgreSQL: a production model's stored completions and
corrections trigger a check (drift against its training data, the decision, the training file built from the
corrections), a retrain job on the ordinary queue, the gate against production and the baselines, and the
promotion, each an event on the production model's page; the server is killed -9 while the retrain trains,
production stays until the restarted server's worker finishes the job and it passes the gate; no server path
reaches the client. The refusals
(failed gate, failed job) are checked on the policy runner itself with a real database."""

from __future__ import annotations

import json
import time

import pytest
from serve_helpers import chat_rows, start_server

openai = pytest.importorskip("openai")

POLICIES = "/fine_tuning/retraining_policies"
GATE = {"margin": -1, "baselines": ["zero-shot"], "production_tolerance": 1, "forgetting": False}
TRAINING = {"save_every": 1, "dtype": "fp32", "micro_batch_size": 4, "max_steps": 2}
# Requests unlike the training data (code words): the shifted share drift must notice.
SHIFTED = ["Translate 'good morning' into French.", "What is the capital of Peru?", "Name three prime numbers.",
           "How many legs does a spider have?", "Spell 'necessary' backwards.", "Which planet is largest?",
           "Write a haiku about rain.", "What is 17 times 3?"]


class _Api:
    """JSON requests to Honing's own endpoints (the openai client has no method for them)."""

    def __init__(self, base_url: str):
        self.base = base_url

    def call(self, method: str, path: str, body=None) -> tuple[int, dict]:
        import urllib.error
        import urllib.request

        req = urllib.request.Request(self.base + path, method=method, headers={"Content-Type": "application/json"},
                                     data=None if body is None else json.dumps(body).encode())
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def get(self, path: str) -> dict:
        status, out = self.call("GET", path)
        assert status == 200, out
        return out

    def post(self, path: str, body: dict) -> tuple[int, dict]:
        return self.call("POST", path, body)


def _wait(what, timeout: float = 300, every: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = what()
        if found:
            return found
        time.sleep(every)
    raise TimeoutError(what.__doc__ or "waiting")


def _events(c, job_id: str) -> list:
    return list(reversed(c.fine_tuning.jobs.list_events(job_id, limit=500).data))


@pytest.mark.slow
def test_the_loop_retrains_gates_and_promotes_through_a_kill9(pg_cluster, tmp_path, tiny_llama_dir):
    url = pg_cluster.create_database("retraining")
    data = tmp_path / "data"
    args = ["--eval-baselines", "zero-shot", "--stale-after", "2"]
    server = start_server(tmp_path, db_url=url, data_dir=data, extra_args=args)
    try:
        c = openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=0)
        api = _Api(server.base_url)
        (tmp_path / "t.jsonl").write_text(chat_rows(24))
        val_rows = [json.dumps({"messages": [{"role": "user", "content": f"Which code word comes after {w}?"},
                                             {"role": "assistant", "content": f"After {w} comes the next."}]})
                    for w in ("alpha", "bravo", "charlie", "delta", "echo", "golf")]
        (tmp_path / "v.jsonl").write_text("\n".join(val_rows) + "\n")
        train = c.files.create(file=("t.jsonl", (tmp_path / "t.jsonl").read_bytes()), purpose="fine-tune")
        val = c.files.create(file=("v.jsonl", (tmp_path / "v.jsonl").read_bytes()), purpose="fine-tune")
        prod = c.fine_tuning.jobs.create(model=str(tiny_llama_dir), training_file=train.id, validation_file=val.id,
                                         hyperparameters={"n_epochs": 1, "batch_size": 4},
                                         extra_body={"honing_config": {**TRAINING, "max_steps": 1}})
        prod = _wait(lambda: (j := c.fine_tuning.jobs.retrieve(prod.id)).status in ("succeeded", "failed") and j)
        assert prod.status == "succeeded", prod.error
        model = prod.fine_tuned_model

        # Bad policies are refused with the field named; nothing is created.
        for body, param in (({"model": "ft:nope", "every_n_completions": 6}, "model"),
                            ({"model": model}, "every_n_completions"),
                            ({"model": model, "every_n_completions": 6, "gate": {"production": "/x"}}, "gate"),
                            ({"model": model, "every_n_completions": 6, "gate": {"margin": 7}}, "gate"),
                            ({"model": model, "every_n_completions": 6, "honing_config": {"out": "/x"}},
                             "honing_config")):
            status, out = api.post(POLICIES, body)
            assert status in (400, 404) and out["error"]["param"] == param, (body, out)
        assert api.get(POLICIES)["data"] == []
        status, policy = api.post(POLICIES, {"model": model, "every_n_completions": 6, "min_feedback": 3,
                                             "gate": GATE, "honing_config": {"max_steps": 2}})
        assert status == 200, policy
        assert policy["model"] == model and policy["cycles"] == 0

        # A day of traffic: shifted requests, three answers corrected by a rater.
        ids = [c.chat.completions.create(model=model, messages=[{"role": "user", "content": q}], max_tokens=4,
                                         temperature=0, store=True).id for q in SHIFTED[:6]]
        for i, cid in enumerate(ids[:3]):
            status, out = api.post(f"/chat/completions/{cid}/feedback",
                                   {"rating": "down", "correction": f"The right answer number {i}."})
            assert status == 200, out

        def retrain_started():
            """the policy's check creates a retrain job"""
            return api.get(f"{POLICIES}/{policy['id']}")["current_job"]

        job_id = _wait(retrain_started, timeout=240)
        _wait(lambda: c.fine_tuning.jobs.retrieve(job_id).status == "running", timeout=120, every=0.1)
        server.kill9()  # mid-loop: the retrain job is training
        server = start_server(tmp_path, db_url=url, data_dir=data, extra_args=args)
        c = openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=0)
        api = _Api(server.base_url)
        assert api.get(f"{POLICIES}/{policy['id']}")["model"] == model  # production untouched so far

        def settled():
            """the policy settles its retrain job"""
            p = api.get(f"{POLICIES}/{policy['id']}")
            return p["current_job"] is None and p
        done = _wait(settled, timeout=400)
        job = c.fine_tuning.jobs.retrieve(job_id)
        assert job.status == "succeeded", job.error
        assert done["model"] == job.fine_tuned_model != model and done["production_job"] == job_id
        assert done["lineage"] == [model, job.fine_tuned_model]
        assert done["last_cycle"]["outcome"] == "promoted" and done["cycles"] == 1

        # The retrain job: resumed after the kill, trained on production's data plus the corrections,
        # judged against production on the same examples.
        job_events = [e.message for e in _events(c, job_id)]
        assert any("resumed (attempt 2)" in m for m in job_events), job_events
        assert any(m.startswith("Release gate passed") for m in job_events)
        gate = next(e.data for e in _events(c, job_id) if e.message.startswith("Release gate passed"))
        assert {ch["name"] for ch in gate["checks"]} == {"cheaper approaches", "production"}
        lines = c.files.content(job.training_file).text.splitlines()
        assert lines[:24] == chat_rows(24).splitlines()
        added = [json.loads(x) for x in lines[24:]]
        assert sorted(r["messages"][-1]["content"] for r in added) == [
            f"The right answer number {i}." for i in range(3)]

        # Every step on the production model's page, in order.
        mine = [e for e in _events(c, prod.id) if (e.data or {}).get("policy") == policy["id"]]
        said = [e.message for e in mine]
        order = ["Retraining policy", "Retraining check 1: 6 new stored completion(s)", "Drift:", "Retraining:",
                 "Training file", "Retraining as job " + job_id, "Promoted " + job.fine_tuned_model]
        at = [next((i for i, m in enumerate(said) if m.startswith(o)), None) for o in order]
        assert None not in at and at == sorted(at), said
        # Server paths never reach the client: events, the gate's verdict and the report name ids.
        import urllib.request

        said_all = json.dumps([e.model_dump() for e in _events(c, job_id) + _events(c, prod.id)])
        report = urllib.request.urlopen(f"{server.base_url}/fine_tuning/jobs/{job_id}/report", timeout=60).read()
        for text in (said_all, report.decode()):
            assert str(data.resolve()) not in text and "/files/file-" not in text
        assert f"Evaluation of {job_id}" in report.decode()
        drift = next(e for e in mine if e.message.startswith("Drift:"))
        assert drift.data["n_current"] == 6 and drift.data["recommendation"] in ("fine", "collect more data",
                                                                                 "retrain")
    finally:
        server.stop()


# -- the refusals, on the runner with a real (SQLite) database -----------------------------------
@pytest.fixture
def runner(tmp_path):
    from honing.serve.db import make_engine, sessions, upgrade
    from honing.serve.retraining import PolicyRunner
    from honing.serve.settings import Settings

    settings = Settings(data_dir=tmp_path / "data")
    settings.data_dir.mkdir(parents=True)
    upgrade(settings.db_url)
    engine = make_engine(settings.db_url)
    yield PolicyRunner(settings, sessions(engine), "w1", takeover_all=True)
    engine.dispose()


def _rows(runner, retrain_status: str, fine_tuned: str | None, error: dict | None = None):
    from honing.fileio import write_json_atomic
    from honing.serve.db import Job, RetrainPolicy

    def job(jid, status, ft, run):
        return Job(id=jid, project="p", model="base", training_file="f", validation_file="v", status=status,
                   method={"type": "supervised"}, config={}, seed=1, fine_tuned_model=ft, result_files=[],
                   run_dir=str(run), created_at=0, enqueued_at=0, attempts=1, model_deleted=False, error=error)

    run = runner.settings.runs_dir / "ftjob-new"
    run.mkdir(parents=True)
    reason = "fine-tuned vs zero-shot: +0.0 points, CI lower bound -0.1"
    write_json_atomic(run / "run.json", {"gate": {"passed": False, "reasons": [reason]}})
    with runner.Session.begin() as s:
        s.add(job("ftjob-prod", "succeeded", "ft:prod", runner.settings.runs_dir / "ftjob-prod"))
        s.add(job("ftjob-new", retrain_status, fine_tuned, run))
        s.add(RetrainPolicy(id="rtpol-1", project="p", model="ft:prod", production_job="ftjob-prod",
                            lineage=["ft:prod"], every_n_completions=5, min_feedback=1, drift=True, gate={},
                            enabled=True, created_at=0, cycles=1, cursor_ts=0, feedback_cursor=0,
                            current_job="ftjob-new"))


def _policy(runner):
    from honing.serve.db import RetrainPolicy

    with runner.Session() as s:
        return s.get(RetrainPolicy, "rtpol-1")


@pytest.mark.parametrize("status,fine_tuned,why", [
    ("succeeded", None, "the gate failed (fine-tuned vs zero-shot"),
    ("failed", None, "job ftjob-new failed (out of memory)"),
    ("cancelled", None, "job ftjob-new was cancelled"),
])
def test_a_retrain_that_is_not_promoted_leaves_production(runner, status, fine_tuned, why):
    from sqlalchemy import select

    from honing.serve.db import JobEvent

    _rows(runner, "running", fine_tuned, {"message": "out of memory"} if status == "failed" else None)
    runner.settle("rtpol-1")  # still running: nothing happens
    assert _policy(runner).current_job == "ftjob-new"
    from honing.serve.db import Job

    with runner.Session.begin() as s:
        s.get(Job, "ftjob-new").status = status
    runner.settle("rtpol-1")
    runner.settle("rtpol-1")  # twice: one event
    p = _policy(runner)
    assert (p.model, p.production_job, p.lineage, p.current_job) == ("ft:prod", "ftjob-prod", ["ft:prod"], None)
    assert p.last_cycle["outcome"] == "not promoted" and p.last_cycle["reason"].startswith(why)
    with runner.Session() as s:
        said = s.scalars(select(JobEvent.message).where(JobEvent.job_id == "ftjob-prod")).all()
    assert len(said) == 1 and said[0].startswith("Not promoted: " + why) and "ft:prod stays" in said[0]


def test_a_retrain_that_passed_becomes_production(runner):
    _rows(runner, "succeeded", "ft:new")
    runner.settle("rtpol-1")
    p = _policy(runner)
    assert (p.model, p.production_job, p.lineage) == ("ft:new", "ftjob-new", ["ft:prod", "ft:new"])


def test_a_check_lease_is_one_workers_until_it_expires(runner, monkeypatch):
    """Two workers never run one check; a killed worker's check is taken over once its lease expires."""
    from honing.serve.retraining import PolicyRunner

    _rows(runner, "succeeded", "ft:new")
    runner.settle("rtpol-1")  # no job in flight: a check may start
    other = PolicyRunner(runner.settings, runner.Session, "w2")
    assert other._lease("rtpol-1") and not PolicyRunner(runner.settings, runner.Session, "w3")._lease("rtpol-1")
    t = time.time() + runner.settings.stale_after + 1
    monkeypatch.setattr(time, "time", lambda: t)
    assert PolicyRunner(runner.settings, runner.Session, "w3")._lease("rtpol-1")


def test_a_check_that_fails_is_said_and_not_retried_at_every_look(runner, monkeypatch):
    """A check that raises (here: the production job's files are gone) is recorded on the policy and tried
    again after RETRY_AFTER_ERROR_S, not every 2 s (a retry storm would burn the worker's CPU)."""
    from honing.serve import retraining as R
    from honing.serve.db import Job, RetrainPolicy, StoredCompletion

    _rows(runner, "succeeded", "ft:new")
    runner.settle("rtpol-1")  # ft:new is production now; its job's files do not exist
    with runner.Session.begin() as s:
        s.get(Job, "ftjob-new").training_file = "file-gone"
        s.get(RetrainPolicy, "rtpol-1").every_n_completions = 1
        s.add(StoredCompletion(id="chatcmpl-1", project="p", model="ft:new", created_at=0, created_ts=time.time() + 1,
                               request={"messages": [{"role": "user", "content": "hi"}]}, response={}))
    runner.poll()
    p = _policy(runner)
    assert p.last_cycle["outcome"] == "error" and "AttributeError" in p.last_cycle["reason"]
    assert p.lease_worker is None and p.cycles == 1  # nothing half-done: no new check was counted
    calls = []
    monkeypatch.setattr(R.PolicyRunner, "check", lambda self, pid: calls.append(pid))
    runner.last_look = 0
    runner.poll()
    assert calls == []
    later = time.time() + R.RETRY_AFTER_ERROR_S + 1
    monkeypatch.setattr(time, "time", lambda: later)
    runner.last_look = 0
    runner.poll()
    assert calls == ["rtpol-1"]
