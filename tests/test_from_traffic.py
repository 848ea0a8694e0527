"""Feedback on stored completions becomes training data: the three kinds record by record (golden), the
curation (duplicates, near-duplicates, eval leakage, invalid records traced to their completion id),
validation before anything appears, and the whole path on a real server: the official client stores
answers, feedback is given over HTTP, `hone data from-traffic` and POST /v1/files/from_traffic build the
file, `hone data validate` accepts it and the trainer's reader reads it."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from honing.data.conversation import Conversation, LabeledExample, PreferencePair
from honing.data.formats import load_examples
from honing.errors import DataError
from honing.lifecycle.traffic import Traffic, build_dataset

SYSTEM = {"role": "system", "content": "Answer with one word."}


def t(i: int, question: str, answer: str, rating=None, correction=None, **kw) -> Traffic:
    return Traffic(id=f"chatcmpl-{i}", model="m", answer=answer, rating=rating, correction=correction,
                   messages=(SYSTEM, {"role": "user", "content": question}), **kw)


TRAFFIC = [
    t(1, "Colour of the sky?", "Green.", "down", "Blue."),
    t(2, "Colour of grass?", "Green.", "up"),
    t(3, "Colour of snow?", "Black.", "down"),
    t(4, "Colour of coal?", "Black.", None, "Black."),  # a "correction" equal to the answer: no pair
]


def lines(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_three_kinds_record_by_record(tmp_path):
    sky = [SYSTEM, {"role": "user", "content": "Colour of the sky?"}]
    s = build_dataset(TRAFFIC, "sft", tmp_path / "sft.jsonl", min_examples=1)
    assert [r["messages"] for r in lines(tmp_path / "sft.jsonl")] == [
        [*sky, {"role": "assistant", "content": "Blue."}],
        [SYSTEM, {"role": "user", "content": "Colour of coal?"}, {"role": "assistant", "content": "Black."}]]
    assert (s.stored_completions, s.kept, s.validation["ok"]) == (4, 2, True)
    build_dataset(TRAFFIC, "sft", tmp_path / "sft2.jsonl", min_examples=1, approved=True)
    assert len(lines(tmp_path / "sft2.jsonl")) == 3  # + the thumbs-up answer

    build_dataset(TRAFFIC, "kto", tmp_path / "kto.jsonl", min_examples=1)
    kto = lines(tmp_path / "kto.jsonl")
    assert [(r["id"], r["completion"][0]["content"], r["label"]) for r in kto] == [
        ("chatcmpl-1", "Green.", False), ("chatcmpl-1", "Blue.", True), ("chatcmpl-2", "Green.", True),
        ("chatcmpl-3", "Black.", False)]
    assert kto[0]["prompt"] == sky and kto[0]["metadata"] == {"source": "traffic", "model": "m"}

    build_dataset(TRAFFIC, "dpo", tmp_path / "dpo.jsonl", min_examples=1)
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in lines(tmp_path / "dpo.jsonl")] == [
        (sky, "Blue.", "Green.")]

    # The trainer's reader takes each file as its kind.
    assert {type(e) for e in load_examples(tmp_path / "sft.jsonl")} == {Conversation}
    assert {type(e) for e in load_examples(tmp_path / "kto.jsonl")} == {LabeledExample}
    assert {type(e) for e in load_examples(tmp_path / "dpo.jsonl")} == {PreferencePair}


def test_curation_drops_duplicates_leaks_and_invalid_records(tmp_path):
    traffic = [*TRAFFIC,
               t(5, "Colour of the sky?", "Red.", "down", "Blue."),  # same example as 1 once corrected
               t(6, "colour of the  SKY", "Red.", "down", "blue"),  # the same after normalizing
               t(7, "Colour of blood?", "Red.", "down", "Red, of course."),
               Traffic(id="chatcmpl-8", model="m", answer="x", correction="y",  # no user turn at all
                       messages=({"role": "user", "content": "   "},))]
    evals = tmp_path / "eval.jsonl"
    evals.write_text(json.dumps({"messages": [{"role": "user", "content": "Colour of blood?"},
                                              {"role": "assistant", "content": "Red."}]}) + "\n")
    out = tmp_path / "sft.jsonl"
    s = build_dataset(traffic, "sft", out, eval_path=evals, min_examples=1)
    assert (s.records, s.duplicates, s.near_duplicates, s.leaked, s.invalid, s.kept) == (6, 1, 1, 1, 1, 2)
    assert [p["id"] for p in s.problems] == ["chatcmpl-8"] and s.problems[0]["category"] == "empty_content"
    assert [r["id"] for r in lines(out)] == ["chatcmpl-1", "chatcmpl-4"]


def test_nothing_is_written_unless_it_validates(tmp_path, smol_tokenizer):
    out = tmp_path / "sft.jsonl"
    with pytest.raises(DataError, match="2 example.* need at least 10"):
        build_dataset(TRAFFIC, "sft", out)  # the validator's minimum, by default
    assert not out.exists()
    out.write_text("previous\n")
    with pytest.raises(DataError, match="fails validation .*too_long"):
        build_dataset(TRAFFIC, "sft", out, tokenizer=smol_tokenizer, max_length=8, min_examples=1)
    assert out.read_text() == "previous\n" and [p.name for p in tmp_path.iterdir()] == ["sft.jsonl"]
    with pytest.raises(DataError, match="kind: 'ppo'"):
        build_dataset(TRAFFIC, "ppo", out)


# ------------------------------------------------------------------------------------ on a real server
def _post(server, path: str, body: dict, key: str = "none") -> tuple[int, dict]:
    req = urllib.request.Request(server.base_url + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.slow
def test_from_traffic_on_a_served_model(tmp_path):
    openai = pytest.importorskip("openai")
    from serve_helpers import create_key, hone, start_server

    server = start_server(tmp_path, no_auth=False)
    try:
        key, other = create_key(server.data_dir, "shop"), create_key(server.data_dir, "rival")
        c = openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=300)
        made = [c.chat.completions.create(model="smollm2-135m-instruct", max_tokens=3, temperature=0, store=True,
                                          metadata={"route": "faq" if i < 2 else "other"},
                                          messages=[SYSTEM, {"role": "user", "content": f"Question {i}?"}])
                for i in range(4)]
        for i, m in enumerate(made):
            status, _ = _post(server, f"/chat/completions/{m.id}/feedback",
                              {"rating": "down", "correction": f"Answer {i}."} if i % 2 == 0 else {"rating": "up"},
                              key)
            assert status == 200

        out = tmp_path / "dpo.jsonl"
        r = hone("data", "from-traffic", str(out), "--project", "shop", "--kind", "dpo", "--data-dir",
                 str(server.data_dir), "--metadata", "route=faq", "--min-examples", "1", "--model", "none")
        assert "1 dpo example(s)" in r.stdout, r.stdout + r.stderr  # corrected: 0 and 2, but 2 is route=other
        pair = lines(out)
        assert [(p["id"], p["chosen"], p["rejected"]) for p in pair] == [
            (made[0].id, "Answer 0.", made[0].choices[0].message.content)]
        # `hone data validate` agrees, but for the minimum size (one pair; --min-examples 1 allowed it here)
        report = json.loads(hone("data", "validate", str(out), "--model", "none", "--json", check=False).stdout)
        assert report["counts"] == {"too_few_examples": 1} and report["stats"]["examples"] == 1
        r = hone("data", "from-traffic", str(tmp_path / "none.jsonl"), "--project", "rival", "--data-dir",
                 str(server.data_dir), "--model", "none", check=False)
        assert r.returncode != 0 and "0 example(s) left of 0" in r.stderr + r.stdout
        assert not (tmp_path / "none.jsonl").exists()

        # The same as an endpoint: a fine-tune file of the project, with its validation.
        status, body = _post(server, "/files/from_traffic", {"kind": "kto", "min_examples": 1}, key)
        assert status == 200, body
        f = body["file"]
        assert (f["purpose"], body["summary"]["kept"], body["summary"]["path"]) == ("fine-tune", 6, None)
        rows = [json.loads(x) for x in c.files.content(f["id"]).text.splitlines()]
        assert sorted(r["label"] for r in rows) == [False, False, True, True, True, True]
        with pytest.raises(openai.NotFoundError):
            openai.OpenAI(base_url=server.base_url, api_key=other, max_retries=0).files.retrieve(f["id"])
        status, body = _post(server, "/files/from_traffic", {"kind": "sft"}, other)
        assert status == 400 and "need at least 10" in body["error"]["message"]
    finally:
        server.stop()
