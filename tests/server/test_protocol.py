import json

import pytest
from pydantic import ValidationError

from server.protocol import ChatCompletionRequest, CompletionRequest
from server.registry import SamplingDefaults

MESSAGES = [{"role": "user", "content": "hi"}]


def test_request_values_win_over_stage_defaults_which_win_over_openai_defaults():
    defaults = SamplingDefaults(temperature=0.3, top_k=5)
    settings = ChatCompletionRequest(model="m", messages=MESSAGES, temperature=0.9).to_settings(defaults, 10)
    assert (settings.temperature, settings.top_k, settings.top_p, settings.max_tokens) == (0.9, 5, 1.0, 10)


def test_chat_logprobs_map_to_top_k_and_content_parts_join():
    req = ChatCompletionRequest(
        model="m",
        logprobs=True,
        top_logprobs=3,
        messages=[{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
    )
    assert req.to_settings(SamplingDefaults(), 4).logprobs == 3
    assert req.messages[0].plain() == {"role": "user", "content": "ab"}
    assert ChatCompletionRequest(model="m", messages=MESSAGES).to_settings(SamplingDefaults(), 4).logprobs is None


def test_max_completion_tokens_is_preferred():
    req = ChatCompletionRequest(model="m", messages=MESSAGES, max_tokens=5, max_completion_tokens=7)
    assert req.requested_max_tokens() == 7


@pytest.mark.parametrize(
    "field",
    [
        {"temperature": 2.5},
        {"top_p": 0},
        {"n": 0},
        {"max_tokens": 0},
        {"top_logprobs": 21, "logprobs": True},
        {"top_logprobs": 2},
        {"prompt_logprobs": 21},
        {"stop": ["a", "b", "c", "d", "e"]},
        {"presence_penalty": 3},
        {"temperature": "hot"},
        {"messages": []},
        {"messages": [{"role": "wizard", "content": "x"}]},
    ],
)
def test_out_of_range_and_wrong_types_are_rejected(field):
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate({"model": "m", "messages": MESSAGES, **field})


def test_completion_prompt_forms():
    assert CompletionRequest(model="m", prompt=["x"]).prompt_text() == "x"
    assert CompletionRequest(model="m", prompt=["x", "y"]).prompts() == ["x", "y"]
    assert CompletionRequest(model="m", prompt=[5, 6]).prompts() == [[5, 6]]
    assert CompletionRequest(model="m", prompt=[5, 6]).prompt_ids() == [5, 6]
    assert CompletionRequest(model="m", prompt=[[5], [6, 7]]).prompts() == [[5], [6, 7]]
    assert CompletionRequest(model="m", prompt=[[5], [6, 7]]).single([6, 7]).prompt_ids() == [6, 7]
    for bad in ([], [[]], [-1], [[1], []], ["x"] * 65, [1, "x"]):
        with pytest.raises(ValidationError):
            CompletionRequest(model="m", prompt=bad)
    with pytest.raises(ValidationError):
        CompletionRequest(model="m", prompt="x", logprobs=6)


def test_echo_with_logprobs_asks_for_prompt_logprobs_and_max_tokens_zero_needs_echo():
    req = CompletionRequest(model="m", prompt="x", echo=True, logprobs=2, max_tokens=0)
    settings = req.to_settings(SamplingDefaults(), 0)
    assert (settings.prompt_logprobs, settings.logprobs, settings.max_tokens) == (2, 2, 0)
    assert (
        CompletionRequest(model="m", prompt="x", echo=True).to_settings(SamplingDefaults(), 3).prompt_logprobs is None
    )
    with pytest.raises(ValidationError, match="echo"):
        CompletionRequest(model="m", prompt="x", max_tokens=0)


@pytest.mark.parametrize("field", ["audio", "modalities", "functions", "reasoning_effort", "service_tier", "suffix_"])
def test_unknown_fields_are_refused_by_name_but_nulls_are_dropped(field):
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate({"model": "m", "messages": MESSAGES, field: "x"})
    assert info.value.errors()[0]["loc"] == (field,) and info.value.errors()[0]["type"] == "extra_forbidden"
    ChatCompletionRequest.model_validate({"model": "m", "messages": MESSAGES, field: None})
    with pytest.raises(ValidationError):  # nested objects too
        ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "x", "audio": 1}]})
    with pytest.raises(ValidationError):
        CompletionRequest.model_validate({"model": "m", "prompt": "x", "suffix": "y"})


