"""Tool-call schemas and reading generated text as tool calls (vLLM's real hermes parser, no engine)."""

import json

import jsonschema
import pytest

from server.tools import ToolCallReader, template_supports_tools, tool_call_schema

WEATHER = {
    "name": "weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
TIME = {"name": "time"}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from models.tiny import make_tokenizer

    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def test_forced_schemas():
    assert tool_call_schema([WEATHER, TIME], "weather") == WEATHER["parameters"]
    assert tool_call_schema([WEATHER, TIME], "time") == {"type": "object", "properties": {}}
    required = tool_call_schema([WEATHER, TIME], None)
    jsonschema.validate(
        [{"name": "weather", "parameters": {"city": "Paris"}}, {"name": "time", "parameters": {}}], required
    )
    for bad in ([], [{"name": "nope", "parameters": {}}], [{"name": "weather", "parameters": {}}]):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, required)
    assert tool_call_schema([WEATHER], None, parallel=False)["maxItems"] == 1


def test_template_support_is_read_from_the_template():
    from models.tiny import CHAT_TEMPLATE

    assert template_supports_tools(CHAT_TEMPLATE)
    assert not template_supports_tools("{% for m in messages %}{{ m.content }}{% endfor %}")
    assert not template_supports_tools(None)


def test_auto_reads_hermes_calls_and_plain_text(tokenizer):
    text = 'Let me check. <tool_call>{"name": "weather", "arguments": {"city": "Paris"}}</tool_call>'
    content, calls = ToolCallReader("auto", tokenizer=tokenizer, parser="hermes").final(text)
    assert content == "Let me check. "
    assert calls[0]["function"] == {"name": "weather", "arguments": '{"city": "Paris"}'}
    assert calls[0]["id"].startswith("call_") and calls[0]["type"] == "function"
    assert ToolCallReader("auto", tokenizer=tokenizer, parser="hermes").final("just words") == ("just words", [])


def test_auto_streams_content_then_the_call(tokenizer):
    text = 'Hi <tool_call>{"name": "weather", "arguments": {"city": "Paris"}}</tool_call>'
    reader = ToolCallReader("auto", tokenizer=tokenizer, parser="hermes")
    content, calls = "", []
    pieces = [text[i : i + 4] for i in range(0, len(text), 4)]
    for n, piece in enumerate(pieces):
        c, deltas = reader.feed(piece, finished=n == len(pieces) - 1)
        content += c or ""
        calls.extend(deltas)
    assert content == "Hi "
    assert calls[0]["function"]["name"] == "weather" and calls[0]["index"] == 0
    assert json.loads("".join(d["function"].get("arguments", "") for d in calls)) == {"city": "Paris"}
    assert reader.called


def test_required_and_named(tokenizer):
    required = ToolCallReader("required")
    content, calls = required.final('[{"name": "weather", "parameters": {"city": "Oslo"}}]')
    assert content is None and json.loads(calls[0]["function"]["arguments"]) == {"city": "Oslo"}
    assert required.final('[{"name": "wea') == ('[{"name": "wea', [])  # cut off: no call, text kept
    named = ToolCallReader("named", name="weather")
    first = named.feed('{"city"', finished=False)[1][0]
    rest = named.feed(': "Oslo"}', finished=True)[1][0]
    assert first["function"]["name"] == "weather" and first["id"].startswith("call_")
    assert json.loads(first["function"]["arguments"] + rest["function"]["arguments"]) == {"city": "Oslo"}
