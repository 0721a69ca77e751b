"""The OpenAI endpoints on scripted engines: shapes, stream framing, errors, routing."""

import json

import pytest
from starlette.testclient import TestClient

from server.settings import Settings
from tests.conftest import ready_client

CHAT = {"model": "base", "messages": [{"role": "user", "content": "Capital of Kenya?"}]}


@pytest.fixture
def client(fake_app):
    with ready_client(*fake_app()) as client:
        yield client


def sse_events(response) -> list:
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            payload = line[6:]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def test_models_list_stages_with_lineage_and_speculative_methods(client):
    data = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert set(data) == {"base", "sft"}
    assert data["sft"]["parent"] == "base" and data["base"]["parent"] is None
    assert data["sft"]["description"] == "instruction-tuned"
    assert data["base"]["speculative"] == ["ngram"] and data["sft"]["speculative"] == ["ngram"]


def test_chat_completion_body(client):
    body = client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 3}).json()
    assert body["object"] == "chat.completion" and body["model"] == "base"
    assert body["id"].startswith("chatcmpl-")
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "The capital of"}
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 3
    assert "speculative" not in body


def test_adapter_stage_rides_on_its_base_engine_with_stage_defaults(client):
    body = client.post("/v1/chat/completions", json={**CHAT, "model": "sft"}).json()
    assert body["model"] == "sft"
    assert list(client.pool.built) == [("fake/base", None)]  # one engine for both stages
    _, settings, adapter = client.pool.built[("fake/base", None)].requests[-1]
    assert adapter.name == "sft" and adapter.path == "fake/sft"
    assert settings.temperature == 0.5 and settings.max_tokens == 5  # sft's registry defaults


