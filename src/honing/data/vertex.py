"""Google Vertex AI (Gemini) tuning files: ``contents`` of ``user``/``model`` turns made of ``parts``.

Supervised tuning (one example per line)::

    {"systemInstruction": {"role"?: ..., "parts": [{"text": "..."}]},
     "contents": [{"role": "user", "parts": [{"text": "..."}]}, {"role": "model", "parts": [{"text": "..."}]}],
     "tools"?: [{"functionDeclarations": [{"name", "description", "parameters"}]}]}

Preference tuning: the same ``contents`` (ending with a user turn) and optional ``system_instruction``, plus
``completions``: two ``{"score": 0|1, "completion": {"role": "model", "parts": [...]}}``, score 1 the
preferred one.

Text parts of a turn are joined as Gemini joins them (no separator). ``functionCall`` parts of a model turn
become tool calls (their ``id``, or ``call_1``, ``call_2``… in order) and ``functionResponse`` parts tool
results answering the oldest open call of the function they name. Both spellings of the keys Google's JSON
accepts (``systemInstruction`` / ``system_instruction``, ``functionCall`` / ``function_call``…) are read.

Problems are reported through the record checker of :mod:`honing.data.formats` (anything with ``add``,
``text`` and ``keys``), so this module imports nothing from it.
"""

from __future__ import annotations

import json
from typing import Any

from honing.data.conversation import Message
from honing.data.tools import read_tool_calls, read_tools

VERTEX_ROLES = {"user": "user", "model": "assistant"}
SYSTEM_KEYS = ("systemInstruction", "system_instruction")
FUNCTION_CALL_KEYS = ("functionCall", "function_call")
FUNCTION_RESPONSE_KEYS = ("functionResponse", "function_response")
DECLARATION_KEYS = ("functionDeclarations", "function_declarations")


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", type(None): "null"}.get(type(value), type(value).__name__)


def _first(d: dict, keys: tuple[str, ...]) -> Any:
    return next((d[k] for k in keys if k in d), None)


class _Ids:
    """Ids for calls without one, and which open call a functionResponse answers."""

    def __init__(self):
        self.n = 0
        self.open: dict[str, list[str]] = {}

    def call(self, name: str, given: Any) -> str:
        self.n += 1
        call_id = given if isinstance(given, str) and given else f"call_{self.n}"
        self.open.setdefault(name, []).append(call_id)
        return call_id

    def answer(self, name: str, given: Any) -> str:
        pending = self.open.get(name, [])
        if isinstance(given, str) and given in pending:
            pending.remove(given)
            return given
        return pending.pop(0) if pending else f"(no open call of {name})"


def _parts(c, turn: dict, at: str) -> list | None:
    parts = turn.get("parts")
    if parts is None or parts == []:
        c.add("empty_parts", f"{at} has no parts" + (" (the model's reply is missing)"
                                                      if turn.get("role") == "model" else ""))
        return None
    if not isinstance(parts, list):
        c.add("invalid_content", f"{at}: 'parts' must be a list, not {_kind(parts)}")
        return None
    return parts


def _turn(c, turn: Any, at: str, ids: _Ids, roles: dict) -> list[Message] | None:
    """One Vertex turn as messages: a user turn's function responses become tool messages before its text."""
    if not isinstance(turn, dict):
        c.add("invalid_message", f"{at} must be an object, not {_kind(turn)}")
        return None
    c.keys(turn, ("role", "parts"), where=f"{at}: ")
    role = turn.get("role")
    if role is None:
        c.add("missing_role", f"{at} has no 'role' (user or model)")
    elif role not in roles:
        c.add("unknown_role", f"{at} has role {role if isinstance(role, str) else _kind(role)!r}; expected one of "
                              f"{', '.join(roles)}")
        role = None
    parts = _parts(c, turn, at)
    if parts is None or role is None:
        return None
    texts, calls, results, ok = [], [], [], True
    for j, part in enumerate(parts, start=1):
        where = f"{at}, part {j}"
        if not isinstance(part, dict):
            c.add("invalid_content", f"{where} must be an object, not {_kind(part)}")
            ok = False
        elif "text" in part:
            text = c.text(part["text"], f"{where} text", allow_empty=True, category="invalid_content")
            ok = ok and text is not None
            texts.append(text or "")
        elif _first(part, FUNCTION_CALL_KEYS) is not None and roles[role] == "assistant":
            calls.append(_function_call(_first(part, FUNCTION_CALL_KEYS), ids))
        elif _first(part, FUNCTION_RESPONSE_KEYS) is not None and roles[role] == "user":
            result = _function_response(c, _first(part, FUNCTION_RESPONSE_KEYS), ids, where)
            ok = ok and result is not None
            results.append(result)
        elif not part:
            c.add("missing_content", f"{where} has no 'text'")
            ok = False
        else:
            c.add("invalid_content", f"{where}: only text parts, model function calls and user function responses "
                                     f"can be trained (got {', '.join(sorted(part))})")
            ok = False
    tool_calls = read_tool_calls(calls, c.add, at) if calls else ()
    text = "".join(texts)
    if not ok or tool_calls is None:
        return None
    if not text.strip() and not tool_calls and not results:
        c.add("empty_content", f"{at}: its text is empty")
        return None
    msgs = [m for m in results if m is not None]
    if text.strip() or tool_calls:
        msgs.append(Message(roles[role], text, tool_calls=tool_calls))  # type: ignore[arg-type]
    return msgs


