"""Tool (function) calling: reading and checking OpenAI's ``tools`` / ``tool_calls``, the fallback text format
for chat templates that know nothing of tools, and the parser that turns generated text back into calls.

Checks report through an ``add(category, message)`` callback so :mod:`honing.data.formats` can collect them
with the record's line; nothing here knows about files.

Fallback format (used when the model's chat template does not mention ``tools``; close to what Qwen2.5 and
Hermes models are trained on, so the text is familiar to many small models):

* the tool schemas go into the system turn (appended to the conversation's own system message, or as the
  system message when there is none) inside ``<tools></tools>``, one JSON object per line;
* each call is written in the assistant turn as ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``
  after the turn's text, if any;
* each result is a ``tool`` turn whose content is ``<tool_response>\\n...\\n</tool_response>``.

The loss mask (``honing.data.render``) covers assistant turns only, so calls are trained and the schemas
and results never are.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import Any

from honing.data.conversation import Message, ToolCall, tool_name

Add = Callable[[str, str], None]

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
TOOLS_PREAMBLE = (
    "# Tools\n\nYou can call the functions below. Their signatures are JSON Schemas inside <tools></tools>:\n"
)
TOOLS_INSTRUCTIONS = (
    "\n\nTo call a function, answer with one JSON object per call, each inside <tool_call></tool_call> tags:\n"
    '<tool_call>\n{"name": <function name>, "arguments": <arguments as a JSON object>}\n</tool_call>'
)
_DECODER = json.JSONDecoder()
_TOOL_CALL_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


# ---------------------------------------------------------------------------------------------------------
# Reading and checking
# ---------------------------------------------------------------------------------------------------------


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", type(None): "null"}.get(type(value), type(value).__name__)


def read_tools(value: Any, add: Add, key: str = "tools") -> tuple[dict, ...] | None:
    """OpenAI's ``tools`` list, normalized to ``{"type": "function", "function": {...}}``; None after
    reporting ``invalid_tools`` (each bad entry is named)."""
    if not isinstance(value, list):
        add("invalid_tools", f"{key!r} must be a list of tools, not {_kind(value)}")
        return None
    out, ok, seen = [], True, set()
    for i, tool in enumerate(value, start=1):
        fn = tool.get("function") if isinstance(tool, dict) and tool.get("type", "function") == "function" else None
        problem = _function_problem(fn) if isinstance(tool, dict) else f"must be an object, not {_kind(tool)}"
        if problem is None and fn["name"] in seen:
            problem = f"declares {fn['name']!r} a second time"
        if problem:
            add("invalid_tools", f"{key} {i} {problem}")
            ok = False
            continue
        seen.add(fn["name"])
        out.append({"type": "function", "function": fn})
    return tuple(out) if ok else None


def read_functions(value: Any, add: Add) -> tuple[dict, ...] | None:
    """The legacy ``functions`` list (bare function definitions), as ``tools``."""
    if not isinstance(value, list):
        add("invalid_tools", f"'functions' must be a list, not {_kind(value)}")
        return None
    return read_tools([{"type": "function", "function": f} for f in value], add, key="functions")


def _function_problem(fn: Any) -> str | None:
    """Why ``fn`` is not a usable function definition, or None."""
    if not isinstance(fn, dict):
        return "must be {\"type\": \"function\", \"function\": {\"name\", \"description\", \"parameters\"}}"
    if not isinstance(fn.get("name"), str) or not fn["name"].strip():
        return "has no function name"
    if "description" in fn and not isinstance(fn["description"], str):
        return f"({fn['name']}): 'description' must be a string"
    params = fn.get("parameters")
    if params is None:
        return None
    if not isinstance(params, dict):
        return f"({fn['name']}): 'parameters' must be a JSON Schema object, not {_kind(params)}"
    import jsonschema  # here: only data with tools needs it (a tenth of a second off every other start)

    try:
        _validator(json.dumps(params, sort_keys=True))
    except jsonschema.SchemaError as e:
        return f"({fn['name']}): 'parameters' is not a valid JSON Schema: {e.message}"
    return None


@lru_cache(maxsize=256)
def _validator(schema_text: str):
    """A compiled validator per distinct schema (files repeat the same tools on every line)."""
    import jsonschema

    schema = json.loads(schema_text)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def read_tool_calls(value: Any, add: Add, at: str) -> tuple[ToolCall, ...] | None:
    """An assistant message's ``tool_calls``; ``arguments`` may be JSON text (OpenAI) or an object
    (Hugging Face datasets), kept as JSON text. None after reporting ``invalid_tool_call``."""
    if not isinstance(value, list) or not value:
        add("invalid_tool_call", f"{at}: 'tool_calls' must be a non-empty list, not {_kind(value)}"
            if not isinstance(value, list) else f"{at}: 'tool_calls' is empty")
        return None
    calls, ok = [], True
    for j, call in enumerate(value, start=1):
        fn = call.get("function") if isinstance(call, dict) else None
        problem = None
        if not isinstance(call, dict):
            problem = f"must be an object, not {_kind(call)}"
        elif not isinstance(call.get("id"), str) or not call["id"]:
            problem = "has no 'id'"
        elif call.get("type", "function") != "function":
            problem = f"has type {call.get('type')!r}; only 'function' calls exist"
        elif not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            problem = "has no 'function': {\"name\", \"arguments\"}"
        elif not isinstance(fn.get("arguments"), (str, dict)):
            problem = f"({fn['name']}): 'arguments' must be a JSON string, not {_kind(fn.get('arguments'))}"
        if problem:
            add("invalid_tool_call", f"{at}, tool call {j} {problem}")
            ok = False
            continue
        args = fn["arguments"] if isinstance(fn["arguments"], str) else json.dumps(fn["arguments"], ensure_ascii=False)
        calls.append(ToolCall(call["id"], fn["name"], args))
    return tuple(calls) if ok else None


def check_tool_flow(messages: list[Message] | tuple[Message, ...], tools: Iterable[dict], add: Add,
                    open_last_turn: bool = True) -> None:
    """Calls against ``tools`` (known name, JSON arguments matching the schema) and ids against results:
    every call answered once by a later ``tool`` message, every result answering an earlier call.

    ``open_last_turn``: the calls of a final assistant turn may go unanswered (a conversation that teaches
    the call itself); False for a preference prompt, where the replies come after.
    """
    schemas = {tool_name(t): t["function"].get("parameters") for t in tools}
    calls: dict[str, tuple[int, ToolCall]] = {}
    answered: dict[str, int] = {}
    for i, m in enumerate(messages, start=1):
        for call in m.tool_calls:
            if call.id in calls:
                add("duplicate_tool_call_id", f"message {i}: tool call id {call.id!r} was already used by "
                                              f"message {calls[call.id][0]}")
                continue
            calls[call.id] = (i, call)
            _check_call(call, schemas, add, f"message {i}")
        if m.role != "tool":
            continue
        if m.tool_call_id not in calls:
            add("unknown_tool_call_id", f"message {i} answers tool call {m.tool_call_id!r}, which no earlier "
                                        "assistant message made")
        elif m.tool_call_id in answered:
            add("tool_call_answered_twice", f"message {i} answers tool call {m.tool_call_id!r} again (first "
                                            f"answered by message {answered[m.tool_call_id]})")
        else:
            answered[m.tool_call_id] = i
    last = len(messages)
    for call_id, (i, call) in calls.items():
        if call_id not in answered and not (open_last_turn and i == last):
            add("unanswered_tool_call", f"message {i}: tool call {call_id!r} ({call.name}) is answered by no "
                                        "tool message, yet the conversation goes on")


def _check_call(call: ToolCall, schemas: dict[str, Any], add: Add, at: str) -> None:
    where = f"{at}, call {call.id!r} ({call.name})"
    if schemas and call.name not in schemas:
        add("unknown_tool", f"{where}: no tool of that name in 'tools' ({', '.join(sorted(schemas))})")
    try:
        args = json.loads(call.arguments)
    except ValueError as e:
        add("invalid_tool_arguments", f"{where}: arguments are not valid JSON ({e}): {call.arguments[:60]!r}")
        return
    if not isinstance(args, dict):
        add("invalid_tool_arguments", f"{where}: arguments must be a JSON object, not {_kind(args)}")
        return
    schema = schemas.get(call.name)
    if schema:
        from jsonschema.exceptions import best_match

        error = best_match(_validator(json.dumps(schema, sort_keys=True)).iter_errors(args))
        if error is not None:
            path = "".join(f"[{p!r}]" for p in error.absolute_path) or "(top level)"
            add("tool_arguments_mismatch", f"{where}: arguments {path}: {error.message}")


# ---------------------------------------------------------------------------------------------------------
# Rendering: the model's template when it knows tools, else the fallback text format
# ---------------------------------------------------------------------------------------------------------


def template_supports_tools(tokenizer) -> bool:
    """Whether the tokenizer's chat template renders ``tools`` (it refers to the variable at all)."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named templates: transformers uses "tool_use" when tools are given
        template = template.get("tool_use") or template.get("default") or ""
    return bool(template) and re.search(r"\btools\b", template) is not None


