"""A small renderer for the subset of Go's text/template that Honing's Ollama templates use, with
Ollama's chat semantics, so an export can prove its ``TEMPLATE`` renders the same prompt as the model's
Jinja chat template before writing it.

Supported: literal text; ``{{ .Field }}`` (``.System``, ``.Role``, ``.Content``, ``.Prompt``);
``{{ range .Messages }} ... {{ end }}``; ``{{ if .Field }} ... {{ else }} ... {{ end }}``; ``{{ if eq .Role
"x" }}``; and the ``{{-`` / ``-}}`` whitespace trimming markers. Anything else is an error, never a
silent pass.
"""

from __future__ import annotations

import re

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.DOTALL)


class GoTemplateError(ValueError):
    pass


def _tokens(template: str) -> list[tuple[str, str]]:
    """[("text", s) | ("action", body)] with trim markers applied to the neighbouring text."""
    out: list[tuple[str, str]] = []
    pos = 0
    trim_next = False
    for m in _ACTION.finditer(template):
        text = template[pos:m.start()]
        if trim_next:
            text = text.lstrip()
        if m.group(1):
            text = text.rstrip()
        if text:
            out.append(("text", text))
        out.append(("action", m.group(2)))
        trim_next = bool(m.group(3))
        pos = m.end()
    text = template[pos:]
    if trim_next:
        text = text.lstrip()
    if text:
        out.append(("text", text))
    return out


def _parse(tokens: list[tuple[str, str]], i: int = 0, until: tuple[str, ...] = ()) -> tuple[list, int, str]:
    """A tree of nodes: ("text", s) | ("field", name) | ("range", field, body) | ("if", cond, then, else)."""
    nodes: list = []
    while i < len(tokens):
        kind, body = tokens[i]
        i += 1
        if kind == "text":
            nodes.append(("text", body))
            continue
        word = body.split()[0] if body else ""
        if word in until:
            return nodes, i, word
        if word == "range":
            inner, i, stop = _parse(tokens, i, ("end",))
            nodes.append(("range", body[len("range"):].strip(), inner))
        elif word == "if":
            then, i, stop = _parse(tokens, i, ("else", "end"))
            other: list = []
            if stop == "else":
                other, i, stop = _parse(tokens, i, ("end",))
            nodes.append(("if", body[len("if"):].strip(), then, other))
        elif re.fullmatch(r"\$?\.[A-Za-z]+", body):
            nodes.append(("field", body))
        else:
            raise GoTemplateError(f"unsupported template action {{{{ {body} }}}}")
    if until:
        raise GoTemplateError(f"template ends without {{{{ {'/'.join(until)} }}}}")
    return nodes, i, ""


def _value(expr: str, dot: dict, root: dict):
    scope = root if expr.startswith("$") else dot
    name = expr.lstrip("$").lstrip(".")
    if name not in scope:
        raise GoTemplateError(f"unknown field .{name}")
    return scope[name]


def _truth(cond: str, dot: dict, root: dict) -> bool:
    m = re.fullmatch(r'eq\s+(\$?\.[A-Za-z]+)\s+"([^"]*)"', cond)
    if m:
        return _value(m.group(1), dot, root) == m.group(2)
    return bool(_value(cond, dot, root))


def _render(nodes: list, dot: dict, root: dict, out: list[str]) -> None:
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "field":
            out.append(str(_value(node[1], dot, root)))
        elif node[0] == "range":
            for item in _value(node[1], dot, root):
                _render(node[2], item, root, out)
        elif node[0] == "if":
            _render(node[2] if _truth(node[1], dot, root) else node[3], dot, root, out)


def render(template: str, data: dict) -> str:
    nodes, _, _ = _parse(_tokens(template))
    out: list[str] = []
    _render(nodes, data, data, out)
    return "".join(out)


def render_ollama_chat(template: str, messages: list[dict], system: str | None = None) -> str:
    """The prompt Ollama builds for a chat request: the Modelfile's ``SYSTEM`` becomes the first message
    when the request has no system message of its own, then the template renders ``.Messages``."""
    msgs = [{"Role": m["role"], "Content": m["content"]} for m in messages]
    if system and (not msgs or msgs[0]["Role"] != "system"):
        msgs.insert(0, {"Role": "system", "Content": system})
    first_system = msgs[0]["Content"] if msgs and msgs[0]["Role"] == "system" else ""
    return render(template, {"Messages": msgs, "System": first_system, "Prompt": ""})
