"""Stored chat completions (``store: true``) through the official ``openai`` client against a real
``hone serve`` (SQLite, API keys; PostgreSQL when installed): list / retrieve / update / delete and
messages.list unchanged, projects isolated, feedback, and the per-project retention (a backdated row and
a fake clock)."""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import pytest
from serve_helpers import create_key, hone, start_server

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.slow  # the real embedded model answers every chat
MODEL = "smollm2-135m-instruct"  # the embedded model: chat needs no job
ASK = {"model": MODEL, "max_tokens": 3, "temperature": 0}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stored")
    server = start_server(tmp, no_auth=False)
    keys = {p: create_key(server.data_dir, p) for p in ("alpha", "beta")}
    yield server, keys
    server.stop()


def client(server, key) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=300)


@dataclass
class Reply:
    status_code: int
    text: str

    def json(self):
        return json.loads(self.text)


def http(server, key, method, path, json_body=None) -> Reply:
    """A plain HTTP call (Honing's extensions have no method in the openai client)."""
    req = urllib.request.Request(server.base_url + path, method=method,
                                 data=None if json_body is None else json.dumps(json_body).encode(),
                                 headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return Reply(r.status, r.read().decode())
    except urllib.error.HTTPError as e:
        return Reply(e.code, e.read().decode())


def user(text: str) -> list[dict]:
    return [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": text}]


def test_official_client_lists_retrieves_updates_and_deletes(served):
    server, keys = served
    c = client(server, keys["alpha"])
    made = [c.chat.completions.create(messages=user(f"Name a colour ({i})."), store=True,
                                      metadata={"topic": "x" if i % 2 == 0 else "y", "i": str(i)}, **ASK)
            for i in range(3)]
    unstored = c.chat.completions.create(messages=user("not kept"), **ASK)
    # A streamed answer is stored too; the client did not ask for usage, so no usage chunk reaches it.
    chunks = list(c.chat.completions.create(messages=user("Streamed."), store=True, stream=True, **ASK))
    assert all(ch.usage is None for ch in chunks) and chunks[-1].choices
    streamed_id, streamed_text = chunks[0].id, "".join(ch.choices[0].delta.content or "" for ch in chunks)
    ids = [m.id for m in made] + [streamed_id]

    listed = c.chat.completions.list()
    assert [x.id for x in listed.data] == ids  # oldest first, as OpenAI's default order=asc
    assert unstored.id not in ids and listed.has_more is False
    assert [x.id for x in c.chat.completions.list(order="desc").data] == ids[::-1]
    assert [x.id for x in c.chat.completions.list(limit=1)] == ids  # auto-paging follows after=last id
    assert [x.id for x in c.chat.completions.list(metadata={"topic": "x"}).data] == [ids[0], ids[2]]
    assert [x.id for x in c.chat.completions.list(model=MODEL, after=ids[1]).data] == ids[2:]
    assert c.chat.completions.list(model="no-such-model").data == []

    got = c.chat.completions.retrieve(made[1].id)
    assert got.choices[0].message.content == made[1].choices[0].message.content
    assert got.usage == made[1].usage and got.model == MODEL and got.created == made[1].created
    assert got.metadata == {"topic": "y", "i": "1"} and got.model_extra["feedback"] is None
    s = c.chat.completions.retrieve(streamed_id)
    assert s.choices[0].message.content == streamed_text and s.usage.completion_tokens >= 1

    msgs = c.chat.completions.messages.list(made[0].id)
    assert [(m.role, m.content) for m in msgs.data] == [("system", "Answer briefly."),
                                                        ("user", "Name a colour (0).")]
    assert [m.id for m in msgs.data] == [f"{made[0].id}-0", f"{made[0].id}-1"]
    assert [m.content for m in c.chat.completions.messages.list(made[0].id, order="desc", limit=1)] == [
        "Name a colour (0).", "Answer briefly."]

    upd = c.chat.completions.update(made[0].id, metadata={"topic": "z"})
    assert upd.metadata == {"topic": "z"}
    assert [x.id for x in c.chat.completions.list(metadata={"topic": "x"}, limit=1)] == [ids[2]]
    # Keys SQLite's JSON paths cannot take (quotes, non-ASCII, brackets) are matched too.
    c.chat.completions.update(made[1].id, metadata={'ü [x]': "q", 'a"b': "r", "topic": "y"})
    assert [x.id for x in c.chat.completions.list(metadata={'ü [x]': "q", 'a"b': "r", "topic": "y"})] == [ids[1]]
    assert c.chat.completions.list(metadata={'ü [x]': "q", "topic": "x"}).data == []

    d = c.chat.completions.delete(made[2].id)
    assert (d.id, d.deleted, d.object) == (made[2].id, True, "chat.completion.deleted")
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.retrieve(made[2].id)
    with pytest.raises(openai.BadRequestError):  # OpenAI's metadata limits: 16 pairs, 64-char keys
        c.chat.completions.update(made[0].id, metadata={"k" * 65: "v"})


def test_tool_calls_are_stored_streamed_or_not(served, tmp_path):
    from test_serve_tools import EXPECTED, SHOT, WEATHER

    from honing.lifecycle.traffic import build_dataset
    from honing.serve.db import make_engine, sessions
    from honing.serve.stored import traffic

    server, keys = served
    c = client(server, keys["alpha"])
    ask = {"model": MODEL, "messages": SHOT, "tools": [WEATHER], "temperature": 0, "max_tokens": 40,
           "store": True, "metadata": {"case": "tools"}}
    whole = c.chat.completions.create(**ask)
    chunks = list(c.chat.completions.create(stream=True, **ask))  # read to the end: stored at [DONE]
    streamed_id = chunks[0].id
    for cid in (whole.id, streamed_id):
        got = c.chat.completions.retrieve(cid).choices[0]
        assert got.finish_reason == "tool_calls" and got.message.content is None
        assert json.loads(got.message.tool_calls[0].function.arguments) == EXPECTED
    msgs = c.chat.completions.messages.list(whole.id, limit=100).data
    assert [m.role for m in msgs] == [m["role"] for m in SHOT] and msgs[2].model_extra["tool_call_id"] == "call_0"
    # A correction of a tool-using answer trains with the request's tools.
    http(server, keys["alpha"], "POST", f"/chat/completions/{whole.id}/feedback",
         json_body={"correction": "Please tell me whether you want Celsius or Fahrenheit."})
    engine = make_engine(f"sqlite:///{server.data_dir / 'honing.db'}")
    with sessions(engine)() as s:
        rows = traffic(s, "alpha", meta={"case": "tools"})
    engine.dispose()
    build_dataset(rows, "sft", tmp_path / "t.jsonl", min_examples=1)
    rec = json.loads((tmp_path / "t.jsonl").read_text())
    assert rec["tools"] == [WEATHER] and rec["messages"][:-1] == SHOT


def test_another_projects_key_sees_nothing(served):
    server, keys = served
    a, b = client(server, keys["alpha"]), client(server, keys["beta"])
    mine = a.chat.completions.create(messages=user("secret"), store=True, **ASK)
    assert mine.id not in [x.id for x in b.chat.completions.list()]
    for call in (lambda: b.chat.completions.retrieve(mine.id),
                 lambda: b.chat.completions.messages.list(mine.id),
                 lambda: b.chat.completions.update(mine.id, metadata={"x": "y"}),
                 lambda: b.chat.completions.delete(mine.id),
                 lambda: b.chat.completions.list(after=mine.id)):
        with pytest.raises(openai.NotFoundError):
            call()
    r = http(server, keys["beta"], "POST", f"/chat/completions/{mine.id}/feedback", json_body={"rating": "down"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "chat_completion_not_found"
    assert a.chat.completions.retrieve(mine.id).model_extra["feedback"] is None  # untouched


def test_feedback_rates_and_corrects(served):
    server, keys = served
    c = client(server, keys["alpha"])
    done = c.chat.completions.create(messages=user("What is 2+2?"), store=True, **ASK)
    path = f"/chat/completions/{done.id}/feedback"
    r = http(server, keys["alpha"], "POST", path, json_body={"rating": "up", "note": "fine"})
    assert r.status_code == 200 and r.json()["feedback"]["rating"] == "up"
    r = http(server, keys["alpha"], "POST", path, json_body={"correction": "  4  "})
    fb = r.json()["feedback"]
    assert (fb["rating"], fb["correction"], fb["note"]) == ("down", "4", None)  # a correction is a thumbs down
    assert c.chat.completions.retrieve(done.id).model_extra["feedback"]["correction"] == "4"
    ids = [x.id for x in c.chat.completions.list(extra_query={"rated": "rated"}).data]
    assert done.id in ids and done.id not in [x.id for x in c.chat.completions.list(
        extra_query={"rated": "unrated"}, limit=100).data]
    for bad, param in (({}, "rating"), ({"rating": "meh"}, "rating"), ({"rating": "up", "extra": 1}, "extra")):
        r = http(server, keys["alpha"], "POST", path, json_body=bad)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_retention_hides_and_sweeps_expired_rows(served, tmp_path):
    from honing.serve.db import make_engine, sessions
    from honing.serve.stored import sweep

    server, keys = served
    c = client(server, keys["beta"])
    old, new = (c.chat.completions.create(messages=user(t), store=True, **ASK) for t in ("old", "new"))
    with sqlite3.connect(server.data_dir / "honing.db") as db:  # a row written three days ago
        db.execute("UPDATE stored_completions SET created_ts = created_ts - 3 * 86400 WHERE id = ?", (old.id,))
    assert {old.id, new.id} <= {x.id for x in c.chat.completions.list()}  # no retention: kept forever
    r = http(server, keys["beta"], "POST", "/project/settings", json_body={"store_retention_days": 2})
    assert r.json() == {"object": "project.settings", "project": "beta", "store_retention_days": 2}
    assert http(server, keys["alpha"], "GET", "/project/settings").json()["store_retention_days"] is None
    with pytest.raises(openai.NotFoundError):  # setting it swept the expired row at once
        c.chat.completions.retrieve(old.id)
    assert c.chat.completions.retrieve(new.id).id == new.id
    with sqlite3.connect(server.data_dir / "honing.db") as db:
        assert db.execute("SELECT count(*) FROM stored_completions WHERE id = ?", (old.id,)).fetchone() == (0,)
    # The sweeper's clock, three days on: every row of beta goes; alpha (no retention) keeps all of its own.
    engine = make_engine(f"sqlite:///{server.data_dir / 'honing.db'}")
    alpha_before = len(client(server, keys["alpha"]).chat.completions.list(limit=100).data)
    assert sweep(sessions(engine), clock=lambda: time.time() + 3 * 86400) >= 1
    engine.dispose()
    assert c.chat.completions.list().data == []
    assert len(client(server, keys["alpha"]).chat.completions.list(limit=100).data) == alpha_before
    r = http(server, keys["beta"], "POST", "/project/settings", json_body={"store_retention_days": 0})
    assert r.status_code == 400 and r.json()["error"]["param"] == "store_retention_days"


def test_deleting_a_project_deletes_its_stored_completions(served):
    server, keys = served
    gamma = create_key(server.data_dir, "gamma")
    kept = client(server, keys["alpha"]).chat.completions.create(messages=user("kept"), store=True, **ASK)
    gone = client(server, gamma).chat.completions.create(messages=user("gone"), store=True, **ASK)
    http(server, gamma, "POST", f"/chat/completions/{gone.id}/feedback", json_body={"rating": "up"})
    args = ["serve", "projects", "delete", "gamma", "--data-dir", str(server.data_dir)]
    assert hone(*args, check=False).returncode != 0  # without --yes nothing happens
    out = hone(*args, "--yes").stdout
    assert "1 stored_completions" in out and "1 api_keys" in out, out
    with sqlite3.connect(server.data_dir / "honing.db") as db:
        rows = db.execute("SELECT id FROM stored_completions WHERE project = 'gamma'").fetchall()
    assert rows == []
    with pytest.raises(openai.AuthenticationError):  # its key went too
        client(server, gamma).chat.completions.list()
    assert client(server, keys["alpha"]).chat.completions.retrieve(kept.id).id == kept.id


def test_stored_completions_on_postgres(tmp_path, pg_cluster):
    server = start_server(tmp_path, db_url=pg_cluster.create_database("stored"))
    try:
        c = client(server, "none")
        made = [c.chat.completions.create(messages=user(f"q{i}"), store=True, metadata={"k": str(i % 2)},
                                          **ASK) for i in range(3)]
        assert [x.id for x in c.chat.completions.list(metadata={"k": "0"}).data] == [made[0].id, made[2].id]
        c.chat.completions.update(made[0].id, metadata={'a"b': "0", "k": "0"})
        assert [x.id for x in c.chat.completions.list(metadata={'a"b': "0"})] == [made[0].id]
        assert c.chat.completions.update(made[1].id, metadata={"k": "0"}).metadata == {"k": "0"}
        assert c.chat.completions.delete(made[0].id).deleted
        assert [x.id for x in c.chat.completions.list(order="desc", metadata={"k": "0"})] == [
            made[2].id, made[1].id]
    finally:
        server.stop()
