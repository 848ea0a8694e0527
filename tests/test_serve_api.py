"""`hone serve` driven by the official `openai` client, over real HTTP, against a real server process
(SQLite): upload -> job -> events -> succeeded -> checkpoints -> chat (streamed and not) -> delete; a bad
file fails its job with line numbers; another project's ids are 404 on every endpoint; bad keys are 401.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
from serve_helpers import chat_rows, create_key, start_server

openai = pytest.importorskip("openai")
OpenAI = openai.OpenAI


@pytest.fixture(scope="module")
def served(tmp_path_factory, request):
    tmp = tmp_path_factory.mktemp("serve")
    tiny = request.getfixturevalue("tiny_llama_module")
    data = tmp / "data"
    key_a = create_key(data, "alpha")
    key_b = create_key(data, "beta")
    server = start_server(tmp, no_auth=False, data_dir=data)
    yield {"server": server, "tiny": tiny, "a": OpenAI(base_url=server.base_url, api_key=key_a, max_retries=0),
           "b": OpenAI(base_url=server.base_url, api_key=key_b, max_retries=0), "key_a": key_a, "tmp": tmp}
    server.stop()


@pytest.fixture(scope="module")
def tiny_llama_module(tmp_path_factory):
    from conftest import make_tiny_llama

    from honing.models import load_tokenizer, resolve_model

    out = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    make_tiny_llama().save_pretrained(out)
    load_tokenizer(resolve_model("smollm2-135m-instruct")).save_pretrained(out)
    return out


def wait_job(client, job_id, timeout=240, until=("succeeded", "failed", "cancelled")):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in until:
            return job
        time.sleep(0.5)
    raise TimeoutError(f"{job_id} still {job.status}")


@pytest.fixture(scope="module")
def trained(served):
    """One real fine-tuning job of project alpha (3 LoRA steps on the tiny model, with a validation file so
    the end-of-training evaluation report is attached)."""
    c, tmp = served["a"], served["tmp"]
    (tmp / "train.jsonl").write_text(chat_rows(12))
    (tmp / "valid.jsonl").write_text(chat_rows(10))
    train = c.files.create(file=("train.jsonl", (tmp / "train.jsonl").read_bytes()), purpose="fine-tune")
    valid = c.files.create(file=("valid.jsonl", (tmp / "valid.jsonl").read_bytes()), purpose="fine-tune")
    job = c.fine_tuning.jobs.create(
        model=str(served["tiny"]), training_file=train.id, validation_file=valid.id, suffix="codes", seed=7,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}},
        metadata={"team": "docs"},
        extra_body={"honing_config": {"save_every": 1, "dtype": "fp32", "micro_batch_size": 4}},
    )
    assert job.status == "validating_files" and job.id.startswith("ftjob-")
    seen_running = []
    deadline = time.time() + 240
    while time.time() < deadline:
        j = c.fine_tuning.jobs.retrieve(job.id)
        seen_running.append(j.status)
        if j.status in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.3)
    return {"job": j, "train": train, "valid": valid, "statuses": seen_running}


def test_files_roundtrip(served):
    c, tmp = served["a"], served["tmp"]
    (tmp / "f.jsonl").write_text(chat_rows(10))
    f = c.files.create(file=("f.jsonl", (tmp / "f.jsonl").read_bytes()), purpose="fine-tune")
    assert f.id.startswith("file-") and f.bytes == len(chat_rows(10).encode()) and f.status == "processed"
    assert f.filename == "f.jsonl" and f.purpose == "fine-tune"
    assert c.files.retrieve(f.id).id == f.id
    assert c.files.content(f.id).read() == chat_rows(10).encode()
    ids = [x.id for x in c.files.list(purpose="fine-tune")]
    assert f.id in ids
    # pagination: limit 1 + after walks every file exactly once
    walked = [x.id for x in c.files.list(limit=1, order="asc")]
    assert sorted(walked) == sorted(x.id for x in c.files.list()) and len(set(walked)) == len(walked)
    assert c.files.delete(f.id).deleted is True
    with pytest.raises(openai.NotFoundError) as e:
        c.files.retrieve(f.id)
    assert e.value.body["code"] == "file_not_found" if isinstance(e.value.body, dict) else True


def test_job_runs_to_a_fine_tuned_model(served, trained):
    c, job = served["a"], trained["job"]
    assert job.status == "succeeded", job.error
    assert "running" in trained["statuses"] or "queued" in trained["statuses"]
    assert job.fine_tuned_model == f"ft:tiny-llama:alpha:codes:{job.id}"
    assert job.trained_tokens and job.trained_tokens > 0 and job.finished_at >= job.created_at
    assert job.hyperparameters.n_epochs == 1 and job.hyperparameters.batch_size == 4
    assert job.hyperparameters.learning_rate_multiplier == pytest.approx(1.0)
    assert job.seed == 7 and job.metadata == {"team": "docs"} and job.result_files
    results = c.files.content(job.result_files[0]).read().decode()
    assert results.splitlines()[0].startswith("step,train_loss,valid_loss") and len(results.splitlines()) == 4
    # listing with a metadata filter, and cursor pagination
    assert [j.id for j in c.fine_tuning.jobs.list(extra_query={"metadata[team]": "docs"})] == [job.id]
    assert c.fine_tuning.jobs.list(extra_query={"metadata[team]": "other"}).data == []


def test_events_newest_first_with_metrics(served, trained):
    c, job = served["a"], trained["job"]
    events = c.fine_tuning.jobs.list_events(job.id, limit=1000).data
    assert events[0].message == "The job has successfully completed"
    assert events[-1].message.startswith("Created fine-tuning job")
    metrics = [e for e in events if e.type == "metrics" and e.data.get("step", 0) > 0]
    assert [e.data["step"] for e in metrics] == [3, 2, 1]  # newest first, each step once
    for e in metrics:
        assert e.data["total_steps"] == 3 and e.data["train_loss"] > 0
        assert "train_mean_token_accuracy" in e.data and "valid_loss" in e.data
    assert metrics[0].data["valid_loss"] > 0  # the last step is always evaluated
    # cursor pagination over events: pages of 5 cover all, no repeats
    seen, after = [], None
    while True:
        page = c.fine_tuning.jobs.list_events(job.id, limit=5, **({"after": after} if after else {}))
        seen += [e.id for e in page.data]
        if not page.has_more:
            break
        after = page.data[-1].id
    assert seen == [e.id for e in events]


def test_checkpoints_and_report(served, trained):
    c, job, server = served["a"], trained["job"], served["server"]
    ckpts = c.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [k.step_number for k in ckpts] == [3, 2, 1]
    assert ckpts[0].fine_tuned_model_checkpoint == f"{job.fine_tuned_model}:ckpt-step-3"
    assert ckpts[0].metrics.train_loss > 0 and ckpts[0].metrics.valid_loss > 0
    # Honing extensions: metrics rows, validation report, evaluation report
    hdr = {"Authorization": f"Bearer {served['key_a']}"}
    rows = _get_json(server.base_url + f"/fine_tuning/jobs/{job.id}/metrics", hdr)["data"]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    val = _get_json(server.base_url + f"/files/{trained['train'].id}/validation", hdr)
    assert val["ok"] is True and val["stats"] and all(p["severity"] == "warning" for p in val["problems"])
    report = urllib.request.urlopen(urllib.request.Request(
        server.base_url + f"/fine_tuning/jobs/{job.id}/report", headers=hdr), timeout=30)
    html = report.read().decode().lower()
    assert report.status == 200 and "<html" in html
    # The report compares with the cheaper approaches the service runs by default (--eval-baselines).
    assert all(name in html for name in ("zero-shot", "few-shot", "rag"))


def test_chat_with_the_fine_tuned_model(served, trained):
    c, job = served["a"], trained["job"]
    msgs = [{"role": "user", "content": "Say the code word number 3."}]
    r = c.chat.completions.create(model=job.fine_tuned_model, messages=msgs, max_tokens=6, temperature=0)
    again = c.chat.completions.create(model=job.fine_tuned_model, messages=msgs, max_completion_tokens=6,
                                      temperature=0)
    assert r.choices[0].message.content == again.choices[0].message.content  # greedy is deterministic
    assert r.usage.completion_tokens == 6 and r.choices[0].finish_reason == "length"
    from honing.data.conversation import Message
    from honing.data.render import render_prompt
    from honing.models import load_tokenizer, resolve_model

    tok = load_tokenizer(resolve_model(str(served["tiny"])))
    assert r.usage.prompt_tokens == len(render_prompt(tok, [Message("user", msgs[0]["content"])]))
    # streamed: the same text, usage in a last chunk without choices, [DONE] ends it
    chunks = list(c.chat.completions.create(model=job.fine_tuned_model, messages=msgs, max_tokens=6,
                                            temperature=0, stream=True, stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == r.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"
    # n and seed: sampled choices reproducible with a seed
    s1 = c.chat.completions.create(model=job.fine_tuned_model, messages=msgs, max_tokens=5, n=2, seed=3,
                                   temperature=1.0, top_p=0.9)
    s2 = c.chat.completions.create(model=job.fine_tuned_model, messages=msgs, max_tokens=5, n=2, seed=3,
                                   temperature=1.0, top_p=0.9)
    assert len(s1.choices) == 2 and [x.message.content for x in s1.choices] == [x.message.content for x in s2.choices]
    # the base model and a checkpoint answer too; the adapter changed the output (control)
    base = c.chat.completions.create(model=str(served["tiny"]), messages=msgs, max_tokens=6, temperature=0)
    ck = c.chat.completions.create(model=f"{job.fine_tuned_model}:ckpt-step-3", messages=msgs, max_tokens=6,
                                   temperature=0)
    assert base.choices[0].message.content is not None and ck.choices[0].message.content is not None
    # stop strings cut the text
    full = r.choices[0].message.content
    if len(full) > 2:
        cut = c.chat.completions.create(model=job.fine_tuned_model, messages=msgs, max_tokens=6, temperature=0,
                                        stop=[full[1:3]])
        assert cut.choices[0].message.content == full[: full.index(full[1:3])]


def test_models_listed_retrieved_and_deleted(served, trained):
    c, job = served["a"], trained["job"]
    ids = [m.id for m in c.models.list()]
    assert "smollm2-135m-instruct" in ids and job.fine_tuned_model in ids
    assert f"{job.fine_tuned_model}:ckpt-step-1" in ids
    # a base model named by a path: the client percent-encodes its '/' in the URL
    assert c.models.retrieve(str(served["tiny"])).id == str(served["tiny"])
    hdr = {"Authorization": f"Bearer {served['key_a']}"}
    quoted = urllib.parse.quote(job.fine_tuned_model, safe="")
    assert _get_json(served["server"].base_url + f"/models/{quoted}", hdr)["id"] == job.fine_tuned_model
    assert c.models.retrieve(job.fine_tuned_model).owned_by == "alpha"
    with pytest.raises(openai.BadRequestError):
        c.models.delete("smollm2-135m-instruct")
    assert c.models.delete(job.fine_tuned_model).deleted is True
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": "x"}])
    assert job.fine_tuned_model not in [m.id for m in c.models.list()]


def test_dpo_job(served):
    """method dpo: OpenAI's preference format trains Honing's dpo objective; beta is passed through."""
    c, tmp = served["a"], served["tmp"]
    rows = [json.dumps({"input": {"messages": [{"role": "user", "content": f"Greet person {i}."}]},
                        "preferred_output": [{"role": "assistant", "content": f"Hello, person {i}!"}],
                        "non_preferred_output": [{"role": "assistant", "content": "Go away."}]}) for i in range(10)]
    (tmp / "pairs.jsonl").write_text("\n".join(rows) + "\n")
    f = c.files.create(file=("pairs.jsonl", (tmp / "pairs.jsonl").read_bytes()), purpose="fine-tune")
    job = c.fine_tuning.jobs.create(
        model=str(served["tiny"]), training_file=f.id,
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.25, "n_epochs": 1, "batch_size": 5}}},
        extra_body={"honing_config": {"dtype": "fp32", "micro_batch_size": 5}})
    job = wait_job(c, job.id)
    assert job.status == "succeeded", job.error
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.25
    from honing.rundir import RunDir

    record = RunDir(served["tmp"] / "data" / "runs" / job.id).record()
    assert record["config"]["objective"] == "dpo" and record["config"]["dpo"]["beta"] == 0.25
    with pytest.raises(openai.BadRequestError) as e:
        c.fine_tuning.jobs.create(model=str(served["tiny"]), training_file=f.id,
                                  method={"type": "distillation"})
    assert e.value.body["param"] == "method.type"


WEATHER = {"type": "function", "function": {
    "name": "get_current_weather", "description": "Get the current weather",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}}


CITIES = ["Paris", "Oslo", "Rome", "Lima", "Cairo", "Delhi"]


def _tool_rows(cities: list[str]) -> str:
    """OpenAI's function-calling fine-tuning shape: top-level tools, an assistant turn with tool_calls and no
    content, the tool's result, then the answer."""
    rows = []
    for i, city in enumerate(cities):
        call = {"id": f"call_{i}", "type": "function",
                "function": {"name": "get_current_weather", "arguments": json.dumps({"location": city})}}
        rows.append(json.dumps({"tools": [WEATHER], "messages": [
            {"role": "user", "content": f"Weather in {city}?"},
            {"role": "assistant", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": f"call_{i}", "content": "20C"},
            {"role": "assistant", "content": f"20C in {city}."}]}))
    return "\n".join(rows) + "\n"


@pytest.mark.slow
def test_a_tool_trained_model_answers_with_parsed_tool_calls(served):
    """A job trained on a function-calling file answers the official client's `tools` request with
    `message.tool_calls` (name and JSON arguments as trained), streamed and not; the untrained base does not
    (the control that the calls come from training, not from the prompt)."""
    c, tmp = served["a"], served["tmp"]
    (tmp / "tools.jsonl").write_text(_tool_rows(CITIES * 2))
    f = c.files.create(file=("tools.jsonl", (tmp / "tools.jsonl").read_bytes()), purpose="fine-tune")
    # The tiny random model needs many passes to learn the call format (it learns the format and the tool's name,
    # not to copy the city: any trained city is accepted).
    job = c.fine_tuning.jobs.create(
        model=str(served["tiny"]), training_file=f.id, seed=3,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 45, "batch_size": 4}}},
        extra_body={"honing_config": {"dtype": "fp32", "micro_batch_size": 4, "method": "full",
                                      "learning_rate": 3e-3}})
    job = wait_job(c, job.id, timeout=600)
    assert job.status == "succeeded", job.error
    ask = {"messages": [{"role": "user", "content": "Weather in Rome?"}], "tools": [WEATHER],
           "temperature": 0, "max_tokens": 40}
    r = c.chat.completions.create(model=job.fine_tuned_model, **ask)
    assert r.choices[0].finish_reason == "tool_calls", r.choices[0].message.content
    (call,) = r.choices[0].message.tool_calls
    assert call.function.name == "get_current_weather"
    args = json.loads(call.function.arguments)
    assert set(args) == {"location"} and args["location"] in CITIES
    chunks = list(c.chat.completions.create(model=job.fine_tuned_model, stream=True, **ask))
    streamed = [tc for ch in chunks if ch.choices for tc in (ch.choices[0].delta.tool_calls or [])]
    assert [(tc.function.name, json.loads(tc.function.arguments)) for tc in streamed] == [
        ("get_current_weather", args)]
    base = c.chat.completions.create(model=str(served["tiny"]), **ask)
    assert base.choices[0].finish_reason != "tool_calls" and not base.choices[0].message.tool_calls


