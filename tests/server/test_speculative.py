"""Per-request speculative decoding on scripted engines: which engine a `speculative` choice routes
to, the errors, the figures in the body and in the final stream chunk, and the Prometheus counters.

The scripted engine reports fixed figures (8 drafted, 6 accepted, rate 0.75, mean length 2.5) on a
finishing delta when it was built with a speculative method; real figures are checked on vLLM in
test_speculative_vllm.py.
"""

import json

import openai
import pytest
from prometheus_client import REGISTRY as PROM

from tests.conftest import ready_client

REGISTRY = {
    "stages": {
        "base": {
            "model": "org/base",
            "default_speculative": "ngram",
            "speculative": {
                "ngram": {"method": "ngram", "num_speculative_tokens": 3},
                "draft": {"method": "draft_model", "model": "org/draft", "num_speculative_tokens": 4},
            },
        },
        "sft": {"adapter": "org/sft", "base": "base"},
        "rlhf": {"adapter": "org/rlhf", "base": "sft", "default_speculative": "off"},
        "plain": {"model": "org/plain"},
    }
}
CHAT = {"messages": [{"role": "user", "content": "Capital of Kenya?"}], "max_tokens": 4}


@pytest.fixture
def client(fake_app):
    # Room for every variant at once: these tests are about routing, not eviction (test_pool.py).
    app, pool = fake_app(REGISTRY)
    pool.max_live_engines = 8
    with ready_client(app, pool) as client:
        yield client


def chat(client, model: str, **extra):
    return client.post("/v1/chat/completions", json={**CHAT, "model": model, **extra})


def sse_events(response) -> list[dict]:
    return [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]


def counter(name: str, stage: str, method: str) -> float:
    return PROM.get_sample_value(f"{name}_total", {"stage": stage, "method": method}) or 0.0


# -- what is offered ----------------------------------------------------------------------------


def test_models_list_methods_and_defaults_adapters_inherit_the_list(client):
    data = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert data["base"]["speculative"] == ["ngram", "draft"]
    assert data["sft"]["speculative"] == ["ngram", "draft"]  # inherited from base
    assert data["rlhf"]["speculative"] == ["ngram", "draft"]  # through sft, from base
    assert data["plain"]["speculative"] == []
    assert data["base"]["default_speculative"] == "ngram"
    assert data["rlhf"]["default_speculative"] == "off"


# -- routing ------------------------------------------------------------------------------------


def test_default_variants_start_at_startup_one_engine_per_checkpoint_and_method(client):
    # base's default is ngram, rlhf's default is off: both variants of org/base are started.
    assert set(client.pool.engines()) == {("org/base", "ngram"), ("org/base", None), ("org/plain", None)}


@pytest.mark.parametrize(
    ("stage", "asked", "key", "adapter"),
    [
        ("base", None, ("org/base", "ngram"), None),  # the stage's default
        ("base", "off", ("org/base", None), None),
        ("base", "draft", ("org/base", "draft"), None),
        # Only the method list is inherited: sft names no default of its own, so it runs without.
        ("sft", None, ("org/base", None), "sft"),
        ("sft", "draft", ("org/base", "draft"), "sft"),
        ("rlhf", None, ("org/base", None), "rlhf"),
        ("rlhf", "ngram", ("org/base", "ngram"), "rlhf"),
    ],
)
def test_a_request_routes_to_the_engine_of_its_checkpoint_and_method(client, stage, asked, key, adapter):
    pool = client.pool
    resolved, ref = pool.resolve(stage, asked)
    assert resolved == key
    assert (ref.name if ref else None) == adapter
    body = chat(client, stage, **({"speculative": asked} if asked else {})).json()
    engine = pool.built[key]
    assert engine.requests[-1][2] == ref  # the adapter rides per request on the variant's engine
    assert (body.get("speculative") or {}).get("method") == key[1]


def test_a_variant_starts_on_first_use_with_its_vllm_config(client):
    pool = client.pool
    assert ("org/base", "draft") not in pool.engines()
    chat(client, "sft", speculative="draft")
    assert ("org/base", "draft") in pool.engines()
    spec = pool._spec_for("sft", ("org/base", "draft"))
    assert spec.speculative_config == {"method": "draft_model", "model": "org/draft", "num_speculative_tokens": 4}
    assert spec.max_lora_rank is not None  # sft and rlhf ride on it through LoRA


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stage", "asked", "offered"),
    [
        ("base", "eagle", "Offered: off, ngram, draft."),
        ("rlhf", "medusa", "Offered: off, ngram, draft."),
        ("plain", "ngram", "Offered: off."),
    ],
)
def test_unknown_method_is_400_naming_the_offered_ones_and_starts_nothing(client, stage, asked, offered):
    before = set(client.pool.built)
    response = chat(client, stage, speculative=asked)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "speculative" and error["code"] == "unknown_speculative_method"
    assert error["type"] == "invalid_request_error"
    assert f"'{asked}'" in error["message"] and offered in error["message"]
    assert set(client.pool.built) == before  # no engine was started for it
    streamed = chat(client, stage, speculative=asked, stream=True)
    assert streamed.status_code == 400  # before any SSE frame