def _call_dict(call: ToolCall) -> dict:
    try:
        args = call.parsed_arguments()
    except ValueError:  # validation reports it; render what was written
        args = call.arguments
    return {"name": call.name, "arguments": args}


def format_tool_call(call: ToolCall) -> str:
    """One call in the fallback format."""
    return f"{TOOL_CALL_OPEN}\n{json.dumps(_call_dict(call), ensure_ascii=False)}\n{TOOL_CALL_CLOSE}"


def tools_system_text(tools: Iterable[dict]) -> str:
    """The system-turn block that lists the tool schemas in the fallback format."""
    lines = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    return f"{TOOLS_PREAMBLE}<tools>\n{lines}\n</tools>{TOOLS_INSTRUCTIONS}"


def fallback_messages(messages: Iterable[Message], tools: tuple[dict, ...]) -> list[dict]:
    """Plain ``{"role", "content"}`` dicts with tools, calls and results written as text."""
    out: list[dict] = []
    for m in messages:
        if m.role == "tool":
            out.append({"role": "tool", "content": f"<tool_response>\n{m.content}\n</tool_response>"})
        elif m.tool_calls:
            calls = "\n".join(format_tool_call(c) for c in m.tool_calls)
            out.append({"role": m.role, "content": f"{m.content}\n{calls}" if m.content else calls})
        else:
            out.append({"role": m.role, "content": m.content})
    if tools:
        block = tools_system_text(tools)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{block}"}
        else:
            out.insert(0, {"role": "system", "content": block})
    return out