def test_vertex_ai_files_train_and_evaluate_as_a_job(served):
    """A Gemini supervised-tuning file (contents/parts, role model, systemInstruction) as training and validation
    file: the job trains on it and evaluates on it, as for OpenAI's chat format."""
    c = served["a"]

    def rows(offset: int) -> bytes:
        return "".join(json.dumps({"systemInstruction": {"parts": [{"text": "Answer with the code word."}]},
                                   "contents": [{"role": "user", "parts": [{"text": f"Code word {i}?"}]},
                                                {"role": "model", "parts": [{"text": f"Word {i}."}]}]}) + "\n"
                       for i in range(offset, offset + 12)).encode()

    train = c.files.create(file=("gemini_train.jsonl", rows(0)), purpose="fine-tune")
    valid = c.files.create(file=("gemini_valid.jsonl", rows(100)), purpose="fine-tune")
    job = c.fine_tuning.jobs.create(
        model=str(served["tiny"]), training_file=train.id, validation_file=valid.id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}},
        extra_body={"honing_config": {"dtype": "fp32", "micro_batch_size": 4}})
    job = wait_job(c, job.id)
    assert job.status == "succeeded", job.error
    ckpts = c.fine_tuning.jobs.checkpoints.list(job.id).data
    assert ckpts[0].step_number == 3 and ckpts[0].metrics.valid_loss > 0
    from honing.rundir import RunDir

    assert RunDir(served["tmp"] / "data" / "runs" / job.id).report_html.is_file()  # evaluated on the Gemini rows


