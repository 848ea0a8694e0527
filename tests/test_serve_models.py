"""Which base models a client may name (issue 22 part 6): the catalog and the operator's list (`hone serve
--models NAME=PATH[@PROJECT,...]`), nothing else. A path is refused with the same answer whether it exists
inside the data dir, outside it, or nowhere, so the API is no oracle on the server's files, and an operator's
model is named, never shown by its path."""

from __future__ import annotations

import json

import pytest
from serve_helpers import chat_rows

from honing.errors import ConfigError
from honing.serve.settings import Settings, parse_base_models


def _app(settings: Settings):
    from fastapi.testclient import TestClient

    from honing.serve.app import create_app

    return TestClient(create_app(settings))


def _upload(http) -> str:
    r = http.post("/v1/files", files={"file": ("t.jsonl", chat_rows(12).encode())}, data={"purpose": "fine-tune"})
    assert r.status_code == 200, r.text
    return r.json()["id"]


def _create(http, file_id: str, model: str):
    return http.post("/v1/fine_tuning/jobs", json={"model": model, "training_file": file_id})


def test_paths_are_refused_the_same_whatever_is_on_disk(tmp_path, tiny_llama_dir):
    settings = Settings(data_dir=tmp_path / "data", no_auth=True, embedded_worker=False)
    settings.data_dir.mkdir(parents=True)
    inside = settings.runs_dir / "ftjob-other" / "final"  # another project's full fine-tune, say
    inside.mkdir(parents=True)
    (inside / "config.json").write_text("{}")
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    candidates = [str(inside), str(tiny_llama_dir), str(gguf), str(tmp_path / "nothing-here"), "../../etc",
                  str(settings.data_dir / "honing.db"), "./tiny-llama"]
    with _app(settings) as http:
        file_id = _upload(http)
        answers, chats = set(), set()
        for model in candidates:
            r = _create(http, file_id, model)
            err = r.json()["error"]
            assert r.status_code == 400 and err["param"] == "model" and err["code"] == "model_not_available", model
            answers.add(err["message"].replace(model, "MODEL"))
            c = http.post("/v1/chat/completions", json={"model": model, "messages": [{"role": "user",
                                                                                        "content": "hi"}]})
            assert c.status_code == 404, (model, c.text)
            chats.add(c.json()["error"]["message"].replace(model, "MODEL"))
        assert len(answers) == 1 and len(chats) == 1, (answers, chats)
        assert "smollm2-135m-instruct" in answers.pop()  # it says what is available
        assert http.get("/v1/fine_tuning/jobs").json()["data"] == []


def test_the_operators_models_by_name_and_project(tmp_path, tiny_llama_dir):
    from honing.serve.db import Job
    from honing.serve.worker import Worker

    offered = parse_base_models([f"tiny={tiny_llama_dir}", f"private={tiny_llama_dir}@other,third"])
    assert offered == {"tiny": (str(tiny_llama_dir), None), "private": (str(tiny_llama_dir), ("other", "third"))}
    settings = Settings(data_dir=tmp_path / "data", no_auth=True, embedded_worker=False, base_models=offered)
    settings.data_dir.mkdir(parents=True)
    with _app(settings) as http:
        file_id = _upload(http)
        r = _create(http, file_id, "tiny")
        assert r.status_code == 200, r.text
        job = r.json()
        assert job["model"] == "tiny"
        refused = _create(http, file_id, "private")  # offered to other projects only: as if it did not exist
        unknown = _create(http, file_id, "no-such-model")
        assert refused.status_code == unknown.status_code == 400
        assert refused.json()["error"]["message"].replace("private", "X") == \
            unknown.json()["error"]["message"].replace("no-such-model", "X")
        listed = http.get("/v1/models").json()
        ids = [m["id"] for m in listed["data"]]
        assert "tiny" in ids and "private" not in ids
        assert str(tiny_llama_dir) not in json.dumps(listed) + json.dumps(job)  # the path never shows
        worker = Worker(settings, http.app.state.Session)
        with http.app.state.Session() as s:
            row = s.get(Job, job["id"])
        assert worker.train_config(row).model == str(tiny_llama_dir)  # training loads the operator's path


@pytest.mark.parametrize("item, says", [
    ("tiny", "expected NAME=PATH"),
    ("a/b=/x", "a name, not a path"),
    ("tiny=/no/such/dir", "is not a model directory"),
    ("tiny={dir}@", "no project after '@'"),
])
def test_bad_model_offers_are_refused_at_start(item, says, tiny_llama_dir):
    with pytest.raises(ConfigError, match=says):
        parse_base_models([item.format(dir=tiny_llama_dir)])
