"""The tool-call metric on golden cases (right call, wrong function, wrong arguments, arguments in another
key order, invalid JSON, no call, parallel calls), its place in evaluation (task from the data, the turn
evaluated, few-shot shots that show calls), and `hone eval` end to end on a tiny tool-calling file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from eval_helpers import make_run_dir, one_torch_thread  # noqa: F401

from honing.data.conversation import ToolCall
from honing.data.render import render_prompt
from honing.evaluate import baselines as B
from honing.evaluate import metrics as M
from honing.evaluate.bootstrap import mean_ci
from honing.evaluate.dataset import read_conversations, read_eval_items, to_eval_items, uses_tools

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "unit": {"type": "string", "enum": ["c", "f"]}},
                   "required": ["city"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]}}}
TOOLS = (WEATHER, TIME)
PARIS = ToolCall("c1", "get_weather", '{"city": "Paris", "unit": "c"}')
UTC = ToolCall("c2", "get_time", '{"tz": "UTC"}')


def said(*calls: tuple[str, object], before: str = "") -> str:
    """Generated text in the fallback format: ``<tool_call>{"name", "arguments"}</tool_call>`` per call."""
    blocks = [f'<tool_call>\n{json.dumps({"name": n, "arguments": a})}\n</tool_call>' for n, a in calls]
    return "\n".join([before] * bool(before) + blocks)


def metrics(text: str, reference=(PARIS,)) -> tuple[float, float, float, float]:
    m = M.tool_call_metrics(text, reference, TOOLS)
    return m["tool_call_exact"], m["function_match"], m["arguments_match"], m["schema_valid"]


GOLDEN = [
    # (case, generated text, (exact, function, arguments, schema-valid))
    ("right call", said(("get_weather", {"city": "Paris", "unit": "c"})), (1, 1, 1, 1)),
    ("args in another key order", said(("get_weather", {"unit": "c", "city": "Paris"})), (1, 1, 1, 1)),
    ("text before the call", said(("get_weather", {"city": "Paris", "unit": "c"}), before="Let me check."),
     (1, 1, 1, 1)),
    ("wrong function", said(("get_time", {"tz": "Paris"})), (0, 0, 0, 1)),
    ("function not among the tools", said(("get_forecast", {"city": "Paris"})), (0, 0, 0, 0)),
    ("wrong args", said(("get_weather", {"city": "Rome", "unit": "c"})), (0, 1, 0, 1)),
    ("args missing a key", said(("get_weather", {"city": "Paris"})), (0, 1, 0, 1)),
    ("args against the schema", said(("get_weather", {"city": "Paris", "unit": "kelvin"})), (0, 1, 0, 0)),
    ("invalid JSON", '<tool_call>\n{"name": "get_weather", "arguments": {city: Paris}}\n</tool_call>', (0, 0, 0, 0)),
    ("no call", "It is sunny in Paris.", (0, 0, 0, 0)),
    ("unclosed last block (cut at a stop)", ('<tool_call>\n{"name": "get_weather", "arguments": '
     '{"city": "Paris", "unit": "c"}}\n</tool_'), (1, 1, 1, 1)),
    ("a call too many", said(("get_weather", {"city": "Paris", "unit": "c"}), ("get_time", {"tz": "UTC"})),
     (0, 0, 1, 1)),
]


@pytest.mark.parametrize("text, expected", [(t, e) for _, t, e in GOLDEN], ids=[c for c, _, _ in GOLDEN])
def test_golden_cases(text, expected):
    assert metrics(text) == pytest.approx(expected)


def test_parallel_calls_are_compared_as_a_set():
    both = (PARIS, UTC)
    swapped = said(("get_time", {"tz": "UTC"}), ("get_weather", {"unit": "c", "city": "Paris"}))
    assert metrics(swapped, both) == (1, 1, 1, 1)
    # One of two right: half the reference calls matched, names differ as a multiset, nothing exact.
    assert metrics(said(("get_time", {"tz": "UTC"})), both) == (0, 0, 0.5, 1)
    # The same call twice does not match two different reference calls.
    twice = said(("get_weather", {"city": "Paris", "unit": "c"}), ("get_weather", {"city": "Paris", "unit": "c"}))
    assert metrics(twice, both) == (0, 0, 0.5, 1)


def test_a_turn_that_should_not_call_scores_only_a_plain_answer():
    assert metrics("It is 21 degrees.", reference=()) == (1, 1, 1, 1)
    assert metrics(said(("get_weather", {"city": "Paris"})), reference=()) == (0, 0, 0, 0)
    assert metrics("<tool_call>\nnot json\n</tool_call>", reference=()) == (0, 0, 0, 0)  # tried to call


def test_json_equality_is_order_insensitive_and_strict_about_types():
    assert M.json_equal({"a": [1, {"b": 2, "c": 3}]}, {"a": [1, {"c": 3, "b": 2}]})
    assert not M.json_equal({"a": [1, 2]}, {"a": [2, 1]})  # list order is data
    assert not M.json_equal({"flag": True}, {"flag": 1})  # Python says True == 1; JSON does not
    assert M.json_equal({"x": 1}, {"x": 1.0})  # one JSON number


def test_score_gives_every_metric_per_example_with_bootstrap_cis():
    texts = [g[1] for g in GOLDEN]
    s = M.score(texts, ["ref"] * len(texts), "tool_call", reference_calls=[(PARIS,)] * len(texts),
                tools=[TOOLS] * len(texts))
    assert s.primary == "tool_call_exact" and s.task == "tool_call"
    exact = [g[2][0] for g in GOLDEN]
    assert s.per_example["tool_call_exact"] == exact
    assert s.summary["tool_call_exact"] == pytest.approx(sum(exact) / len(exact))  # 4/12
    assert s.summary["schema_valid"] == pytest.approx(sum(g[2][3] for g in GOLDEN) / len(GOLDEN))
    ci = mean_ci(s.per_example["tool_call_exact"])
    assert ci.low < ci.estimate < ci.high
    with pytest.raises(ValueError, match="reference calls"):
        M.score(texts, ["ref"] * len(texts), "tool_call")


# ----------------------------------------------------------------------------------------------------------
# Tool-calling data in evaluation
# ----------------------------------------------------------------------------------------------------------

CITIES = ["Paris", "Rome", "Oslo", "Lima", "Cairo", "Tokyo", "Quito", "Dakar", "Perth", "Minsk"]


def record(i: int, city: str) -> dict:
    """OpenAI's documented function-calling shape: tools, a call with no content, its result, the answer."""
    cid = f"call_{i}"
    return {"tools": list(TOOLS), "messages": [
        {"role": "system", "content": "You answer weather questions with the tools."},
        {"role": "user", "content": f"What's the weather in {city}, in celsius?"},
        {"role": "assistant", "tool_calls": [{"id": cid, "type": "function", "function": {
            "name": "get_weather", "arguments": json.dumps({"city": city, "unit": "c"})}}]},
        {"role": "tool", "tool_call_id": cid, "content": '{"temperature": 21}'},
        {"role": "assistant", "content": f"It is 21 degrees in {city}."}]}