def test_bad_file_fails_the_job_with_line_numbers(served):
    c, tmp = served["a"], served["tmp"]
    (tmp / "bad.jsonl").write_text(chat_rows(12, bad_lines={3: "{not json", 7: json.dumps({"messages": []})}))
    f = c.files.create(file=("bad.jsonl", (tmp / "bad.jsonl").read_bytes()), purpose="fine-tune")
    job = c.fine_tuning.jobs.create(model=str(served["tiny"]), training_file=f.id)
    job = wait_job(c, job.id, timeout=60)
    assert job.status == "failed" and job.error.code == "invalid_training_file"
    assert job.error.param == "training_file"
    assert "line 3" in job.error.message and "line 7" in job.error.message
    errors = [e for e in c.fine_tuning.jobs.list_events(job.id, limit=100).data if e.level == "error"]
    assert any("line 3" in e.message for e in errors) and any("line 7" in e.message for e in errors)


def test_bad_requests_are_openai_errors(served, trained):
    c = served["a"]
    with pytest.raises(openai.BadRequestError) as e:
        c.fine_tuning.jobs.create(model=str(served["tiny"]), training_file=trained["train"].id,
                                  hyperparameters={"n_epochs": -1})
    assert e.value.body["param"] == "hyperparameters.n_epochs"
    with pytest.raises(openai.BadRequestError):
        c.fine_tuning.jobs.create(model="no-such-model", training_file=trained["train"].id)
    with pytest.raises(openai.NotFoundError):
        c.fine_tuning.jobs.create(model=str(served["tiny"]), training_file="file-doesnotexist")
    with pytest.raises(openai.ConflictError):
        c.fine_tuning.jobs.cancel(trained["job"].id)  # already succeeded
    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=served["server"].base_url, api_key="hone-wrong", max_retries=0).models.list()


