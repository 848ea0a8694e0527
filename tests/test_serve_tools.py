"""Tool calls through POST /v1/chat/completions with the official openai client: ``tools`` / ``tool_choice``
in, ``message.tool_calls`` and ``finish_reason: "tool_calls"`` out, streamed and not. The model is the real
embedded SmolLM2-135M-Instruct, shown one earlier call in the conversation (its template has no tools, so
the prompt uses Honing's fallback format, the one training uses); the app runs in process."""

from __future__ import annotations

import json

import pytest

from honing.serve.chat import _answer, _held_back

WEATHER = {"type": "function", "function": {
    "name": "get_current_weather", "description": "Get the current weather",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"},
                                                    "format": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["location", "format"]}}}
# Two earlier exchanges show the call format: the model repeats the pattern for a new city (greedy; with
# one, it skips to a made-up <tool_response>).
def _exchange(i: int, city: str) -> list[dict]:
    args = json.dumps({"location": city, "format": "celsius"})
    return [{"role": "user", "content": f"What is the weather in {city}?"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": f"call_{i}", "type": "function", "function": {
                "name": "get_current_weather", "arguments": args}}]},
            {"role": "tool", "tool_call_id": f"call_{i}", "content": '{"temperature": 20}'},
            {"role": "assistant", "content": f"It is 20 degrees Celsius in {city}."}]


SHOT = [*_exchange(0, "Paris, France"), *_exchange(1, "Tokyo, Japan"),
        {"role": "user", "content": "What is the weather in Oslo, Norway?"}]
EXPECTED = {"location": "Oslo, Norway", "format": "celsius"}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from fastapi.testclient import TestClient
    from openai import OpenAI

    from honing.serve.app import create_app
    from honing.serve.settings import Settings

    app = create_app(Settings(data_dir=tmp_path_factory.mktemp("serve"), no_auth=True, embedded_worker=False))
    with TestClient(app) as http:
        yield OpenAI(base_url="http://testserver/v1", api_key="none", http_client=http, max_retries=0)


@pytest.mark.slow
def test_tool_calls_are_returned_parsed(client):
    r = client.chat.completions.create(model="smollm2-135m-instruct", messages=SHOT, tools=[WEATHER],
                                       temperature=0, max_tokens=60)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice.message.content
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call")
    assert call.function.name == "get_current_weather"
    assert json.loads(call.function.arguments) == EXPECTED
    assert not choice.message.content


@pytest.mark.slow
def test_tool_calls_are_streamed(client):
    stream = client.chat.completions.create(model="smollm2-135m-instruct", messages=SHOT, tools=[WEATHER],
                                            temperature=0, max_tokens=60, stream=True)
    chunks = list(stream)
    calls = [tc for ch in chunks if ch.choices for tc in (ch.choices[0].delta.tool_calls or [])]
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "tool_calls"
    assert len(calls) == 1 and calls[0].index == 0 and calls[0].function.name == "get_current_weather"
    assert json.loads(calls[0].function.arguments) == EXPECTED
    # no fragment of the <tool_call> markup leaks into the streamed content
    assert "<tool" not in "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)


@pytest.mark.slow
def test_without_tools_or_with_tool_choice_none_the_text_is_content(client):
    for extra in ({}, {"tools": [WEATHER], "tool_choice": "none"}):
        r = client.chat.completions.create(model="smollm2-135m-instruct", messages=SHOT[-1:], max_tokens=3,
                                           temperature=0, **extra)
        assert r.choices[0].finish_reason == "length" and r.choices[0].message.tool_calls is None
        assert isinstance(r.choices[0].message.content, str) and r.choices[0].message.content


def test_bad_tools_and_tool_messages_are_400s(client):
    import openai

    bad = [({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools"),
           ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
           ({"messages": [*SHOT[:2], {"role": "tool", "content": "20"}, SHOT[-1]]}, "messages[2]"),
           ({"messages": [SHOT[0], {**SHOT[1], "tool_calls": [{"type": "function"}]}, SHOT[-1]]},
            "messages[1].tool_calls")]
    for extra, param in bad:
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(**{"model": "smollm2-135m-instruct", "messages": SHOT, "max_tokens": 1,
                                              **extra})
        assert e.value.body["param"] == param, e.value.body


def test_answer_and_hold_back_without_a_model():
    text = 'Checking.\n<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>'
    message, finish = _answer(text, "stop", tools_on=True)
    assert finish == "tool_calls" and message["content"] == "Checking."
    assert message["tool_calls"][0]["function"] == {"name": "f", "arguments": '{"x": 1}'}
    assert _answer(text, "stop", tools_on=False) == ({"role": "assistant", "content": text, "refusal": None}, "stop")
    assert _answer("Sunny.", "length", tools_on=True)[1] == "length"
    # streamed content stops short of anything that may begin a <tool_call>
    assert [_held_back(t) for t in ("Hi", "Hi <", "Hi <tool_c", "Hi <tool_call>{", "a < b")] == [2, 3, 3, 3, 5]


TIME = {"type": "function", "function": {
    "name": "get_local_time", "description": "Get the local time of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


@pytest.mark.slow
def test_tool_choice_required_and_named_make_the_reply_a_call(client):
    """After two weather calls, a question about the time is answered in text under "auto" (the model chooses
    not to call); "required" (one tool) and a named function (one of two) make the reply that call instead
    (the model writes the arguments), streamed and not."""
    messages = [*SHOT[:-1], {"role": "user", "content": "Thanks! What is the time in Oslo, Norway?"}]
    ask = {"model": "smollm2-135m-instruct", "messages": messages, "temperature": 0, "max_tokens": 40}
    auto = client.chat.completions.create(**ask, tools=[WEATHER, TIME])
    assert auto.choices[0].finish_reason != "tool_calls", auto.choices[0].message  # the control: no call
    required = client.chat.completions.create(**ask, tools=[TIME], tool_choice="required")
    assert required.choices[0].finish_reason == "tool_calls", required.choices[0].message.content
    assert required.choices[0].message.tool_calls[0].function.name == "get_local_time"
    named = {"type": "function", "function": {"name": "get_local_time"}}
    r = client.chat.completions.create(**ask, tools=[WEATHER, TIME], tool_choice=named)
    assert r.choices[0].finish_reason == "tool_calls", r.choices[0].message.content
    (call,) = r.choices[0].message.tool_calls
    assert call.function.name == "get_local_time" and isinstance(json.loads(call.function.arguments), dict)
    chunks = list(client.chat.completions.create(**ask, tools=[WEATHER, TIME], tool_choice=named, stream=True))
    streamed = [tc for ch in chunks if ch.choices for tc in (ch.choices[0].delta.tool_calls or [])]
    assert [(tc.function.name, tc.function.arguments) for tc in streamed] == [
        (call.function.name, call.function.arguments)]
    assert "<tool" not in "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