def test_logit_bias_and_stream_options():
    req = ChatCompletionRequest(
        model="m",
        messages=MESSAGES,
        logit_bias={"7": 5, "3": -100},
        stream_options={"include_usage": True, "continuous_usage_stats": True},
    )
    assert req.to_settings(SamplingDefaults(), 4).logit_bias == ((3, -100.0), (7, 5.0))
    assert req.include_usage and req.continuous_usage
    for bad in ({"x": 1}, {"-1": 1}, {"1": 101}):
        with pytest.raises(ValidationError):
            ChatCompletionRequest(model="m", messages=MESSAGES, logit_bias=bad)


SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def test_response_format_and_structured_outputs_become_one_constraint():
    def constraint(**kw):
        return ChatCompletionRequest(model="m", messages=MESSAGES, **kw).to_settings(SamplingDefaults(), 4).structured

    assert constraint() is None
    assert constraint(response_format={"type": "text"}) is None
    assert constraint(response_format={"type": "json_object"}).kind == "json_object"
    schema = constraint(
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA, "strict": True}}
    )
    assert (schema.kind, json.loads(schema.value)) == ("json", SCHEMA)
    assert constraint(structured_outputs={"regex": "[0-9]+"}).value == "[0-9]+"
    assert json.loads(constraint(structured_outputs={"choice": ["yes", "no"]}).value) == ["yes", "no"]
    assert constraint(structured_outputs={"grammar": 'root ::= "a"'}).kind == "grammar"
    assert json.loads(constraint(structured_outputs={"json": json.dumps(SCHEMA)}).value) == SCHEMA


@pytest.mark.parametrize(
    "fields",
    [
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}},
        {"response_format": {"type": "json_schema"}},
        {"response_format": {"type": "xml"}},
        {"structured_outputs": {"regex": "a", "choice": ["a"]}},
        {"structured_outputs": {}},
        {"structured_outputs": {"choice": []}},
        {"structured_outputs": {"whitespace_pattern": " "}},
        {"response_format": {"type": "json_object"}, "structured_outputs": {"regex": "a"}},
    ],
)
def test_bad_structured_output_requests_are_refused(fields):
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate({"model": "m", "messages": MESSAGES, **fields})


TOOLS = [
    {"type": "function", "function": {"name": "weather", "parameters": SCHEMA}},
    {"type": "function", "function": {"name": "time"}},
]


def test_tool_choice_forces_a_schema():
    def request(**kw):
        return ChatCompletionRequest(model="m", messages=MESSAGES, tools=TOOLS, **kw)

    assert request().structured() is None and request().calls_tools()  # auto: the parser reads the text
    assert not request(tool_choice="none").calls_tools()
    named = request(tool_choice={"type": "function", "function": {"name": "weather"}})
    assert json.loads(named.structured().value) == SCHEMA and named.forced_tool() == "weather"
    required = json.loads(request(tool_choice="required", parallel_tool_calls=False).structured().value)
    assert required["type"] == "array" and required["maxItems"] == 1
    assert [a["properties"]["name"]["enum"] for a in required["items"]["anyOf"]] == [["weather"], ["time"]]


@pytest.mark.parametrize(
    "fields",
    [
        {"tool_choice": "required"},
        {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
        {"tools": TOOLS + TOOLS[:1]},
        {"tools": TOOLS, "response_format": {"type": "json_object"}},
        {"tools": [{"type": "code_interpreter"}]},
        {"messages": [{"role": "tool", "content": "12C"}]},
        {"messages": [{"role": "user", "content": None}]},
    ],
)
def test_bad_tool_requests_are_refused(fields):
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate({"model": "m", "messages": MESSAGES, **fields})


def test_tool_messages_render_for_templates():
    call = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
    req = ChatCompletionRequest(
        model="m",
        messages=[
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "12C"},
        ],
    )
    assistant, tool = req.messages[1].plain(), req.messages[2].plain()
    assert assistant["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"} and assistant["content"] == ""
    assert tool == {"role": "tool", "content": "12C", "tool_call_id": "call_1"}


def test_chat_the_arena_and_the_responses_api_take_the_same_sampling_ranges():
    """Declared once (protocol.TopK …): the three request types cannot drift apart again."""
    from server.arena import Decoding
    from server.protocol_responses import ResponsesRequest

    def bounds(model, field: str) -> dict:
        schema = model.model_json_schema()["properties"][field]
        options = schema.get("anyOf", [schema])
        numeric = next(o for o in options if o.get("type") in ("number", "integer"))
        return {k: v for k, v in numeric.items() if k in ("type", "minimum", "maximum", "exclusiveMinimum")}

    fields = ("temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty")
    for field in fields:
        chat = bounds(ChatCompletionRequest, field)
        assert bounds(Decoding, field) == chat == bounds(ResponsesRequest, field), field
    assert bounds(ChatCompletionRequest, "top_k")["minimum"] == -1  # vLLM's "off", everywhere