def test_idempotency_key_gives_one_job(served, trained):
    c = served["a"]
    kw = {"model": str(served["tiny"]), "training_file": trained["train"].id,
          "extra_headers": {"Idempotency-Key": "retry-123"}, "extra_body": {"honing_config": {"max_steps": 1}}}
    j1 = c.fine_tuning.jobs.create(**kw)
    j2 = c.fine_tuning.jobs.create(**kw)
    assert j1.id == j2.id
    assert c.fine_tuning.jobs.cancel(j1.id).status in ("cancelled", "running")
    wait_job(c, j1.id, timeout=120)
    assert c.fine_tuning.jobs.retrieve(j1.id).status == "cancelled"


def test_other_projects_ids_are_404_everywhere(served, trained):
    """Project beta names alpha's file, job, event, checkpoint and model ids: every endpoint answers exactly
    as for an id that does not exist."""
    b, job = served["b"], trained["job"]
    ckpt = f"{job.fine_tuned_model}:ckpt-step-2"
    file_id = trained["train"].id
    event_id = served["a"].fine_tuning.jobs.list_events(job.id).data[0].id
    calls = {
        "files.retrieve": lambda: b.files.retrieve(file_id),
        "files.content": lambda: b.files.content(file_id),
        "files.delete": lambda: b.files.delete(file_id),
        "jobs.retrieve": lambda: b.fine_tuning.jobs.retrieve(job.id),
        "jobs.cancel": lambda: b.fine_tuning.jobs.cancel(job.id),
        "jobs.pause": lambda: b.fine_tuning.jobs.pause(job.id),
        "jobs.resume": lambda: b.fine_tuning.jobs.resume(job.id),
        "jobs.events": lambda: b.fine_tuning.jobs.list_events(job.id),
        "jobs.events.after": lambda: b.fine_tuning.jobs.list_events(job.id, after=event_id),
        "jobs.checkpoints": lambda: b.fine_tuning.jobs.checkpoints.list(job.id),
        "jobs.list.after": lambda: b.fine_tuning.jobs.list(after=job.id),
        "files.list.after": lambda: b.files.list(after=file_id),
        "jobs.create(training_file)": lambda: b.fine_tuning.jobs.create(model=str(served["tiny"]),
                                                                        training_file=file_id),
        "models.retrieve(ckpt)": lambda: b.models.retrieve(ckpt),
        "models.delete(ckpt)": lambda: b.models.delete(ckpt),
        "chat(ckpt)": lambda: b.chat.completions.create(model=ckpt, messages=[{"role": "user", "content": "x"}]),
        "chat(model)": lambda: b.chat.completions.create(model=job.fine_tuned_model,
                                                         messages=[{"role": "user", "content": "x"}]),
        "models.retrieve(model)": lambda: b.models.retrieve(job.fine_tuned_model),
    }
    for name, call in calls.items():
        with pytest.raises(openai.NotFoundError) as e:
            call()
        assert set(e.value.body) >= {"message", "type", "param", "code"}, name
        assert "alpha" not in json.dumps(e.value.body).replace(job.fine_tuned_model or "", ""), name
    hdr = {"Authorization": f"Bearer {b.api_key}"}
    for path in (f"/files/{file_id}/validation", f"/fine_tuning/jobs/{job.id}/metrics",
                 f"/fine_tuning/jobs/{job.id}/report"):
        with pytest.raises(urllib.error.HTTPError) as e:
            _get_json(served["server"].base_url + path, hdr)
        assert e.value.code == 404, path
    assert [m.id for m in b.models.list() if m.id.startswith("ft:")] == []
    assert b.files.list().data == [] and b.fine_tuning.jobs.list().data == []


