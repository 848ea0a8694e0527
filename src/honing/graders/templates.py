"""OpenAI's grader templates: ``{{item.<path>}}``, ``{{sample.output_text}}``, ``{{sample.output_json.<path>}}``.

A path is dotted field names with optional list indices (``item.answer.city``, ``item.tags[0]`` or
``item.tags.0``). Strings are inserted as they are; any other JSON value as compact JSON. Templates are
parsed once, when the grader is loaded, so a malformed one is refused before any sample is graded."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from honing.graders.core import GraderError

_TAG = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_SEGMENT = re.compile(r"\.([^.\[\]\s{}]+)|\[(\d+)\]")
NAMESPACES = ("item", "sample")
SAMPLE_FIELDS = ("output_text", "output_json", "output_tools", "choices")


@dataclass(frozen=True)
class Ref:
    """One ``{{namespace.path}}`` in a template."""

    text: str  # as written, for messages
    namespace: str
    path: tuple[str | int, ...]


class Unresolved(Exception):
    """A template that cannot be filled for one sample: ``flag`` is the metadata.errors flag to raise."""

    def __init__(self, flag: str, detail: str):
        super().__init__(detail)
        self.flag = flag


@dataclass(frozen=True)
class Template:
    parts: tuple[str | Ref, ...]

    def refs(self) -> list[Ref]:
        return [p for p in self.parts if isinstance(p, Ref)]

    def item_fields(self) -> set[str]:
        return {str(r.path[0]) for r in self.refs() if r.namespace == "item"}

    def render(self, sample_ns: dict, item: dict) -> str:
        return "".join(p if isinstance(p, str) else _as_text(resolve(p, sample_ns, item)) for p in self.parts)


def parse_template(text: Any, where: str) -> Template:
    if not isinstance(text, str):
        raise GraderError(f"{where}: must be a string, not {type(text).__name__}")
    parts: list[str | Ref] = []
    pos = 0
    for m in _TAG.finditer(text):
        _no_stray_braces(text[pos:m.start()], where)
        if m.start() > pos:
            parts.append(text[pos:m.start()])
        parts.append(_parse_ref(m.group(0), m.group(1).strip(), where))
        pos = m.end()
    _no_stray_braces(text[pos:], where)
    if pos < len(text):
        parts.append(text[pos:])
    return Template(tuple(parts))


def _no_stray_braces(literal: str, where: str) -> None:
    if "{{" in literal:
        raise GraderError(f"{where}: '{{{{' without a closing '}}}}'")


def _parse_ref(tag: str, inner: str, where: str) -> Ref:
    m = re.match(r"^\w+", inner)
    namespace = m.group(0) if m else inner
    rest = inner[len(namespace):]
    if namespace not in NAMESPACES:
        raise GraderError(f"{where}: template '{tag}': namespace '{namespace}' is not one of item, sample")
    path: list[str | int] = []
    pos = 0
    for seg in _SEGMENT.finditer(rest):
        if seg.start() != pos:
            break
        path.append(seg.group(1) if seg.group(1) is not None else int(seg.group(2)))
        pos = seg.end()
    if pos != len(rest) or not path:
        raise GraderError(f"{where}: template '{tag}': expected {namespace}.<field> (a field name after "
                          f"'{namespace}.', then more .<field> or [<index>])")
    if isinstance(path[0], int):
        raise GraderError(f"{where}: template '{tag}': {namespace} is an object; start with a field name")
    if namespace == "sample":
        if path[0] not in SAMPLE_FIELDS:
            raise GraderError(f"{where}: template '{tag}': sample has no field '{path[0]}' "
                              f"(one of {', '.join(SAMPLE_FIELDS)})")
        if path[0] == "output_text" and len(path) > 1:
            raise GraderError(f"{where}: template '{tag}': sample.output_text is a string; "
                              "use sample.output_json.<field> for fields of a JSON answer")
    return Ref(tag, namespace, tuple(path))


def resolve(ref: Ref, sample_ns: dict, item: dict) -> Any:
    value: Any = sample_ns if ref.namespace == "sample" else item
    walked = ref.namespace
    for i, key in enumerate(ref.path):
        if ref.namespace == "sample" and i == 1 and ref.path[0] == "output_json" and value is None:
            raise Unresolved("sample_parse_error", f"{ref.text}: the sample's output is not JSON")
        found, value = _step(value, key)
        if not found:
            flag = "sample_parse_error" if ref.namespace == "sample" else "invalid_variable_error"
            raise Unresolved(flag, f"{ref.text}: {walked} has no {_describe(key)}")
        walked += f"[{key}]" if isinstance(key, int) else f".{key}"
    return value


def _step(value: Any, key: str | int) -> tuple[bool, Any]:
    if isinstance(value, dict):
        return (str(key) in value, value.get(str(key)))
    if isinstance(value, list):
        try:
            index = int(key)
        except ValueError:
            return False, None
        return (0 <= index < len(value), value[index] if 0 <= index < len(value) else None)
    return False, None


def _describe(key: str | int) -> str:
    return f"index {key}" if isinstance(key, int) else f"field '{key}'"


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":"))
