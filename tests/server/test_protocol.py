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
    req = ChatCompletionRequest(model="m", logprobs=True, top_logprobs=3,
                                messages=[{"role": "user", "content": [{"type": "text", "text": "a"},
                                                                         {"type": "text", "text": "b"}]}])
    assert req.to_settings(SamplingDefaults(), 4).logprobs == 3
    assert req.messages[0].plain() == {"role": "user", "content": "ab"}
    assert ChatCompletionRequest(model="m", messages=MESSAGES).to_settings(SamplingDefaults(), 4).logprobs is None


def test_max_completion_tokens_is_preferred():
    req = ChatCompletionRequest(model="m", messages=MESSAGES, max_tokens=5, max_completion_tokens=7)
    assert req.requested_max_tokens() == 7


@pytest.mark.parametrize("field", [
    {"temperature": 2.5}, {"top_p": 0}, {"n": 0}, {"max_tokens": 0}, {"top_logprobs": 21, "logprobs": True},
    {"top_logprobs": 2}, {"stop": ["a", "b", "c", "d", "e"]}, {"presence_penalty": 3}, {"temperature": "hot"},
    {"messages": []}, {"messages": [{"role": "wizard", "content": "x"}]},
])
def test_out_of_range_and_wrong_types_are_rejected(field):
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate({"model": "m", "messages": MESSAGES, **field})


def test_completion_prompt_forms():
    assert CompletionRequest(model="m", prompt=["x"]).prompt_text() == "x"
    with pytest.raises(ValidationError):
        CompletionRequest(model="m", prompt=["x", "y"])
    with pytest.raises(ValidationError):
        CompletionRequest(model="m", prompt="x", logprobs=6)
