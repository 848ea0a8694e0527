"""Reinforcement fine-tuning through `hone serve`, driven by the official `openai` client over real HTTP:
a `reinforcement` job with OpenAI's grader object trains objective grpo and reports rewards in its events
and checkpoints; the grader endpoints (`client.fine_tuning.alpha.graders.run/validate`) answer as OpenAI's;
and a malicious python grader sent through the API can neither read another project's file nor reach the
network nor take the server down."""

from __future__ import annotations

import json
import shutil
import time
import urllib.request

import pytest
from serve_helpers import create_key, start_server

openai = pytest.importorskip("openai")

GRADER = {"type": "text_similarity", "name": "close", "input": "{{sample.output_text}}",
          "reference": "{{item.target}}", "evaluation_metric": "fuzzy_match"}
needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None,
                                 reason="bubblewrap is not installed (sh scripts/system_deps.sh installs it)")


def rft_rows(n: int, missing_at: int | None = None) -> str:
    rows = []
    for i in range(n):
        row = {"messages": [{"role": "user", "content": f"Say yes to question {i}."}], "target": "yes"}
        if i + 1 == missing_at:
            del row["target"]
        rows.append(json.dumps(row))
    return "\n".join(rows) + "\n"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from conftest import make_tiny_llama

    from honing.models import load_tokenizer

    tmp = tmp_path_factory.mktemp("rft-serve")
    tiny = tmp / "tiny-llama"
    make_tiny_llama().save_pretrained(tiny)
    load_tokenizer("smollm2-135m-instruct").save_pretrained(tiny)
    data = tmp / "data"
    key_a, key_b = create_key(data, "alpha"), create_key(data, "beta")
    server = start_server(tmp, no_auth=False, data_dir=data)
    a = openai.OpenAI(base_url=server.base_url, api_key=key_a, max_retries=0)
    b = openai.OpenAI(base_url=server.base_url, api_key=key_b, max_retries=0)
    yield {"server": server, "tiny": tiny, "a": a, "b": b, "tmp": tmp}
    server.stop()


def _upload(client, tmp, name, text):
    (tmp / name).write_text(text)
    return client.files.create(file=(name, (tmp / name).read_bytes()), purpose="fine-tune")


def _wait(client, job_id, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.5)
    raise TimeoutError(job_id)


@pytest.fixture(scope="module")
def rft_job(served):
    """One real reinforcement job of project alpha (2 GRPO steps on the tiny model)."""
    c, tmp = served["a"], served["tmp"]
    train = _upload(c, tmp, "rft.jsonl", rft_rows(8))
    valid = _upload(c, tmp, "rft_valid.jsonl", rft_rows(4))
    job = c.fine_tuning.jobs.create(
        model=str(served["tiny"]), training_file=train.id, validation_file=valid.id, seed=3,
        method={"type": "reinforcement", "reinforcement": {"grader": GRADER, "hyperparameters": {
            "n_epochs": 1, "batch_size": 4, "compute_multiplier": 0.5, "eval_interval": 1,
            "reasoning_effort": "low"}}},
        extra_body={"honing_config": {"dtype": "fp32", "micro_batch_size": 2, "lora": {"r": 4},
                                      "grpo": {"max_completion_tokens": 4}}})
    return _wait(c, job.id)


def test_reinforcement_job_trains_grpo_and_reports_rewards(served, rft_job):
    c, tmp, job = served["a"], served["tmp"], rft_job
    assert job.status == "succeeded", job.error
    assert job.method.type == "reinforcement"
    assert job.method.reinforcement.grader.type == "text_similarity"
    assert job.method.reinforcement.hyperparameters.reasoning_effort == "low"
    from honing.rundir import RunDir

    config = RunDir(tmp / "data" / "runs" / job.id).record()["config"]
    assert config["objective"] == "grpo" and config["grpo"]["group_size"] == 2 and config["eval_every"] == 1
    events = c.fine_tuning.jobs.list_events(job.id, limit=100).data
    assert any("reasoning_effort" in e.message and "not applicable" in e.message for e in events)
    metrics = [e.data for e in events if e.type == "metrics"]
    trained = [m for m in metrics if m["step"] >= 1]
    assert trained and all(0.0 <= m["train_reward"] <= 1.0 and "valid_reward" in m for m in trained)
    assert any(m["step"] == 0 and "valid_reward" in m for m in metrics)
    ckpts = c.fine_tuning.jobs.checkpoints.list(job.id).data
    assert ckpts and all("valid_reward" in ck.metrics.model_dump() for ck in ckpts)


