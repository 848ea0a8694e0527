"""Tool calling in an exported chat template, for models whose own template knows nothing of tools.

Honing trains such models on its fallback text format (``honing.data.tools``: schemas in the system turn
inside ``<tools></tools>``, calls as ``<tool_call>`` blocks, results as ``<tool_response>`` turns). A GGUF
must render a request with ``tools`` the same way, or the served model sees prompts unlike its training.
:func:`tool_use_template` wraps the model's template: a Jinja preamble rewrites ``messages`` (and ``tools``)
into the fallback text exactly as :func:`honing.data.tools.fallback_messages` does, then the original
template renders them. The export writes it as the GGUF's ``tokenizer.chat_template.tool_use``, the named
template llama.cpp applies when a request carries tools (``llama-server --jinja``); the default template
stays the model's own. Tested equal to Honing's rendering in tests/test_export_tool_template.py.
"""

from __future__ import annotations

import json

from honing.data.tools import TOOLS_INSTRUCTIONS, TOOLS_PREAMBLE, template_supports_tools


def _literal(text: str) -> str:
    """A Jinja string literal holding ``text`` (JSON's escapes are Jinja's)."""
    return json.dumps(text, ensure_ascii=False)


_PREAMBLE = """{%- set ns = namespace(msgs=[]) -%}
{%- for m in messages -%}
  {%- set text = m.content if m.content else '' -%}
  {%- if m.role == 'tool' -%}
    {%- set ns.msgs = ns.msgs + [{'role': 'tool', 'content': '<tool_response>\\n' ~ text ~ '\\n</tool_response>'}] -%}
  {%- elif m.tool_calls -%}
    {%- set calls = namespace(text='') -%}
    {%- for c in m.tool_calls -%}
      {%- set f = c.function if c.function is defined else c -%}
      {%- set args = f.arguments if f.arguments is string else f.arguments | tojson -%}
      {%- set one = '<tool_call>\\n{"name": ' ~ (f.name | tojson) ~ ', "arguments": ' ~ args ~ '}\\n</tool_call>' -%}
      {%- set calls.text = calls.text ~ ('\\n' if calls.text else '') ~ one -%}
    {%- endfor -%}
    {%- set ns.msgs = ns.msgs + [{'role': m.role, 'content': (text ~ '\\n' ~ calls.text) if text else calls.text}] -%}
  {%- else -%}
    {%- set ns.msgs = ns.msgs + [{'role': m.role, 'content': text}] -%}
  {%- endif -%}
{%- endfor -%}
{%- if tools -%}
  {%- set listed = namespace(text='') -%}
  {%- for t in tools -%}
    {%- set listed.text = listed.text ~ ('\\n' if listed.text else '') ~ (t | tojson) -%}
  {%- endfor -%}
  {%- set block = PREAMBLE ~ '<tools>\\n' ~ listed.text ~ '\\n</tools>' ~ INSTRUCTIONS -%}
  {%- if ns.msgs and ns.msgs[0].role == 'system' -%}
    {%- set ns.msgs = [{'role': 'system', 'content': ns.msgs[0].content ~ '\\n\\n' ~ block}] + ns.msgs[1:] -%}
  {%- else -%}
    {%- set ns.msgs = [{'role': 'system', 'content': block}] + ns.msgs -%}
  {%- endif -%}
{%- endif -%}
{%- set messages = ns.msgs -%}
"""


def tool_use_template(template: str) -> str:
    """``template`` with the fallback tool format in front (see the module docstring)."""
    preamble = _PREAMBLE.replace("PREAMBLE", _literal(TOOLS_PREAMBLE)).replace("INSTRUCTIONS",
                                                                             _literal(TOOLS_INSTRUCTIONS))
    return preamble + template


def named_templates(template: str) -> list[dict]:
    """The chat templates a GGUF carries: the model's own as ``default``, plus ``tool_use`` when the model's
    template does not render tools itself."""
    out = [{"name": "default", "template": template}]
    if not template_supports_tools(type("T", (), {"chat_template": template})()):
        out.append({"name": "tool_use", "template": tool_use_template(template)})
    return out


__all__ = ["named_templates", "tool_use_template"]