def test_missing_key_is_401_in_openai_shape(served):
    with pytest.raises(urllib.error.HTTPError) as e:
        _get_json(served["server"].base_url + "/models", {})
    assert e.value.code == 401
    body = json.loads(e.value.read())
    assert body["error"]["type"] == "authentication_error" and body["error"]["code"] == "missing_api_key"
    # health needs no key and answers quickly
    t = time.perf_counter()
    assert _get_json(served["server"].url + "/health", {})["status"] == "ok"
    assert time.perf_counter() - t < 2


def _get_json(url: str, headers: dict) -> dict:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as r:
        return json.loads(r.read())


def test_a_failed_release_gate_keeps_the_model_unpromoted_until_forced(served):
    """A job with a gate section: the end-of-training evaluation is judged by honing.lifecycle.gate; a
    tiny model trained 2 steps cannot beat zero-shot by 50 points, so the job succeeds without a servable
    model, says why, and only a forced promote makes one (the control: the same job promoted)."""
    c, tmp = served["a"], served["tmp"]
    (tmp / "g-train.jsonl").write_text(chat_rows(12))
    (tmp / "g-valid.jsonl").write_text(chat_rows(10))
    train = c.files.create(file=("g-train.jsonl", (tmp / "g-train.jsonl").read_bytes()), purpose="fine-tune")
    valid = c.files.create(file=("g-valid.jsonl", (tmp / "g-valid.jsonl").read_bytes()), purpose="fine-tune")
    job = c.fine_tuning.jobs.create(
        model=str(served["tiny"]), training_file=train.id, validation_file=valid.id, suffix="gated",
        method={"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 4}}},
        extra_body={"honing_config": {"max_steps": 2, "dtype": "fp32", "micro_batch_size": 4,
                                      "gate": {"margin": 0.5, "forgetting": False}}})
    job = wait_job(c, job.id)
    assert job.status == "succeeded" and job.fine_tuned_model is None
    messages = [e.message for e in c.fine_tuning.jobs.list_events(job.id, limit=100).data]
    assert any(m.startswith("Release gate failed, the model is not promoted") for m in messages)
    promote = f"{served['server'].base_url}/fine_tuning/jobs/{job.id}/promote"
    headers = {"Authorization": f"Bearer {served['key_a']}", "Content-Type": "application/json"}
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(promote, data=b"{}", headers=headers))
    assert refused.value.code == 409 and json.load(refused.value)["error"]["code"] == "gate_failed"
    with urllib.request.urlopen(urllib.request.Request(promote, data=b'{"force": true}', headers=headers)) as r:
        promoted = json.load(r)
    assert promoted["fine_tuned_model"].endswith(":gated:" + job.id)
    assert promoted["fine_tuned_model"] in [m.id for m in c.models.list().data]