def test_the_dashboard_plots_the_reward(served, rft_job, request):
    from test_dashboard import CHROMIUM_ARGS, PageLog, chromium_path

    if chromium_path() is None:
        pytest.skip("chromium not found (scripts/system_deps.sh installs it)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        page = browser.new_page()
        log = PageLog(page)
        page.add_init_script(f"localStorage.setItem('honing.apiKey', {json.dumps(served['a'].api_key)})")
        page.goto(f"{served['server'].url}/#/jobs/{rft_job.id}")
        page.wait_for_selector("#chart-title:text('Reward')")
        chart = page.wait_for_selector("#loss-chart svg")
        assert int(chart.get_attribute("data-train-points")) >= 1
        assert int(chart.get_attribute("data-eval-points")) >= 2  # before training, and after
        assert "train reward" in page.inner_text("#loss-chart .legend")
        # 404: the evaluation report, which a reinforcement job does not write (its reward is the evaluation)
        assert log.unexpected(allowed=("404",)) == [], log.errors
        browser.close()


def test_reinforcement_requests_are_checked(served):
    c, tmp = served["a"], served["tmp"]
    train = _upload(c, tmp, "rft_bad.jsonl", rft_rows(10, missing_at=3))
    method = {"type": "reinforcement", "reinforcement": {"grader": GRADER}}
    with pytest.raises(openai.BadRequestError) as e:
        c.fine_tuning.jobs.create(model=str(served["tiny"]), training_file=train.id, method=method)
    assert e.value.body["param"] == "validation_file"
    bad = {"type": "reinforcement", "reinforcement": {"grader": {**GRADER, "evaluation_metric": "rouge_9"}}}
    with pytest.raises(openai.BadRequestError) as e:
        c.fine_tuning.jobs.create(model=str(served["tiny"]), training_file=train.id, validation_file=train.id,
                                  method=bad)
    assert e.value.body["param"] == "method.reinforcement.grader"
    assert "method.reinforcement.grader.evaluation_metric" in e.value.body["message"]
    job = c.fine_tuning.jobs.create(model=str(served["tiny"]), training_file=train.id, validation_file=train.id,
                                    method=method)
    job = _wait(c, job.id)
    assert job.status == "failed" and job.error.param == "training_file"
    assert "line 3" in job.error.message and "'target'" in job.error.message


def test_grader_endpoints_answer_as_openai(served):
    c = served["a"]
    check = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
             "reference": "{{item.answer}}", "operation": "eq"}
    out = c.fine_tuning.alpha.graders.run(grader=check, model_sample="Paris", item={"answer": "Paris"})
    assert out.reward == 1.0 and out.metadata.type == "string_check" and not out.metadata.errors.other_error
    out = c.fine_tuning.alpha.graders.run(grader=check, model_sample="Lyon", item={"answer": "Paris"})
    assert out.reward == 0.0
    assert c.fine_tuning.alpha.graders.validate(grader=check).grader.type == "string_check"
    with pytest.raises(openai.BadRequestError) as e:
        c.fine_tuning.alpha.graders.validate(grader={**check, "operation": "startswith"})
    assert e.value.body["param"] == "grader" and "grader.operation" in e.value.body["message"]


@needs_bwrap
def test_a_malicious_python_grader_is_contained(served):
    a, b, tmp, server = served["a"], served["b"], served["tmp"], served["server"]
    secret = _upload(b, tmp, "beta_secret.jsonl", '{"prompt": "p", "completion": "TOP-SECRET"}\n')
    stored = next((tmp / "data").rglob(f"*{secret.id}*"))  # where the server keeps project beta's upload
    attacks = {
        "read another project's file": f"def grade(sample, item):\n    return float('TOP-SECRET' in open({str(stored)!r}).read())\n",
        "list the data directory": f"import os\ndef grade(sample, item):\n    return float(len(os.listdir({str(tmp / 'data')!r})) > 0)\n",
        "reach the server": ("import socket\ndef grade(sample, item):\n    s = socket.create_connection(('127.0.0.1', "
                             f"{server.url.rsplit(':', 1)[1]}), timeout=2)\n    return 1.0\n"),
        "allocate without bound": "def grade(sample, item):\n    x = bytearray(1 << 36)\n    return 1.0\n",
        "fork": "import os\ndef grade(sample, item):\n    for _ in range(10000):\n        os.fork()\n    return 1.0\n",
    }
    for what, source in attacks.items():
        grader = {"type": "python", "name": "evil", "source": source}
        out = a.fine_tuning.alpha.graders.run(grader=grader, model_sample="x", item={})
        assert out.reward == 0.0, what
        assert any(v is True for v in out.metadata.errors.model_dump().values()), what
    with urllib.request.urlopen(server.url + "/health", timeout=5) as r:  # still up
        assert r.status == 200
    ok = {"type": "python", "name": "fine", "source": "def grade(sample, item):\n    return 0.75\n"}
    assert a.fine_tuning.alpha.graders.run(grader=ok, model_sample="x", item={}).reward == 0.75
