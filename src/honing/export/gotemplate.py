"""A small renderer for the subset of Go's text/template that Ollama chat templates use, with Ollama's chat
semantics, so an export can prove its ``TEMPLATE`` renders the same prompt as the model's Jinja chat
template before writing it.

Supported, with Go's meaning: literal text and the ``{{-`` / ``-}}`` whitespace trimming markers; fields
(``.Content``, ``$.System``, ``$m.Role``); variables (``$x := ...``, ``range $i, $m := ...``);
``{{ range }} ... {{ else }} ... {{ end }}``; ``{{ if }} ... {{ else if }} ... {{ else }} ... {{ end }}``;
the functions ``eq ne lt le gt ge and or not len slice index`` with parenthesised arguments; string and
integer literals. Anything else (pipes, ``with``, ``define``, other functions, a field the data does not
have) is an error, never a silent pass. (Go's own text/template renders the same: tests/test_families.py
cross-checks when a Go toolchain is installed.)
"""

from __future__ import annotations

import json
import re

_ACTION = re.compile(r"\{\{(-\s)?\s*(.*?)\s*(\s-)?\}\}", re.DOTALL)
_TOKEN = re.compile(r'\s*(\(|\)|"(?:[^"\\]|\\.)*"|-?\d+|\$[A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*'
                    r"|(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.|[A-Za-z_][A-Za-z0-9_]*)")


class GoTemplateError(ValueError):
    pass


# -- lexing: text and actions, trim markers applied ---------------------------------------------------
def _tokens(template: str) -> list[tuple[str, str]]:
    """[("text", s) | ("action", body)] with trim markers applied to the neighbouring text."""
    out: list[tuple[str, str]] = []
    pos = 0
    trim_next = False
    for m in _ACTION.finditer(template):
        text = template[pos:m.start()]
        if trim_next:
            text = text.lstrip(" \t\r\n")
        if m.group(1):
            text = text.rstrip(" \t\r\n")
        if text:
            out.append(("text", text))
        if not m.group(2).startswith("/*"):  # a comment renders nothing
            out.append(("action", m.group(2)))
        trim_next = bool(m.group(3))
        pos = m.end()
    text = template[pos:]
    if trim_next:
        text = text.lstrip(" \t\r\n")
    if text:
        out.append(("text", text))
    return out


def _words(expr: str) -> list:
    """An expression's operands as a nested list: parentheses become sub-lists."""
    stack: list[list] = [[]]
    pos = 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            raise GoTemplateError(f"unsupported template expression {expr!r}")
        word = m.group(1)
        pos = m.end()
        if word == "(":
            stack.append([])
        elif word == ")":
            if len(stack) == 1:
                raise GoTemplateError(f"unbalanced ')' in {expr!r}")
            inner = stack.pop()
            stack[-1].append(inner)
        else:
            stack[-1].append(word)
        if expr[pos:].strip() == "":
            break
    if len(stack) != 1:
        raise GoTemplateError(f"unbalanced '(' in {expr!r}")
    return stack[0]


# -- parsing: a tree of nodes --------------------------------------------------------------------------
def _parse(tokens, i: int = 0, until: tuple[str, ...] = ()) -> tuple[list, int, str, str]:
    """Nodes: ("text", s) | ("print", cmd) | ("set", var, cmd) | ("range", vars, cmd, body, other)
    | ("if", cmd, then, other). Returns (nodes, next index, the closing keyword, its rest)."""
    nodes: list = []
    while i < len(tokens):
        kind, body = tokens[i]
        i += 1
        if kind == "text":
            nodes.append(("text", body))
            continue
        word, _, rest = body.partition(" ")
        rest = rest.strip()
        if word in until:
            return nodes, i, word, rest
        if word in ("if", "range"):
            node, i = _parse_block(word, rest, tokens, i)
            nodes.append(node)
        elif word in ("else", "end"):
            raise GoTemplateError(f"{{{{ {body} }}}} without an open if or range")
        elif re.fullmatch(r"\$[A-Za-z0-9_]+\s*:?=\s*.+", body, re.DOTALL):
            var, _, expr = body.partition("=")
            nodes.append(("set", var.rstrip(":").strip(), _words(expr)))
        elif word in ("with", "define", "template", "block", "break", "continue") or "|" in body:
            raise GoTemplateError(f"unsupported template action {{{{ {body} }}}}")
        else:
            nodes.append(("print", _words(body)))
    if until:
        raise GoTemplateError(f"template ends without {{{{ {'/'.join(until)} }}}}")
    return nodes, i, "", ""


def _parse_block(word: str, rest: str, tokens, i: int) -> tuple[tuple, int]:
    if word == "range":
        names: tuple[str, ...] = ()
        m = re.fullmatch(r"(\$[A-Za-z0-9_]*)(?:\s*,\s*(\$[A-Za-z0-9_]*))?\s*:=\s*(.+)", rest, re.DOTALL)
        if m:
            names = tuple(n for n in m.groups()[:2] if n)
            rest = m.group(3)
        body, i, stop, _ = _parse(tokens, i, ("else", "end"))
        other: list = []
        if stop == "else":
            other, i, _, _ = _parse(tokens, i, ("end",))
        return ("range", names, _words(rest), body, other), i
    then, i, stop, stop_rest = _parse(tokens, i, ("else", "end"))
    other = []
    if stop == "else" and stop_rest.startswith("if "):  # else if: a nested if sharing this block's end
        node, i = _parse_block("if", stop_rest[3:].strip(), tokens, i)
        other = [node]
    elif stop == "else":
        other, i, _, _ = _parse(tokens, i, ("end",))
    return ("if", _words(rest), then, other), i