def test_chat_stream_framing_with_usage(client):
    with client.stream(
        "POST", "/v1/chat/completions", json={**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"]["content"] for c in chunks if c["choices"])
    assert text == "The capital of Kenya is Nairobi."
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6
    assert all(c["usage"] is None for c in chunks[:-1])


def test_speculative_request_starts_the_variant_and_reports_figures(client):
    body = client.post("/v1/chat/completions", json={**CHAT, "speculative": "ngram"}).json()
    assert body["speculative"]["method"] == "ngram"
    assert body["speculative"]["acceptance_rate"] == 0.75
    assert ("fake/base", "ngram") in client.pool.built


def test_logprobs_chat_and_completion(client):
    chat = client.post("/v1/chat/completions", json={**CHAT, "logprobs": True, "top_logprobs": 2}).json()
    content = chat["choices"][0]["logprobs"]["content"]
    assert len(content) == 6 and len(content[0]["top_logprobs"]) == 2
    assert content[0]["bytes"] == list(content[0]["token"].encode())
    comp = client.post("/v1/completions", json={"model": "base", "prompt": "The capital of", "logprobs": 1}).json()
    assert comp["object"] == "text_completion"
    lp = comp["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["text_offset"]) == 6
    assert lp["text_offset"][1] == len(lp["tokens"][0])


def test_n_choices_and_stop(client):
    body = client.post("/v1/chat/completions", json={**CHAT, "n": 2, "stop": ["Kenya"]}).json()
    assert [c["message"]["content"] for c in body["choices"]] == ["The capital of "] * 2
    assert {c["finish_reason"] for c in body["choices"]} == {"stop"}


def error_of(response, status):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_unknown_stage_is_404(client):
    error = error_of(client.post("/v1/chat/completions", json={**CHAT, "model": "gpt-9"}), 404)
    assert "gpt-9" in error["message"] and error["code"] == "model_not_found"


def test_unknown_speculative_method_is_400_naming_the_offered_ones(client):
    error = error_of(client.post("/v1/chat/completions", json={**CHAT, "speculative": "eagle"}), 400)
    assert "off, ngram" in error["message"] and error["param"] == "speculative"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({**CHAT, "temperature": 5}, "temperature"),
        ({**CHAT, "max_tokens": "many"}, "max_tokens"),
        ({"model": "base"}, "messages"),
        ({**CHAT, "max_tokens": 1000}, "max_tokens"),  # beyond the context left by the prompt
    ],
)
def test_bad_parameters_are_400(client, body, param):
    assert error_of(client.post("/v1/chat/completions", json=body), 400)["param"] == param


def test_prompt_longer_than_the_context_is_400(client):
    long = {**CHAT, "messages": [{"role": "user", "content": "word " * 100}]}
    error = error_of(client.post("/v1/chat/completions", json=long), 400)
    assert error["code"] == "context_length_exceeded"


def test_malformed_json_is_400_with_error_body(client):
    r = client.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert "not valid JSON" in error_of(r, 400)["message"]


def test_bad_input_changes_nothing(client):
    before = len(client.pool.built[("fake/base", None)].requests)
    client.post("/v1/chat/completions", json={**CHAT, "temperature": -1})
    client.post("/v1/chat/completions", json={**CHAT, "speculative": "eagle"})
    assert len(client.pool.built[("fake/base", None)].requests) == before


def test_api_keys(fake_app, tmp_path):
    app, _ = fake_app(settings=Settings(data_dir=tmp_path, api_keys=frozenset({"sk-good"})))
    with TestClient(app) as client:
        error = error_of(client.get("/v1/models"), 401)
        assert error["type"] == "authentication_error"
        assert client.get("/v1/models", headers={"Authorization": "Bearer sk-good"}).status_code == 200


def test_not_ready_is_503(fake_pool_factory, tmp_path):
    from server.app import create_app

    pool = fake_pool_factory()
    app = create_app(Settings(data_dir=tmp_path), pool, with_ui=False)
    client = TestClient(app)  # no lifespan: engines never start
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").status_code == 503
    assert error_of(client.post("/v1/chat/completions", json=CHAT), 503)["code"] == "not_ready"


def test_the_real_server_freezes_its_heap_once_warm_and_test_apps_do_not(fake_app, fake_pool_factory, tmp_path):
    import gc

    from server.app import create_app

    with ready_client(*fake_app()):
        assert gc.get_freeze_count() == 0  # process-wide: an app made in a test leaves the heap alone
    pool = fake_pool_factory()
    try:
        with ready_client(create_app(Settings(data_dir=tmp_path), pool, with_ui=False, freeze_when_ready=True), pool):
            assert gc.get_freeze_count() > 0  # what is alive once warm is out of the collector's reach
    finally:
        gc.unfreeze()


def test_metrics_count_requests_and_tokens_per_stage(client):
    client.post("/v1/chat/completions", json={**CHAT, "model": "sft"})
    text = client.get("/metrics").text
    assert 'stagechat_requests_total{kind="chat",outcome="ok",stage="sft"}' in text
    assert 'stagechat_time_to_first_token_seconds_count{stage="sft"}' in text


# -- the API as real clients use it (issue 14) -----------------------------------------------------


def engine_requests(client):
    return client.pool.built[("fake/base", None)].requests


def test_a_list_of_prompts_gets_n_choices_each_in_prompt_order(client):
    body = client.post(
        "/v1/completions", json={"model": "base", "prompt": ["one two", "three"], "n": 2, "max_tokens": 2}
    ).json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert all(c["text"] == "The capital" for c in body["choices"])
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 8, "total_tokens": 11}
    assert [len(ids) for ids, _, _ in engine_requests(client)[-2:]] == [2, 1]


def test_token_id_prompts_reach_the_engine_as_they_are(client):
    client.post("/v1/completions", json={"model": "base", "prompt": [[5, 6, 7], [8]], "max_tokens": 1})
    assert [ids for ids, _, _ in engine_requests(client)[-2:]] == [[5, 6, 7], [8]]


def test_echo_with_max_tokens_zero_scores_the_prompt_only(client):
    body = client.post(
        "/v1/completions",
        json={"model": "base", "prompt": "The capital of", "echo": True, "logprobs": 1, "max_tokens": 0},
    ).json()
    choice = body["choices"][0]
    assert choice["text"] == "The capital of" and choice["finish_reason"] == "length"
    lp = choice["logprobs"]
    assert lp["tokens"] == ["The", "capital", "of"] and lp["text_offset"] == [0, 3, 10]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None  # nothing predicts the first
    assert lp["token_logprobs"][1:] == [pytest.approx(-0.6931, abs=1e-3)] * 2
    assert body["usage"]["completion_tokens"] == 0
    _, settings, _ = engine_requests(client)[-1]
    assert (settings.max_tokens, settings.prompt_logprobs) == (0, 1)