def _function_call(fc: Any, ids: _Ids) -> Any:
    """A functionCall part in OpenAI's shape (read_tool_calls reports what is wrong with it)."""
    if not isinstance(fc, dict) or not isinstance(fc.get("name"), str):
        return {"type": "function", "function": fc}
    args = fc.get("args", {})
    return {"id": ids.call(fc["name"], fc.get("id")), "type": "function",
            "function": {"name": fc["name"], "arguments": args if isinstance(args, (dict, str)) else json.dumps(args)}}


def _function_response(c, fr: Any, ids: _Ids, where: str) -> Message | None:
    if not isinstance(fr, dict) or not isinstance(fr.get("name"), str) or "response" not in fr:
        c.add("invalid_content", f"{where}: a functionResponse needs the function's 'name' and a 'response'")
        return None
    content = json.dumps(fr["response"], ensure_ascii=False)
    return Message("tool", content, tool_call_id=ids.answer(fr["name"], fr.get("id")))


def read_contents(c, value: Any, key: str = "contents") -> list[Message] | None:
    """``contents`` as messages; None after reporting every problem of every turn."""
    if not isinstance(value, list):
        c.add("invalid_messages", f"{key!r} must be a list of turns, not {_kind(value)}")
        return None
    if not value:
        c.add("empty_messages", f"{key!r} is empty")
        return None
    ids, out, ok = _Ids(), [], True
    for i, turn in enumerate(value, start=1):
        msgs = _turn(c, turn, f"turn {i}", ids, VERTEX_ROLES)
        if msgs is None:
            ok = False
        else:
            out += msgs
    return out if ok else None


def read_system(c, record: dict) -> list[Message] | None:
    """The system instruction as a one-message list ([] when absent); None after an error."""
    value = _first(record, SYSTEM_KEYS)
    if value is None:
        return []
    if not isinstance(value, dict):
        c.add("invalid_field", f"the system instruction must be an object with 'parts', not {_kind(value)}")
        return None
    msgs = _turn(c, {"role": "user", "parts": value.get("parts")}, "the system instruction", _Ids(),
                 {"user": "system"})
    c.keys(value, ("role", "parts"), where="the system instruction: ")
    return msgs


def read_vertex_tools(c, value: Any) -> tuple[dict, ...] | None:
    """Vertex ``tools`` ([{"functionDeclarations": [...]}]) as OpenAI tools; OpenAPI's upper-case type
    names ("STRING", "OBJECT") become JSON Schema's."""
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        c.add("invalid_tools", f"'tools' must be a list of {{\"functionDeclarations\": [...]}}, not {_kind(value)}")
        return None
    functions = []
    for t in value:
        decls = _first(t, DECLARATION_KEYS)
        if not isinstance(decls, list):
            c.add("invalid_tools", "each tool must hold a 'functionDeclarations' list (other Vertex tools, such as "
                                   "retrieval, cannot be trained)")
            return None
        functions += [_lower_types(d) for d in decls]
    return read_tools([{"type": "function", "function": f} for f in functions], c.add)


def _lower_types(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: v.lower() if k == "type" and isinstance(v, str) else _lower_types(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_lower_types(v) for v in value]
    return value


def read_completions(c, value: Any) -> tuple[str, str] | None:
    """(preferred, dispreferred) text of a preference record's ``completions``."""
    if not isinstance(value, list) or len(value) != 2:
        c.add("invalid_field", "'completions' must hold two completions, one with score 1 (preferred) and one with "
                               f"score 0, not {len(value) if isinstance(value, list) else _kind(value)}")
        return None
    by_score: dict[int, str] = {}
    for i, item in enumerate(value, start=1):
        at = f"completion {i}"
        if not isinstance(item, dict) or "completion" not in item or "score" not in item:
            c.add("missing_field", f"{at} needs a 'score' (0 or 1) and a 'completion' model turn")
            return None
        c.keys(item, ("score", "completion"), where=f"{at}: ")
        score = item["score"]
        if isinstance(score, bool) or score not in (0, 1):
            c.add("invalid_field", f"{at}: score must be 0 (dispreferred) or 1 (preferred), not {json.dumps(score)}")
            return None
        msgs = _turn(c, item["completion"], at, _Ids(), {"model": "assistant"})
        if msgs is None:
            return None
        if msgs[-1].tool_calls:
            c.add("invalid_content", f"{at}: a preference reply must be text, not a function call")
            return None
        by_score[int(score)] = msgs[-1].content
    if len(by_score) != 2:
        c.add("invalid_field", "the two completions have the same score; one must be 1 and the other 0")
        return None
    return by_score[1], by_score[0]
