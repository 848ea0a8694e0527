"""Tool calls: OpenAI's function-calling fine-tuning files (and the legacy functions/function_call shape,
and DPO's input.tools) read, checked with line numbers, rendered with a loss mask over the assistant's calls
and answers only, and generated text parsed back into calls."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from honing.data.conversation import Message, ToolCall
from honing.data.formats import example_to_record, load_examples, write_jsonl
from honing.data.render import (
    TRAINED_CLOSE,
    TRAINED_OPEN,
    marked_renderings,
    render_conversation,
    render_prompt,
)
from honing.data.tools import (
    format_tool_call,
    parse_tool_calls,
    split_tool_calls,
    template_supports_tools,
)
from honing.data.validate import validate_file

WEATHER = {"type": "function", "function": {
    "name": "get_current_weather", "description": "Get the current weather",
    "parameters": {"type": "object", "properties": {
        "location": {"type": "string", "description": "The city and country, eg. San Francisco, USA"},
        "format": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["location", "format"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]}}}
TOOLS = [WEATHER, TIME]
SYSTEM = {"role": "system", "content": "You are a weather assistant."}


def call(cid: str, name: str = "get_current_weather", args=None) -> dict:
    args = {"location": "Paris, France", "format": "celsius"} if args is None else args
    return {"id": cid, "type": "function",
            "function": {"name": name, "arguments": args if isinstance(args, str) else json.dumps(args)}}


def user(i: int) -> dict:
    return {"role": "user", "content": f"What is the weather in city number {i}?"}


def calls(*c: dict, **extra) -> dict:
    return {"role": "assistant", "tool_calls": list(c), **extra}


def result(cid: str, content: str = '{"temperature": 21}') -> dict:
    return {"role": "tool", "tool_call_id": cid, "content": content}


def answer(i: int) -> dict:
    return {"role": "assistant", "content": f"It is {20 + i} degrees in city number {i}."}


def record(*messages: dict, tools=TOOLS, **extra) -> str:
    r = {"messages": list(messages), **extra}
    if tools is not None:
        r["tools"] = tools
    return json.dumps(r)


def full(i: int) -> str:
    """A complete, valid, unique tool-calling example: call, result, answer."""
    return record(SYSTEM, user(i), calls(call(f"c{i}", args={"location": f"City {i}", "format": "celsius"})),
                  result(f"c{i}"), answer(i))


PAD = [full(100 + i) for i in range(10)]


def write(tmp_path: Path, lines: list[str], name: str = "tools.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# The documented shapes: each validates with no problem at all.
GOOD = [
    # OpenAI's guide: the file ends on the call (the model learns to call; the result is not part of it)
    record(SYSTEM, user(1), calls(call("call_id"))),
    # call, result, answer, with parallel_tool_calls and a weight-0 tool-calling turn earlier
    record(SYSTEM, user(2), calls(call("a")), result("a"), answer(2), user(3),
           calls(call("b", "get_time", {"tz": "UTC"}), call("c"), weight=0), result("c"), result("b", "12:00"),
           answer(3), parallel_tool_calls=True),
    # content: null next to the calls, content parts, and arguments as an object (Hugging Face datasets)
    record(SYSTEM, user(4), {"role": "assistant", "content": None, "tool_calls": [
        {"id": "x", "type": "function", "function": {"name": "get_time", "arguments": {"tz": "CET"}}}]},
        {"role": "tool", "tool_call_id": "x", "content": [{"type": "text", "text": "13:00"}]}, answer(4)),
    # OpenAI's legacy format: functions, function_call and the function role
    json.dumps({"messages": [SYSTEM, user(5), {"role": "assistant", "function_call": {
        "name": "get_time", "arguments": '{"tz": "PST"}'}}, {"role": "function", "name": "get_time",
                                                               "content": "04:00"}, answer(5)],
        "functions": [TIME["function"]]}),
]


def test_documented_files_validate_without_problems(tmp_path):
    report = validate_file(write(tmp_path, [*GOOD, *PAD]))
    assert report.lines() == [] and report.stats["examples"] == 14
    examples = load_examples(write(tmp_path, GOOD))
    legacy = examples[3].messages
    assert legacy[2].tool_calls == (ToolCall("call_1", "get_time", '{"tz": "PST"}'),)
    assert (legacy[3].role, legacy[3].tool_call_id) == ("tool", "call_1")
    assert examples[1].parallel_tool_calls is True and examples[1].messages[6].weight == 0
    assert examples[2].messages[2].content == "" and examples[2].messages[3].content == "13:00"


def test_canonical_records_round_trip(tmp_path):
    examples = load_examples(write(tmp_path, GOOD))
    out = tmp_path / "canonical.jsonl"
    write_jsonl(examples, out)
    assert load_examples(out) == examples
    first = example_to_record(examples[0])
    assert first["tools"] == TOOLS and "content" not in first["messages"][-1]


BAD_ARGS = call("c1", args='{"location": "Paris"')
CASES = [
    ("arguments_not_json", [record(SYSTEM, user(1), calls(BAD_ARGS))], [(1, "invalid_tool_arguments")]),
    ("arguments_not_an_object", [record(SYSTEM, user(1), calls(call("c1", args="[1, 2]")))],
     [(1, "invalid_tool_arguments")]),
    ("schema_missing_required", [record(SYSTEM, user(1), calls(call("c1", args={"location": "Oslo"})))],
     [(1, "tool_arguments_mismatch")]),
    ("schema_enum", [record(SYSTEM, user(1), calls(call("c1", args={"location": "Oslo", "format": "kelvin"})))],
     [(1, "tool_arguments_mismatch")]),
    ("unknown_tool", [record(SYSTEM, user(1), calls(call("c1", "get_stock_price", {})))], [(1, "unknown_tool")]),
    ("answered_nowhere", [record(SYSTEM, user(1), calls(call("c1")), answer(1))], [(1, "unanswered_tool_call")]),
    ("answered_twice", [record(SYSTEM, user(1), calls(call("c1")), result("c1"), result("c1"), answer(1))],
     [(1, "tool_call_answered_twice")]),
    ("unknown_call_id", [record(SYSTEM, user(1), calls(call("c1")), result("c1"), result("c9"), answer(1))],
     [(1, "unknown_tool_call_id")]),
    ("duplicate_call_ids", [record(SYSTEM, user(1), calls(call("c1"), call("c1")), result("c1"), answer(1))],
     [(1, "duplicate_tool_call_id")]),
    ("tool_content_missing", [record(SYSTEM, user(1), calls(call("c1")), {"role": "tool", "tool_call_id": "c1"},
                                     answer(1))], [(1, "missing_content")]),
    ("tool_without_call_id", [record(SYSTEM, user(1), calls(call("c1")), {"role": "tool", "content": "21"},
                                     answer(1))], [(1, "missing_field")]),
    ("call_without_id", [record(SYSTEM, user(1), calls({"type": "function", "function": {
        "name": "get_time", "arguments": "{}"}}))], [(1, "invalid_tool_call")]),
    ("arguments_a_number", [record(SYSTEM, user(1), calls({"id": "c1", "type": "function", "function": {
        "name": "get_time", "arguments": 5}}))], [(1, "invalid_tool_call")]),
    ("user_makes_calls", [record(SYSTEM, {**user(1), "tool_calls": [call("c1")]}, answer(1))],
     [(1, "invalid_tool_call")]),
    ("call_id_on_user", [record(SYSTEM, {**user(1), "tool_call_id": "c1"}, answer(1))], [(1, "invalid_field")]),
    ("tools_not_a_list", [record(SYSTEM, user(1), answer(1), tools={"get_time": {}})], [(1, "invalid_tools")]),
    ("tool_without_name", [record(SYSTEM, user(1), answer(1), tools=[{"type": "function", "function": {}}])],
     [(1, "invalid_tools")]),
    ("tool_schema_invalid", [record(SYSTEM, user(1), answer(1), tools=[
        {"type": "function", "function": {"name": "f", "parameters": {"type": "objekt"}}}])], [(1, "invalid_tools")]),
    ("parallel_not_bool", [record(SYSTEM, user(1), answer(1), parallel_tool_calls="yes")], [(1, "invalid_field")]),
    ("legacy_result_without_call", [json.dumps({"messages": [SYSTEM, user(1), {
        "role": "function", "name": "get_time", "content": "12:00"}, answer(1)], "functions": [TIME["function"]]})],
     [(1, "unknown_tool_call_id")]),
    ("every_problem_of_one_line", [record(SYSTEM, user(1), calls(BAD_ARGS, call("c2", "nope", {})),
                                          result("c2"), result("c3"), answer(1))],
     [(1, "invalid_tool_arguments"), (1, "unknown_tool"), (1, "unknown_tool_call_id"),
      (1, "unanswered_tool_call")]),
    ("later_line", [full(1), full(2), record(SYSTEM, user(1), calls(call("c1", args={"format": "celsius"})))],
     [(3, "tool_arguments_mismatch")]),
]


@pytest.mark.parametrize("lines,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_tool_calls_report_line_and_category(tmp_path, lines, expected):
    report = validate_file(write(tmp_path, [*lines, *PAD]))
    assert report.lines() == expected
    assert not report.ok
    assert all(p.message for p in report.problems)


def test_problem_messages_say_what_and_where(tmp_path):
    report = validate_file(write(tmp_path, [CASES[2][1][0], *PAD]))
    (p,) = report.problems
    assert "message 3" in p.message and "get_current_weather" in p.message and "'format'" in p.message


def test_openai_dpo_with_tools(tmp_path):
    def pair(i: int, prompt_extra=()) -> str:
        return json.dumps({"input": {"messages": [SYSTEM, user(i), *prompt_extra], "tools": TOOLS},
                           "preferred_output": [answer(i)],
                           "non_preferred_output": [{"role": "assistant", "content": f"No idea about {i}."}]})

    ok = [pair(i) for i in range(9)] + [pair(9, (calls(call("c")), result("c")))]
    report = validate_file(write(tmp_path, ok))
    assert report.lines() == [] and report.stats["examples_by_kind"] == {"preference": 10}
    pairs = load_examples(write(tmp_path, ok))
    assert pairs[0].tools == tuple(TOOLS) and pairs[9].prompt[-1].role == "tool"
    out = tmp_path / "canonical.jsonl"
    write_jsonl(pairs, out)
    assert load_examples(out) == pairs
    # A prompt whose call is never answered: the replies would answer a question the model never saw.
    report = validate_file(write(tmp_path, [pair(20, (calls(call("c")), user(21))), *ok]))
    assert report.lines() == [(1, "unanswered_tool_call")]


def test_different_calls_are_not_duplicates(tmp_path):
    a = record(SYSTEM, user(1), calls(call("c1", args={"location": "Oslo", "format": "celsius"})))
    b = record(SYSTEM, user(1), calls(call("c1", args={"location": "Lima", "format": "celsius"})))
    assert validate_file(write(tmp_path, [a, b, *PAD])).lines() == []
    assert validate_file(write(tmp_path, [a, a, *PAD])).lines() == [(2, "duplicate")]


# -- rendering ---------------------------------------------------------------------------------------------


def trained_text(tokenizer, rendered) -> str:
    return tokenizer.decode([t for t, m in zip(rendered.input_ids, rendered.loss_mask) if m])


def test_smollm2_template_has_no_tools_so_the_fallback_is_used(smol_tokenizer, tmp_path):
    assert not template_supports_tools(smol_tokenizer)
    ex = load_examples(write(tmp_path, [GOOD[1]]))[0]
    rendered = render_conversation(smol_tokenizer, ex)
    text = smol_tokenizer.decode(rendered.input_ids)
    # the schemas are in the system turn, the calls and results in the documented tags
    assert text.index("<tools>\n") < text.index("get_current_weather") < text.index("\n</tools>") < text.index("user")
    assert '<tool_call>\n{"name": "get_current_weather", "arguments": {"location": "Paris, France"' in text
    assert "<|im_start|>tool\n<tool_response>\n{\"temperature\": 21}\n</tool_response><|im_end|>" in text
    # trained: the first call and the two answers (the weight-0 calling turn is context), nothing else
    first_call = format_tool_call(ex.messages[2].tool_calls[0])
    assert trained_text(smol_tokenizer, rendered) == (
        f"{first_call}<|im_end|>It is 22 degrees in city number 2.<|im_end|>"
        "It is 23 degrees in city number 3.<|im_end|>")


def test_marked_rendering_marks_exactly_the_trained_spans(smol_tokenizer, tmp_path):
    ex = load_examples(write(tmp_path, [GOOD[1]]))[0]
    ((label, marked),) = marked_renderings(smol_tokenizer, ex)
    assert label == "conversation"
    rendered = render_conversation(smol_tokenizer, ex)
    inside = "".join(part.split(TRAINED_CLOSE)[0] for part in marked.split(TRAINED_OPEN)[1:])
    assert inside == trained_text(smol_tokenizer, rendered)
    assert marked.replace(TRAINED_OPEN, "").replace(TRAINED_CLOSE, "") == smol_tokenizer.decode(rendered.input_ids)
    assert "<tool_response>" not in inside and "<tools>" not in inside


def test_inference_prompt_matches_training_prefix(smol_tokenizer, tmp_path):
    ex = load_examples(write(tmp_path, [GOOD[0]]))[0]
    rendered = render_conversation(smol_tokenizer, ex)
    prompt = render_prompt(smol_tokenizer, ex.messages[:-1], ex.tools)
    first_trained = rendered.loss_mask.index(True)
    assert rendered.input_ids[:first_trained] == prompt


TOOL_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTOOLS:{% for t in tools %} {{ t.function.name }}{% endfor %}<|im_end|>\n"
    "{% endif %}{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.content %}{{ m.content }}{% endif %}"
    "{% for c in m.tool_calls or [] %}CALL {{ c.function.name }} {{ c.function.arguments | tojson }}{% endfor %}"
    "{% if m.role == 'tool' %} (for {{ m.name }}){% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_a_tool_aware_template_gets_tools_natively(smol_tokenizer, tmp_path):
    tok = copy.deepcopy(smol_tokenizer)
    tok.chat_template = TOOL_TEMPLATE
    assert template_supports_tools(tok)
    ex = load_examples(write(tmp_path, [GOOD[1]]))[0]
    rendered = render_conversation(tok, ex)
    text = tok.decode(rendered.input_ids)
    assert text.startswith("<|im_start|>system\nTOOLS: get_current_weather get_time<|im_end|>")
    assert '{"temperature": 21} (for get_current_weather)' in text and "<tool_call>" not in text
    assert trained_text(tok, rendered) == (
        'CALL get_current_weather {"location": "Paris, France", "format": "celsius"}<|im_end|>'
        "It is 22 degrees in city number 2.<|im_end|>It is 23 degrees in city number 3.<|im_end|>")


def test_validate_counts_tokens_of_tool_examples(smol_tokenizer, tmp_path):
    report = validate_file(write(tmp_path, [*GOOD, *PAD]), tokenizer=smol_tokenizer)
    assert report.ok and report.stats["tokens_per_example"]["min"] > 200  # the schemas are in every prompt


def test_cli_show_prints_the_rendered_example_with_trained_spans(tmp_path):
    from typer.testing import CliRunner

    from honing.cli import app

    path = write(tmp_path, [*GOOD, *PAD])
    result = CliRunner().invoke(app, ["data", "validate", str(path), "--show", "2"])
    assert result.exit_code == 0, result.output
    shown = result.output.split("--- line 2, conversation")[1]
    assert f"{TRAINED_OPEN}<tool_call>" in shown and f"{TRAINED_OPEN}<tool_response>" not in shown
    as_json = json.loads(CliRunner().invoke(app, ["data", "validate", str(path), "--show", "99", "--json"]).output)
    assert as_json["show"]["problems"][0]["category"] == "no_example"


# -- parsing generated text --------------------------------------------------------------------------------


def test_parse_tool_calls_round_trips_the_fallback_format():
    calls_ = (ToolCall("a", "get_time", '{"tz": "UTC"}'), ToolCall("b", "get_current_weather", '{"location": "Oslo"}'))
    text = "Let me check.\n" + "\n".join(format_tool_call(c) for c in calls_)
    assert parse_tool_calls(text) == [{"name": c.name, "arguments": c.arguments} for c in calls_]
    assert split_tool_calls(text) == ("Let me check.", parse_tool_calls(text))


@pytest.mark.parametrize("text,expected", [
    ("It is sunny.", None),
    ("<tool_call>\nnot json\n</tool_call>", []),
    ('<tool_call>\n{"arguments": {}}\n</tool_call>', []),
    ('<tool_call>{"name": "f", "arguments": "{\\"x\\": 1}"}</tool_call>', [{"name": "f", "arguments": '{"x": 1}'}]),
    ('<tool_call>\n{"name": "f", "arguments": {"x": [1, 2]}}', [{"name": "f", "arguments": '{"x": [1, 2]}'}]),
    ('<tool_call>\n{"name": "f", "arguments": {}}\n</tool_', [{"name": "f", "arguments": "{}"}]),  # cut short
    ('<tool_call>\n{"name": "f", "arguments": {"x": ', []),
    ('<tool_call>{"name": "f"}</tool_call>', [{"name": "f", "arguments": "{}"}]),
])
def test_parse_tool_calls_edge_cases(text, expected):
    assert parse_tool_calls(text) == expected


def test_message_trained_text_includes_calls():
    m = Message("assistant", "", tool_calls=(ToolCall("a", "f", '{"x": 1}'),))
    assert json.loads(m.trained_text()) == {"name": "f", "arguments": '{"x": 1}'}