def test_echo_with_generation_puts_the_prompt_first(client):
    body = client.post(
        "/v1/completions", json={"model": "base", "prompt": "Say", "echo": True, "logprobs": 0, "max_tokens": 2}
    ).json()
    choice = body["choices"][0]
    assert choice["text"] == "SayThe capital"
    assert choice["logprobs"]["tokens"] == ["Say", "The", " capital"]
    assert choice["logprobs"]["token_logprobs"][0] is None
    with client.stream(
        "POST",
        "/v1/completions",
        json={"model": "base", "prompt": "Say", "echo": True, "max_tokens": 2, "stream": True},
    ) as r:
        chunks = [e for e in sse_events(r) if e != "[DONE]"]
    assert chunks[0]["choices"][0]["text"] == "SayThe"
    assert "".join(c["choices"][0]["text"] for c in chunks) == "SayThe capital"


def test_stream_of_several_prompts_and_continuous_usage(client):
    with client.stream(
        "POST",
        "/v1/completions",
        json={
            "model": "base",
            "prompt": ["a", "b c"],
            "max_tokens": 3,
            "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        },
    ) as r:
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    texts = {0: "", 1: ""}
    for c in chunks[:-1]:
        for choice in c["choices"]:
            texts[choice["index"]] += choice["text"]
        assert c["usage"]["prompt_tokens"] == 3  # every chunk carries the usage so far
    assert texts == {0: "The capital of", 1: "The capital of"}
    assert chunks[-1]["usage"]["completion_tokens"] == 6


def test_chat_prompt_logprobs_extension_in_vllm_shape(client):
    body = client.post("/v1/chat/completions", json={**CHAT, "prompt_logprobs": 0, "max_tokens": 1}).json()
    prompt_lp = body["prompt_logprobs"]
    assert prompt_lp[0] is None and len(prompt_lp) == body["usage"]["prompt_tokens"]
    entry = next(iter(prompt_lp[1].values()))
    assert set(entry) == {"logprob", "rank", "decoded_token"}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("audio", {"voice": "alloy"}),
        ("suffix", "x"),
        ("functions", [{"name": "f"}]),
        ("best_of", 2),
    ],
)
def test_fields_the_server_does_not_honour_are_400_naming_them(client, field, value):
    before = len(engine_requests(client)) if ("fake/base", None) in client.pool.built else 0
    body = {"model": "base", "prompt": "x"} if field in ("suffix", "best_of") else CHAT
    path = "/v1/completions" if field in ("suffix", "best_of") else "/v1/chat/completions"
    error = error_of(client.post(path, json={**body, field: value}), 400)
    assert error["param"] == field and field in error["message"]
    assert len(engine_requests(client)) == before
    assert client.post(path, json={**body, field: None}).status_code == 200  # null asks for nothing


def test_tools_on_a_stage_without_a_tool_parser_are_a_clear_400(client):
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    error = error_of(client.post("/v1/chat/completions", json={**CHAT, "tools": tools}), 400)
    assert error["param"] == "tools" and "base" in error["message"] and "tool_parser" in error["message"]


def test_tools_need_a_template_that_renders_them(fake_app):
    registry = {"stages": {"base": {"model": "fake/base", "tool_parser": "hermes"}}}
    with ready_client(*fake_app(registry)) as client:
        tools = [{"type": "function", "function": {"name": "weather"}}]
        error = error_of(client.post("/v1/chat/completions", json={**CHAT, "tools": tools}), 400)
        assert "chat template" in error["message"] and error["code"] == "tools_not_supported"


def test_what_the_engine_refuses_is_a_400_before_anything_runs(client):
    client.post("/v1/chat/completions", json=CHAT)
    before = len(engine_requests(client))
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    error = error_of(client.post("/v1/chat/completions", json={**CHAT, "response_format": fmt}), 400)
    assert error["param"] == "response_format" and "structured" in error["message"]
    error = error_of(
        client.post("/v1/completions", json={"model": "base", "prompt": "x", "logit_bias": {"5000": 3}}), 400
    )
    assert error["param"] == "logit_bias"
    assert len(engine_requests(client)) == before


def test_a_bad_prompt_in_a_list_refuses_the_whole_request(client):
    client.post("/v1/completions", json={"model": "base", "prompt": "x", "max_tokens": 1})
    before = len(engine_requests(client))
    error = error_of(client.post("/v1/completions", json={"model": "base", "prompt": ["fine", "word " * 100]}), 400)
    assert error["code"] == "context_length_exceeded"
    assert len(engine_requests(client)) == before