def test_text_completions_take_the_field_too(client):
    response = client.post("/v1/completions", json={"model": "base", "prompt": "Hi", "speculative": "nope"})
    assert response.status_code == 400 and "Offered: off, ngram, draft." in response.json()["error"]["message"]
    body = client.post(
        "/v1/completions", json={"model": "base", "prompt": "Hi", "max_tokens": 2, "speculative": "draft"}
    ).json()
    assert body["speculative"]["method"] == "draft"


# -- figures ------------------------------------------------------------------------------------


def test_figures_in_the_body_when_speculation_ran_and_absent_when_off(client):
    body = chat(client, "sft", speculative="ngram").json()
    assert body["speculative"] == {
        "method": "ngram",
        "draft_tokens": 8,
        "accepted_tokens": 6,
        "acceptance_rate": 0.75,
        "mean_acceptance_length": 2.5,
    }
    assert "speculative" not in chat(client, "sft", speculative="off").json()


def test_figures_only_in_the_final_stream_chunk_then_usage(client):
    response = chat(client, "base", speculative="draft", stream=True, stream_options={"include_usage": True})
    events = sse_events(response)
    with_choices = [e for e in events if e["choices"]]
    assert len(with_choices) > 1
    assert all("speculative" not in e for e in with_choices[:-1])
    final = with_choices[-1]
    assert final["choices"][0]["finish_reason"] == "length"
    assert final["speculative"]["method"] == "draft" and final["speculative"]["accepted_tokens"] == 6
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 4
    off = sse_events(chat(client, "base", speculative="off", stream=True))
    assert all("speculative" not in e for e in off)


def test_figures_sum_over_n_choices(client):
    body = chat(client, "base", speculative="ngram", n=3).json()
    assert len(body["choices"]) == 3
    assert body["speculative"]["draft_tokens"] == 24 and body["speculative"]["accepted_tokens"] == 18
    assert body["speculative"]["acceptance_rate"] == 0.75


def test_openai_client_sets_it_through_extra_body(client):
    oai = openai.OpenAI(base_url="http://testserver/v1", api_key="none", http_client=client, max_retries=0)
    reply = oai.chat.completions.create(model="rlhf", extra_body={"speculative": "draft"}, **CHAT)
    assert reply.model_extra["speculative"]["method"] == "draft"
    with pytest.raises(openai.BadRequestError, match="Offered: off, ngram, draft"):
        oai.chat.completions.create(model="rlhf", extra_body={"speculative": "eagle"}, **CHAT)


# -- counters -----------------------------------------------------------------------------------


def test_prometheus_counters_per_stage_and_method(client):
    before = {
        (s, m): (
            counter("stagechat_speculative_draft_tokens", s, m),
            counter("stagechat_speculative_accepted_tokens", s, m),
        )
        for s in ("sft", "rlhf")
        for m in ("ngram", "draft")
    }
    chat(client, "sft", speculative="draft")
    chat(client, "sft", speculative="draft", stream=True).read()
    chat(client, "rlhf", speculative="ngram")
    chat(client, "rlhf", speculative="off")  # no speculation: counts nothing
    after = {
        k: (counter("stagechat_speculative_draft_tokens", *k), counter("stagechat_speculative_accepted_tokens", *k))
        for k in before
    }
    delta = {k: (after[k][0] - before[k][0], after[k][1] - before[k][1]) for k in before}
    assert delta == {
        ("sft", "draft"): (16, 12),
        ("sft", "ngram"): (0, 0),
        ("rlhf", "ngram"): (8, 6),
        ("rlhf", "draft"): (0, 0),
    }
    text = client.get("/metrics").text
    assert 'stagechat_speculative_accepted_tokens_total{method="draft",stage="sft"}' in text


def test_speculation_known_to_change_sampled_output_is_refused_unless_allowed(fake_pool_factory):
    import asyncio

    from server.errors import APIError
    from server.protocol import ChatCompletionRequest
    from server.serving import StageService

    def ask(temperature: float, allow: bool):
        async def go():
            pool = fake_pool_factory(lossy_when_sampling=True)
            await pool.start()
            service = StageService(pool=pool, allow_lossy_speculation=allow)
            request = ChatCompletionRequest(
                model="base", messages=[{"role": "user", "content": "hi"}], temperature=temperature
            )
            return await service.chat(request)

        return asyncio.run(go())

    with pytest.raises(APIError) as err:
        ask(0.8, allow=False)
    assert err.value.status == 400 and err.value.code == "speculation_not_lossless"
    assert ask(0.0, allow=False).settings.temperature == 0.0  # greedy is lossless: served
    assert ask(0.8, allow=True).settings.temperature == 0.8