def native_messages(messages: Iterable[Message]) -> list[dict]:
    """Dicts in the shape Hugging Face tool-aware templates expect (arguments as objects, results with the
    called function's name)."""
    names: dict[str, str] = {}
    out: list[dict] = []
    for m in messages:
        d: dict = {"role": m.role, "content": m.content}
        if m.tool_calls:
            d["tool_calls"] = [{"id": c.id, "type": "function", "function": _call_dict(c)} for c in m.tool_calls]
            names.update((c.id, c.name) for c in m.tool_calls)
        if m.role == "tool":
            d["tool_call_id"] = m.tool_call_id
            d["name"] = names.get(m.tool_call_id or "", "")
        out.append(d)
    return out


def template_messages(tokenizer, messages: Iterable[Message], tools: tuple[dict, ...] = ()
                      ) -> tuple[list[dict], list[dict] | None]:
    """``(messages, tools)`` to hand to ``apply_chat_template``: native when the template knows tools,
    the fallback text format (and no ``tools`` argument) otherwise."""
    messages = list(messages)
    uses_tools = bool(tools) or any(m.tool_calls or m.role == "tool" for m in messages)
    if not uses_tools:
        return [{"role": m.role, "content": m.content} for m in messages], None
    if template_supports_tools(tokenizer):
        return native_messages(messages), list(tools) or None
    return fallback_messages(messages, tools), None


# ---------------------------------------------------------------------------------------------------------
# Parsing generated text back into calls
# ---------------------------------------------------------------------------------------------------------


def split_tool_calls(text: str) -> tuple[str, list[dict] | None]:
    """``(content, calls)`` of text in the fallback format: the text before the first ``<tool_call>``
    (stripped) and :func:`parse_tool_calls`'s result."""
    start = text.find(TOOL_CALL_OPEN)
    if start < 0:
        return text, None
    return text[:start].strip(), parse_tool_calls(text)


def parse_tool_calls(text: str) -> list[dict] | None:
    """The calls in ``text`` (fallback format) as ``[{"name": str, "arguments": str}]`` with arguments as
    JSON text, OpenAI's representation. None when the text has no ``<tool_call>`` at all (a plain answer);
    blocks that are not ``{"name": str, "arguments": object}`` JSON are left out, so a text that tried to
    call but wrote only broken blocks gives ``[]``. An unclosed final block (generation cut at a stop
    token) is still read."""
    if TOOL_CALL_OPEN not in text:
        return None
    calls = []
    for block in _TOOL_CALL_BLOCK.findall(text):
        try:  # raw_decode: an unclosed last block may end in part of its closing tag ("</tool_")
            obj = _DECODER.raw_decode(block)[0]
        except ValueError:
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
            continue
        args = obj.get("arguments", obj.get("parameters", {}))
        if isinstance(args, str):  # some models write the arguments as JSON text
            try:
                args = json.loads(args)
            except ValueError:
                continue
        if not isinstance(args, dict):
            continue
        calls.append({"name": obj["name"], "arguments": json.dumps(args, ensure_ascii=False)})
    return calls
