"""examples/tool_calls_stdlib: rebuilt byte for byte by its script, every call right by construction (the
function really run on the call's arguments gives the tool result), disjoint splits, evaluated as tool calls."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import jsonschema
import pytest

from honing.data.formats import load_examples
from honing.evaluate.config import eval_config
from honing.evaluate.dataset import read_conversations, to_eval_items
from honing.evaluate.metrics import tool_call_metrics
from honing.evaluate.runner import _resolve_task

REPO = Path(__file__).resolve().parents[1]
FOLDER = REPO / "examples" / "tool_calls_stdlib"
SCRIPT = REPO / "scripts" / "build_tool_calls_stdlib.py"
INFO = json.loads((FOLDER / "build_info.json").read_text(encoding="utf-8"))


def _build_module():
    spec = importlib.util.spec_from_file_location("build_tool_calls_stdlib", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


build = _build_module()


@pytest.fixture(scope="module")
def splits():
    return {s: load_examples(FOLDER / f"{s}.jsonl") for s in ("train", "eval")}


@pytest.mark.skipif(sys.version.split()[0] != INFO["python"], reason="the standard library differs by version")
def test_the_script_rebuilds_every_file():
    built = build.build()
    for name, text in built.items():
        assert (FOLDER / name).read_text(encoding="utf-8") == text, name


def test_sizes_and_disjoint_requests(splits):
    assert (len(splits["train"]), len(splits["eval"])) == (INFO["train"], INFO["eval"])
    requests = {s: {ex.messages[1].content.lower() for ex in exs} for s, exs in splits.items()}
    assert len(requests["train"]) == INFO["train"] and len(requests["eval"]) == INFO["eval"]
    assert not requests["train"] & requests["eval"]


def test_every_call_is_right_by_construction(splits):
    functions = {f.name: f for f in build.FUNCTIONS}
    for ex in splits["train"] + splits["eval"]:
        assert len(ex.tools) == build.TOOLS_PER_EXAMPLE
        call = ex.messages[2].tool_calls[0]
        tool = next(t for t in ex.tools if t["function"]["name"] == call.name)
        args = json.loads(call.arguments)
        jsonschema.validate(args, tool["function"]["parameters"])
        # The tool's result is the real function's on these arguments (JSON: tuples read back as lists).
        result = functions[call.name].fn(*args.values())
        assert json.loads(ex.messages[3].content) == json.loads(json.dumps(result))
        assert ex.messages[1].content == functions[call.name].request.format(**args)


def test_it_is_evaluated_as_tool_calls_at_the_call():
    path = FOLDER / "eval.jsonl"
    conversations = read_conversations(path)
    metric, _ = _resolve_task(eval_config(model="m", data=path), conversations, lambda _m: None)
    assert metric == "tool_call"
    items = to_eval_items(conversations, path, at_last_call=True)
    assert all(len(it.reference_calls) == 1 and [m.role for m in it.prompt] == ["system", "user"] for it in items)
    # The references themselves score 1 on every tool-call metric.
    assert all(set(tool_call_metrics(it.reference, it.reference_calls, it.tools).values()) == {1.0} for it in items)


def test_readme_states_source_licence_sizes_and_the_measured_result():
    readme = (FOLDER / "README.md").read_text(encoding="utf-8")
    assert "PSF" in readme and INFO["python"] in readme
    assert f"{INFO['train']} examples" in readme and f"{INFO['eval']} held-out" in readme
    assert "zero-shot" in readme and "few-shot" in readme and "fine-tuned" in readme
    assert (REPO / "examples" / "recipes" / "tool_calls_stdlib_lora.yaml").is_file()
