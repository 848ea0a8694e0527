"""Tool calling survives the export: for a model whose chat template knows nothing of tools (the embedded
SmolLM2), the GGUF carries a ``tool_use`` template that renders a request with tools exactly as Honing
rendered its training examples (the fallback format of honing.data.tools), and the default template is the
model's own."""

from __future__ import annotations

import pytest

from honing.data.conversation import Message, ToolCall
from honing.data.tools import fallback_messages, native_messages
from honing.export.tool_template import named_templates, tool_use_template

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CLOCK = {"type": "function", "function": {"name": "now", "description": "Local time, ISO 8601",
                                          "parameters": {"type": "object", "properties": {}}}}

CASES = {
    "system, call, result, answer": ((WEATHER,), [
        Message("system", "Be brief."), Message("user", "Weather in Oslo? Ünïcode"),
        Message("assistant", "", tool_calls=(ToolCall("c1", "get_weather", '{"city": "Oslo"}'),)),
        Message("tool", "-3 C, snow", tool_call_id="c1"), Message("assistant", "It is -3 C and snowing.")]),
    "no system, text and two calls": ((WEATHER, CLOCK), [
        Message("user", "Weather and time in Rome?"),
        Message("assistant", "Checking both.", tool_calls=(ToolCall("a", "get_weather", '{"city": "Rome"}'),
                                                           ToolCall("b", "now", "{}"))),
        Message("tool", "21 C", tool_call_id="a"), Message("tool", "2026-12-03T01:00", tool_call_id="b"),
        Message("assistant", "21 C at 01:00.")]),
    "tools declared, none called": ((CLOCK,), [Message("user", "Hi"), Message("assistant", "Hello!")]),
    "no tools at all": ((), [Message("system", "S"), Message("user", "Hi"), Message("assistant", "Hello!")]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_tool_use_template_renders_as_training_did(case, smol_tokenizer):
    tools, messages = CASES[case]
    trained = smol_tokenizer.apply_chat_template(fallback_messages(messages, tools), tokenize=False)
    served = smol_tokenizer.apply_chat_template(native_messages(messages), tools=list(tools) or None, tokenize=False,
                                                chat_template=tool_use_template(smol_tokenizer.chat_template))
    assert served == trained
    prompt = smol_tokenizer.apply_chat_template(native_messages(messages[:2]), tools=list(tools) or None,
                                                tokenize=False, add_generation_prompt=True,
                                                chat_template=tool_use_template(smol_tokenizer.chat_template))
    assert prompt == smol_tokenizer.apply_chat_template(fallback_messages(messages[:2], tools), tokenize=False,
                                                        add_generation_prompt=True)


def test_a_template_that_knows_tools_is_left_alone():
    native = "{% for m in messages %}{{ m.content }}{% endfor %}{% if tools %}{{ tools | tojson }}{% endif %}"
    assert named_templates(native) == [{"name": "default", "template": native}]
    plain = "{% for m in messages %}{{ m.content }}{% endfor %}"
    assert [t["name"] for t in named_templates(plain)] == ["default", "tool_use"]


def test_the_gguf_carries_both_templates(tmp_path, tiny_llama_dir):
    import gguf

    from honing.export.tokenizer_meta import tokenizer_meta
    from honing.models import load_tokenizer

    tok = load_tokenizer(str(tiny_llama_dir))
    writer = gguf.GGUFWriter(str(tmp_path / "t.gguf"), "llama")
    tokenizer_meta(tok, tiny_llama_dir, len(tok)).add_to(writer)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    fields = gguf.GGUFReader(str(tmp_path / "t.gguf")).fields
    assert fields["tokenizer.chat_template"].contents() == tok.chat_template
    assert fields["tokenizer.chat_template.tool_use"].contents() == tool_use_template(tok.chat_template)
    assert fields["tokenizer.chat_templates"].contents() == ["tool_use"]
