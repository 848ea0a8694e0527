"""Vertex AI (Gemini) tuning files: supervised (contents/parts/systemInstruction, role model) and preference
(contents + two scored completions) read into the internal types, malformed turns reported with line and
category, and the same files through the service's upload (the official openai client, in process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from honing.data.conversation import Message, PreferencePair, ToolCall
from honing.data.formats import load_examples
from honing.data.validate import validate_file


def turn(role: str, *texts: str) -> dict:
    return {"role": role, "parts": [{"text": t} for t in texts]}


SYSTEM = {"role": "system", "parts": [{"text": "You are a helpful botanist."}]}


def sft(i: int, **extra) -> str:
    return json.dumps({"systemInstruction": SYSTEM, "contents": [
        turn("user", f"Which family does plant number {i} belong to?"),
        turn("model", f"Plant number {i} is in the rose family.")], **extra})


def pref(i: int, **extra) -> str:
    return json.dumps({"system_instruction": {"parts": [{"text": "You are a chat bot."}]}, "contents": [
        turn("user", f"What is my favorite fruit, number {i}?")], "completions": [
        {"score": 1, "completion": turn("model", f"Apple number {i}!")},
        {"score": 0, "completion": turn("model", f"Your favorite fruit is apple {i}.")}], **extra})


PAD = [sft(100 + i) for i in range(10)]
PREF_PAD = [pref(100 + i) for i in range(10)]


def write(tmp_path: Path, lines: list[str], name: str = "vertex.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


WEATHER_DECL = {"name": "get_weather", "description": "Weather of a city",
                "parameters": {"type": "OBJECT", "properties": {"city": {"type": "STRING"}}, "required": ["city"]}}


def test_documented_supervised_file_reads_as_conversations(tmp_path):
    multi_turn = json.dumps({"contents": [
        turn("user", "Hi"), turn("model", "Hello! How can I help?"), turn("user", "Name a ", "rose."),
        turn("model", "Rosa ", "canina.")]})
    calling = json.dumps({"contents": [
        turn("user", "Weather in Oslo?"),
        {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"temp": 3}}}]},
        turn("model", "It is 3 degrees in Oslo.")], "tools": [{"functionDeclarations": [WEATHER_DECL]}]})
    path = write(tmp_path, [sft(1), multi_turn, calling, *PAD])
    report = validate_file(path)
    assert report.format == "vertex" and report.lines() == [(2, "no_system_message"), (3, "no_system_message")]
    first, second, third = load_examples(path)[:3]
    assert first.messages == (Message("system", "You are a helpful botanist."),
                              Message("user", "Which family does plant number 1 belong to?"),
                              Message("assistant", "Plant number 1 is in the rose family."))
    assert second.messages[2].content == "Name a rose." and second.messages[3].content == "Rosa canina."
    assert third.messages[1].tool_calls == (ToolCall("call_1", "get_weather", '{"city": "Oslo"}'),)
    assert third.messages[2] == Message("tool", '{"temp": 3}', tool_call_id="call_1")
    # OpenAPI's upper-case types become JSON Schema's, so the arguments are checked against them
    assert third.tools[0]["function"]["parameters"]["properties"]["city"] == {"type": "string"}


def test_documented_preference_file_reads_as_pairs(tmp_path):
    path = write(tmp_path, PREF_PAD)
    report = validate_file(path)
    assert report.format == "vertex_preference" and report.ok and report.lines() == []
    pair = load_examples(path)[0]
    assert pair == PreferencePair((Message("system", "You are a chat bot."),
                                   Message("user", "What is my favorite fruit, number 100?")),
                                  "Apple number 100!", "Your favorite fruit is apple 100.")
    # the order of the completions does not matter, the scores do
    swapped = json.loads(pref(1))
    swapped["completions"].reverse()
    assert load_examples(write(tmp_path, [json.dumps(swapped)], "s.jsonl"))[0].chosen == "Apple number 1!"


def sft_with(*contents, **extra) -> str:
    return json.dumps({"systemInstruction": SYSTEM, "contents": list(contents), **extra})


def pref_with(completions, contents=None) -> str:
    return json.dumps({"contents": contents or [turn("user", "Fruit?")], "completions": completions})


GOOD_C = {"score": 1, "completion": turn("model", "Apple!")}
BAD_C = {"score": 0, "completion": turn("model", "Pear.")}
CASES = [
    ("model_turn_without_parts", [sft_with(turn("user", "Hi"), {"role": "model", "parts": []})], PAD,
     [(1, "empty_parts")]),
    ("model_turn_parts_missing", [sft_with(turn("user", "Hi"), {"role": "model"})], PAD, [(1, "empty_parts")]),
    ("part_without_text", [sft_with(turn("user", "Hi"), {"role": "model", "parts": [{}]})], PAD,
     [(1, "missing_content")]),
    ("text_not_a_string", [sft_with(turn("user", "Hi"), {"role": "model", "parts": [{"text": 4}]})], PAD,
     [(1, "invalid_content")]),
    ("image_part", [sft_with({"role": "user", "parts": [{"fileData": {"mimeType": "image/png", "fileUri": "gs://x"}}]},
                             turn("model", "A cat."))], PAD, [(1, "invalid_content")]),
    ("unknown_role", [sft_with(turn("assistant", "Hi"), turn("model", "Hello there."))], PAD,
     [(1, "unknown_role")]),
    ("missing_role", [sft_with({"parts": [{"text": "Hi"}]}, turn("model", "Hello there."))], PAD,
     [(1, "missing_role")]),
    ("blank_model_text", [sft_with(turn("user", "Hi"), turn("model", "  "))], PAD, [(1, "empty_content")]),
    ("ends_with_user", [sft_with(turn("user", "Hi"), turn("model", "Hello there."), turn("user", "Bye"))], PAD,
     [(1, "not_ending_with_assistant")]),
    ("no_model_turn", [sft_with(turn("user", "Hi"))], PAD, [(1, "no_assistant_turn")]),
    ("contents_not_a_list", [json.dumps({"contents": "Hi"})], PAD, [(1, "invalid_messages")]),
    ("contents_empty", [json.dumps({"contents": []})], PAD, [(1, "empty_messages")]),
    ("system_without_parts", [json.dumps({"systemInstruction": {"role": "system"},
                                          "contents": [turn("user", "Hi"), turn("model", "Hello there.")]})], PAD,
     [(1, "empty_parts")]),
    ("unknown_turn_key", [sft_with(turn("user", "Hi"), {**turn("model", "Hello there."), "weight": 1})], PAD,
     [(1, "unknown_key")]),
    ("unknown_top_level_key", [sft(1, generationConfig={})], PAD, [(1, "unknown_key")]),
    ("call_arguments_mismatch", [sft_with(
        turn("user", "Weather?"), {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {}}}]},
        tools=[{"functionDeclarations": [WEATHER_DECL]}])], PAD, [(1, "tool_arguments_mismatch")]),
    ("later_line", PAD[:3], [sft_with(turn("user", "Hi"), {"role": "model", "parts": []}), *PAD[3:]],
     [(4, "empty_parts")]),
    ("pref_one_completion", [pref_with([GOOD_C])], PREF_PAD, [(1, "invalid_field")]),
    ("pref_same_scores", [pref_with([GOOD_C, {**BAD_C, "score": 1}])], PREF_PAD, [(1, "invalid_field")]),
    ("pref_score_not_0_or_1", [pref_with([GOOD_C, {**BAD_C, "score": 0.5}])], PREF_PAD, [(1, "invalid_field")]),
    ("pref_completion_without_parts", [pref_with([GOOD_C, {"score": 0, "completion": {"role": "model"}}])],
     PREF_PAD, [(1, "empty_parts")]),
    ("pref_completion_user_role", [pref_with([GOOD_C, {"score": 0, "completion": turn("user", "Pear.")}])],
     PREF_PAD, [(1, "unknown_role")]),
    ("pref_contents_end_with_model", [pref_with([GOOD_C, BAD_C], [turn("user", "Fruit?"), turn("model", "Hm.")])],
     PREF_PAD, [(1, "prompt_not_ending_with_user")]),
    ("pref_identical", [pref_with([GOOD_C, {**GOOD_C, "score": 0}])], PREF_PAD, [(1, "identical_pair")]),
]


@pytest.mark.parametrize("bad,rest,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_vertex_records_report_line_and_category(tmp_path, bad, rest, expected):
    report = validate_file(write(tmp_path, [*bad, *rest]))
    assert report.lines() == expected
    assert all(p.message for p in report.problems)


def test_model_turn_without_parts_says_the_reply_is_missing(tmp_path):
    report = validate_file(write(tmp_path, [CASES[0][1][0], *PAD]))
    assert report.problems[0].message == "turn 2 has no parts (the model's reply is missing)"


def test_vertex_renders_with_the_chat_template(smol_tokenizer, tmp_path):
    from honing.data.render import render_conversation

    ex = load_examples(write(tmp_path, [sft(1)]))[0]
    rendered = render_conversation(smol_tokenizer, ex)
    trained = smol_tokenizer.decode([t for t, m in zip(rendered.input_ids, rendered.loss_mask) if m])
    assert trained == "Plant number 1 is in the rose family.<|im_end|>"


def test_vertex_file_through_the_service_upload(tmp_path):
    """The upload validates with the same code: a clean Vertex file is ok, a broken one names line and category."""
    from fastapi.testclient import TestClient
    from openai import OpenAI

    from honing.serve.app import create_app
    from honing.serve.settings import Settings

    app = create_app(Settings(data_dir=tmp_path / "data", no_auth=True, embedded_worker=False))
    with TestClient(app) as http:
        client = OpenAI(base_url="http://testserver/v1", api_key="none", http_client=http)
        good = client.files.create(file=write(tmp_path, PAD, "good.jsonl").open("rb"), purpose="fine-tune")
        bad_lines = [*PAD[:4], sft_with(turn("user", "Hi"), {"role": "model", "parts": []}), *PAD[4:]]
        bad = client.files.create(file=write(tmp_path, bad_lines, "bad.jsonl").open("rb"), purpose="fine-tune")
        reports = [http.get(f"/v1/files/{f.id}/validation").json() for f in (good, bad)]
    assert reports[0]["ok"] and reports[0]["format"] == "vertex" and reports[0]["stats"]["examples"] == 10
    assert not reports[1]["ok"]
    assert [(p["line"], p["category"]) for p in reports[1]["problems"]] == [(5, "empty_parts")]


def test_a_preference_pair_shows_both_replies_marked(smol_tokenizer, tmp_path):
    from honing.data.render import TRAINED_CLOSE, TRAINED_OPEN, marked_renderings

    pair = load_examples(write(tmp_path, [pref(1)]))[0]
    (chosen_label, chosen), (rejected_label, rejected) = marked_renderings(smol_tokenizer, pair)
    assert (chosen_label, rejected_label) == ("chosen", "rejected")
    assert chosen.endswith(f"{TRAINED_OPEN}Apple number 1!<|im_end|>{TRAINED_CLOSE}\n")
    assert rejected.endswith(f"{TRAINED_OPEN}Your favorite fruit is apple 1.<|im_end|>{TRAINED_CLOSE}\n")
    assert chosen.count(TRAINED_OPEN) == 1 and "You are a chat bot." in chosen.split(TRAINED_OPEN)[0]