def write_split(tmp: Path) -> tuple[Path, Path]:
    rows = [json.dumps(record(i, c)) + "\n" for i, c in enumerate(CITIES)]
    (tmp / "train.jsonl").write_text("".join(rows[:6]))
    (tmp / "eval.jsonl").write_text("".join(rows[6:]))
    return tmp / "train.jsonl", tmp / "eval.jsonl"


def test_the_evaluated_turn_is_the_last_call_and_its_text_scores_perfectly(tmp_path):
    _train, ev = write_split(tmp_path)
    conversations = read_conversations(ev)
    assert uses_tools(conversations)
    items = to_eval_items(conversations, ev, at_last_call=True)
    it = items[0]
    assert [m.role for m in it.prompt] == ["system", "user"] and it.tools == TOOLS
    assert it.reference_calls[0].name == "get_weather" and it.reference.startswith("<tool_call>")
    # The reference's own text parses back into the reference calls: the metric's ceiling is reachable.
    assert metrics(it.reference, it.reference_calls) == (1, 1, 1, 1)
    # Without at_last_call the final text answer is the reference, as for any chat data.
    assert read_eval_items(ev)[0].reference == "It is 21 degrees in Quito."


def test_few_shot_shows_calls_as_calls_and_offers_every_shot_tool(tmp_path, smol_tokenizer):
    train, ev = write_split(tmp_path)
    items, pool = read_eval_items(ev, at_last_call=True), read_eval_items(train, at_last_call=True)
    pool[0] = replace(pool[0], tools=(TIME,))  # a shot whose tools differ from the query's
    prompts = B.REGISTRY["few-shot"].build(items, B.BaselineInputs(pool, None, k_shots=6, rag_k=2))
    shots = [m for m in prompts.messages[0] if m.role == "assistant"]
    assert len(shots) == 6 and all(m.tool_calls for m in shots)
    assert [t["function"]["name"] for t in prompts.tools[0]] == ["get_weather", "get_time"]
    text = smol_tokenizer.decode(render_prompt(smol_tokenizer, list(prompts.messages[0]), prompts.tools[0]))
    assert text.count("<tool_call>") >= 6 and "<tools>" in text


HONE = Path(sys.executable).with_name("hone")


@pytest.mark.slow  # a subprocess that loads torch, the tiny model and the few-shot sentence encoder: ~20 s idle
def test_cli_eval_on_a_tiny_tool_calling_file(tmp_path, tiny_llama_dir):
    train, ev = write_split(tmp_path)
    run = make_run_dir(tmp_path, tiny_llama_dir, train)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    exe = [str(HONE)] if HONE.exists() else [sys.executable, "-c", "from honing.cli import main; main()"]
    p = subprocess.run([*exe, "eval", "--model", str(run), "--data", str(ev), "--baselines", "zero-shot,few-shot",
                        "--k-shots", "2", "--no-forgetting", "--threads", "1", "--max-new-tokens", "6", "--json",
                        "--out", str(tmp_path / "report")],
                       check=False, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "task: tool_call" in p.stderr
    data = json.loads(p.stdout)
    assert data["task"] == "tool_call" and data["primary_metric"] == "tool_call_exact" and data["examples"] == 4
    assert set(data["approaches"]) == {"zero-shot", "few-shot", "fine-tuned"}
    for a in data["approaches"].values():
        assert set(a["metric_cis"]) >= {"tool_call_exact", "function_match", "arguments_match", "schema_valid"}
        assert all(0 <= ci["low"] <= ci["estimate"] <= ci["high"] <= 1 for ci in a["metric_cis"].values())
    assert data["fine_tuned_vs_zero_shot"]["b"] == "zero-shot"
    assert data["settings"]["config"]["baselines"] == ["zero-shot", "few-shot"]