# -- evaluation with Go's semantics ----------------------------------------------------------------------
def _truth(value) -> bool:
    return value is not None and value is not False and value != 0 and value != "" and not (
        isinstance(value, (list, dict, tuple)) and not value)


def _same_kind(a, b) -> None:
    if type(a) is not type(b) and not (isinstance(a, int) and isinstance(b, int)):
        raise GoTemplateError(f"incompatible types for comparison: {a!r} and {b!r}")


def _eq(a, *others):
    for b in others:
        _same_kind(a, b)
    return any(a == b for b in others)


def _ordered(op):
    def compare(a, b):
        _same_kind(a, b)
        return op(a, b)
    return compare


_FUNCTIONS = {
    "eq": _eq,
    "ne": lambda a, b: not _eq(a, b),
    "lt": _ordered(lambda a, b: a < b), "le": _ordered(lambda a, b: a <= b),
    "gt": _ordered(lambda a, b: a > b), "ge": _ordered(lambda a, b: a >= b),
    "not": lambda a: not _truth(a),
    "len": len,
    "slice": lambda x, *ij: x[ij[0]:ij[1]] if len(ij) == 2 else x[ij[0]:] if ij else x,  # Go: x[i:j], x[i:]
    "index": lambda x, *keys: _index(x, keys),
    "json": lambda x: json.dumps(x, separators=(",", ":"), ensure_ascii=False),
}


def _index(x, keys):
    for k in keys:
        x = x[k]
    return x


def _field(value, path: list[str], expr: str):
    for name in path:
        if not isinstance(value, dict) or name not in value:
            raise GoTemplateError(f"can't evaluate field {name} in {expr}")
        value = value[name]
    return value


def _operand(word, dot, scope: dict):
    if isinstance(word, list):
        return _command(word, dot, scope)
    if word.startswith('"'):
        return json.loads(word)
    if re.fullmatch(r"-?\d+", word):
        return int(word)
    if word == ".":
        return dot
    if word.startswith("."):
        return _field(dot, word[1:].split("."), word)
    if word.startswith("$"):
        name, *path = word.split(".")
        if name not in scope:
            raise GoTemplateError(f"undefined variable {name}")
        return _field(scope[name], path, word)
    if word in ("true", "false"):
        return word == "true"
    raise GoTemplateError(f"function {word!r} not defined")


def _command(words: list, dot, scope: dict):
    if not words:
        raise GoTemplateError("empty command")
    head = words[0]
    if isinstance(head, str) and head in ("and", "or"):  # short-circuit, returning the deciding operand
        value = None
        for w in words[1:]:
            value = _operand(w, dot, scope)
            if _truth(value) == (head == "or"):
                return value
        return value
    if isinstance(head, str) and head in _FUNCTIONS:
        return _FUNCTIONS[head](*(_operand(w, dot, scope) for w in words[1:]))
    if len(words) > 1:
        raise GoTemplateError(f"{head!r} is not a function")
    return _operand(head, dot, scope)


def _text(value) -> str:
    if value is True or value is False:
        return "true" if value else "false"
    if value is None:
        return "<no value>"
    return str(value)


def _render(nodes: list, dot, scope: dict, out: list[str]) -> None:
    for node in nodes:
        kind = node[0]
        if kind == "text":
            out.append(node[1])
        elif kind == "print":
            out.append(_text(_command(node[1], dot, scope)))
        elif kind == "set":
            scope[node[1]] = _command(node[2], dot, scope)
        elif kind == "if":
            _render(node[2] if _truth(_command(node[1], dot, scope)) else node[3], dot, dict(scope), out)
        elif kind == "range":
            _render_range(node, dot, scope, out)


def _render_range(node, dot, scope: dict, out: list[str]) -> None:
    _, names, cmd, body, other = node
    items = _command(cmd, dot, scope)
    if not _truth(items):
        _render(other, dot, dict(scope), out)
        return
    for i, item in enumerate(items):
        inner = dict(scope)
        if len(names) == 2:
            inner[names[0]], inner[names[1]] = i, item
        elif names:
            inner[names[0]] = item
        _render(body, item, inner, out)


def render(template: str, data: dict) -> str:
    nodes, _, _, _ = _parse(_tokens(template))
    out: list[str] = []
    _render(nodes, data, {"$": data}, out)
    return "".join(out)


def collate(messages: list[dict]) -> tuple[str, list[dict]]:
    """What Ollama gives a template: every system message's content joined (``.System``), and the messages
    with consecutive ones of the same role merged by a blank line (tool results apart)."""
    systems, merged = [], []
    for m in messages:
        if m["role"] == "system":
            systems.append(m["content"])
        if merged and merged[-1]["Role"] == m["role"] and m["role"] != "tool":
            merged[-1]["Content"] += "\n\n" + m["content"]
        else:
            merged.append({"Role": m["role"], "Content": m["content"]})
    return "\n\n".join(systems), merged


def render_ollama_chat(template: str, messages: list[dict], system: str | None = None) -> str:
    """The prompt Ollama builds for a chat request: the Modelfile's ``SYSTEM`` becomes the first message
    when the request has no system message of its own, then the template renders ``.Messages``."""
    messages = list(messages)
    if system and (not messages or messages[0]["role"] != "system"):
        messages.insert(0, {"role": "system", "content": system})
    joined, msgs = collate(messages)
    return render(template, {"Messages": msgs, "System": joined, "Prompt": "", "Response": "", "Tools": []})
