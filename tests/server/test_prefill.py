"""Prefill on chat completions (`server.prefill`): vLLM's `continue_final_message`,
`add_generation_prompt` and `chat_template_kwargs`, validated on scripted engines (400s naming the
field, nothing reaching the engine) and rendered by a real Hugging Face tokenizer (the tiny family's
template, trained in a second). Real continuation on vLLM: test_prefill_vllm.py."""

import pytest

from server.errors import APIError
from server.prefill import template_options
from server.protocol import ChatCompletionRequest
from server.serving import render_chat
from tests.conftest import ready_client

USER = {"role": "user", "content": "Capital of Kenya?"}
PREFIX = {"role": "assistant", "content": "The capital is"}


@pytest.fixture
def client(fake_app):
    with ready_client(*fake_app()) as client:
        yield client


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from models.tiny import CHAT_TEMPLATE, make_tokenizer

    # the tiny template, plus a variable a request may set through chat_template_kwargs
    template = "{% if persona %}<|system|>{{ persona }}<|end|>{% endif %}" + CHAT_TEMPLATE
    return make_tokenizer(tmp_path_factory.mktemp("tok"), chat_template=template)


def request(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "base", "messages": [USER, PREFIX], **fields})


def refusal(client, **fields):
    engine = client.pool.built[("fake/base", None)]
    before = len(engine.requests)
    r = client.post("/v1/chat/completions", json={"model": "base", "messages": [USER, PREFIX], **fields})
    assert r.status_code == 400, r.text
    assert len(engine.requests) == before  # nothing reached the engine
    return r.json()["error"]


# -- validation (fake engine) ----------------------------------------------------------------------


def test_both_true_is_refused_as_vllm_does(client):
    error = refusal(client, continue_final_message=True, add_generation_prompt=True)
    assert error["param"] == "continue_final_message" and "both" in error["message"]


def test_continuing_needs_the_assistants_final_message(client):
    r = client.post("/v1/chat/completions", json={"model": "base", "messages": [USER], "continue_final_message": True})
    assert r.status_code == 400 and r.json()["error"]["param"] == "continue_final_message"


@pytest.mark.parametrize("field", [{"continue_final_message": True}, {"chat_template_kwargs": {"x": 1}}])
def test_tokenize_refuses_chat_fields_with_a_text_prompt(client, field):
    r = client.post("/tokenize", json={"model": "base", "prompt": "The capital of Kenya is", **field})
    assert r.status_code == 400 and next(iter(field)) in r.json()["error"]["message"], r.text


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"continue_final_message": True}, "continue_final_message"),
        ({"add_generation_prompt": False}, "add_generation_prompt"),
        ({"chat_template_kwargs": {"persona": "x"}}, "chat_template_kwargs"),
    ],
)
def test_a_stage_without_chat_template_refuses_prefill_naming_the_field(client, fields, param):
    client.pool.built[("fake/base", None)].tokenizer.chat_template = None
    error = refusal(client, **fields)
    assert error["param"] == param and error["code"] == "no_chat_template"


def test_template_kwargs_the_template_does_not_read_are_refused(client):
    assert refusal(client, chat_template_kwargs={"persona": "x"})["param"] == "chat_template_kwargs.persona"
    assert refusal(client, chat_template_kwargs={"tokenize": True})["param"] == "chat_template_kwargs.tokenize"


def test_wrong_types_are_400s(client):
    error = refusal(client, continue_final_message="maybe")
    assert error["param"] == "continue_final_message"


def test_continue_alone_reaches_the_engine(client):
    r = client.post(
        "/v1/chat/completions",
        json={"model": "base", "messages": [USER, PREFIX], "continue_final_message": True, "max_tokens": 2},
    )
    assert r.status_code == 200, r.text


def test_tokenize_checks_prefill_like_chat(client):
    r = client.post("/tokenize", json={"model": "base", "messages": [USER], "continue_final_message": True})
    assert r.status_code == 400 and r.json()["error"]["param"] == "continue_final_message"


# -- rendering (a real tokenizer) ------------------------------------------------------------------


def test_default_request_asks_nothing(tokenizer):
    assert template_options(request(), tokenizer) is None


def test_continue_leaves_the_final_message_open(tokenizer):
    options = template_options(request(continue_final_message=True), tokenizer)
    assert options["add_generation_prompt"] is False  # vLLM: continue alone turns the new turn off
    ids, _ = render_chat(tokenizer, [USER, PREFIX], None, options)
    text = tokenizer.decode(ids)
    assert text.endswith("<|assistant|>The capital is")  # no <|end|>: the stage goes on from here
    closed, _ = render_chat(tokenizer, [USER, PREFIX], None, None)
    assert tokenizer.decode(closed).endswith("The capital is<|end|><|assistant|>")


def test_no_generation_prompt(tokenizer):
    options = template_options(request(add_generation_prompt=False), tokenizer)
    ids, _ = render_chat(tokenizer, [USER], None, options)
    assert tokenizer.decode(ids).endswith("Capital of Kenya?<|end|>")


def test_template_kwargs_reach_the_template(tokenizer):
    options = template_options(request(chat_template_kwargs={"persona": "a pirate"}), tokenizer)
    ids, _ = render_chat(tokenizer, [USER], None, options)
    assert tokenizer.decode(ids).startswith("<|system|>a pirate<|end|><|user|>")
    with pytest.raises(APIError) as caught:
        template_options(request(chat_template_kwargs={"nope": 1}), tokenizer)
    assert caught.value.param == "chat_template_kwargs.nope"


def test_the_websocket_takes_prefill_and_refuses_it_the_same_way(client):
    with client.websocket_connect("/v1/ws") as ws:
        ws.send_json(
            {
                "type": "chat",
                "id": "p",
                "model": "base",
                "messages": [USER, PREFIX],
                "continue_final_message": True,
                "max_tokens": 2,
            }
        )
        while (frame := ws.receive_json())["type"] == "delta":
            pass
        assert frame["type"] == "done" and frame["usage"]["completion_tokens"] == 2
        client.pool.built[("fake/base", None)].tokenizer.chat_template = None
        ws.send_json(
            {"type": "chat", "id": "q", "model": "base", "messages": [USER, PREFIX], "continue_final_message": True}
        )
        frame = ws.receive_json()
        assert frame["type"] == "error" and frame["error"]["param"] == "continue_final_message"
