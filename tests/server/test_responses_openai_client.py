"""`/v1/responses` as the official `openai` client calls it: `responses.create`, `responses.stream`,
`previous_response_id` chains, `retrieve`, `delete`, and a refused field. Each test runs on the real app
with scripted engines (the client's HTTP goes through a TestClient) and, marked integration, against the
real server (`live_server`: vLLM on the tiny family)."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from server.settings import Settings
from tests.conftest import ready_client

GO_ON = {"ignore_eos": True}  # the random tiny checkpoint may otherwise stop at once, with no text to stream


@pytest.fixture(params=["fake", pytest.param("live", marks=pytest.mark.integration)])
def client(request, tmp_path: Path):
    if request.param == "live":
        live_server = request.getfixturevalue("live_server")
        yield openai.OpenAI(base_url=f"{live_server.url}/v1", api_key="none", max_retries=0)
        return
    from server.store import Store

    store = Store(f"sqlite:///{tmp_path / 'stagechat.db'}")
    app, pool = request.getfixturevalue("fake_app")(store=store, settings=Settings(data_dir=tmp_path))
    with ready_client(app, pool) as http:
        yield openai.OpenAI(base_url=f"{http.base_url}/v1", api_key="none", max_retries=0, http_client=http)


def test_create_and_retrieve(client):
    response = client.responses.create(
        model="sft",
        input="What is the capital of Kenya?",
        instructions="Be brief.",
        max_output_tokens=4,
        temperature=0,
        extra_body=GO_ON,
    )
    assert response.id.startswith("resp_") and response.model == "sft"
    assert response.status in ("completed", "incomplete") and response.output_text
    assert response.usage.output_tokens <= 4
    again = client.responses.retrieve(response.id)
    assert again.id == response.id and again.output_text == response.output_text
    [item] = client.responses.input_items.list(response.id).data
    assert item.role == "user" and item.content[0].text == "What is the capital of Kenya?"


def test_stream(client):
    with client.responses.stream(
        model="sft", input="What is the capital of Kenya?", max_output_tokens=6, temperature=0, extra_body=GO_ON
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_item.done" in kinds and final.usage.output_tokens == 6
    # The random checkpoint's 6 tokens may all be pieces of one character still incomplete: no text, no delta.
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == final.output_text
    assert client.responses.retrieve(final.id).output_text == final.output_text


def test_previous_response_id_chain_of_two(client):
    first = client.responses.create(model="sft", input="one", max_output_tokens=2, temperature=0)
    second = client.responses.create(
        model="sft", input="two", previous_response_id=first.id, max_output_tokens=2, temperature=0
    )
    third = client.responses.create(
        model="base",
        input=[{"role": "user", "content": "three"}],
        previous_response_id=second.id,
        max_output_tokens=2,
        temperature=0,
    )
    assert third.previous_response_id == second.id and second.previous_response_id == first.id
    # The chain's input grew turn by turn: the third saw both earlier turns.
    assert third.usage.input_tokens > second.usage.input_tokens > first.usage.input_tokens


def test_delete_then_retrieve_is_404(client):
    response = client.responses.create(model="sft", input="forget me", max_output_tokens=2)
    client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="sft", input="and?", previous_response_id=response.id)


@pytest.mark.parametrize("field", ["tools", "reasoning"])
def test_an_unsupported_field_is_a_400_naming_it(client, field):
    value = {
        "tools": [{"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}}],
        "reasoning": {"effort": "low"},
    }[field]
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="sft", input="hi", **{field: value})
    assert e.value.body["param"] == field
