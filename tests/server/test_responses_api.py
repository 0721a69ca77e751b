"""`/v1/responses` on the real app with scripted engines and a SQLite store: turns, streams with the spec's
events, `previous_response_id` chains, retrieve and delete, owners, and every unhonoured field refused."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server.settings import Settings
from server.store import Store
from tests.conftest import ready_client

pytestmark = pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
USER, OTHER, ADMIN = "user-key", "other-key", "admin-key"


@pytest.fixture
def serve(fake_app, store: Store, tmp_path: Path):
    def make(**settings) -> Iterator[TestClient]:
        app, pool = fake_app(store=store, settings=Settings(data_dir=tmp_path, **settings))
        return ready_client(app, pool)

    return make


@pytest.fixture
def client(serve) -> Iterator[TestClient]:
    with serve() as client:
        yield client


def error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


def sse(response) -> list[tuple[str, dict]]:
    events = []
    for block in response.text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def test_a_turn_is_answered_and_stored(client: TestClient, store: Store):
    r = client.post(
        "/v1/responses",
        json={
            "model": "sft",
            "input": "Capital of Kenya?",
            "instructions": "Be brief.",
            "temperature": 0,
            "metadata": {"topic": "geo"},
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "response" and body["id"].startswith("resp_") and body["model"] == "sft"
    assert body["status"] == "incomplete" and body["incomplete_details"] == {"reason": "max_output_tokens"}  # 5 tokens
    [item] = body["output"]
    assert item["type"] == "message" and item["role"] == "assistant" and item["id"].startswith("msg_")
    text = item["content"][0]["text"]
    assert item["content"][0]["type"] == "output_text" and text.startswith("The capital")
    assert body["usage"]["output_tokens"] == 5 and body["usage"]["total_tokens"] > 5
    assert (body["instructions"], body["temperature"], body["metadata"], body["store"]) == (
        "Be brief.",
        0.0,
        {"topic": "geo"},
        True,
    )
    assert store.get_generation(body["generation_id"]).completion == text  # rateable through /v1/feedback

    node = store.get_message(body["id"], viewer=None)
    assert (node.role, node.content, node.stage) == ("assistant", text, "sft")
    assert node.generation_id == body["generation_id"]
    assert node.sampling["temperature"] == 0.0
    [q, _] = store.message_path(body["id"], viewer=None)
    assert (q.role, q.content) == ("user", "Capital of Kenya?")  # instructions are the turn's, not the tree's
    got = client.get(f"/v1/responses/{body['id']}").json()
    assert got == body


def test_previous_response_id_continues_the_branch(client: TestClient, store: Store):
    first = client.post("/v1/responses", json={"model": "sft", "input": "one", "max_output_tokens": 2}).json()
    second = client.post(
        "/v1/responses",
        json={"model": "sft", "previous_response_id": first["id"], "input": [{"role": "user", "content": "two"}]},
    ).json()
    assert second["previous_response_id"] == first["id"]
    path = store.message_path(second["id"], viewer=None)
    assert [m.content for m in path][:3] == ["one", first["output"][0]["content"][0]["text"], "two"]
    assert len({m.conversation_id for m in path}) == 1
    # The same previous response again: a branch beside the second, in the same conversation.
    third = client.post(
        "/v1/responses",
        json={
            "model": "base",
            "previous_response_id": first["id"],
            "input": [{"role": "user", "content": [{"type": "input_text", "text": "deux"}]}],
        },
    ).json()
    conv = path[0].conversation_id
    assert store.message_path(third["id"], viewer=None)[0].conversation_id == conv
    assert len(store.conversation_messages(conv, viewer=None)) == 6


def test_stream_sends_the_spec_events_in_order(client: TestClient):
    r = client.post("/v1/responses", json={"model": "sft", "input": "hi", "stream": True, "max_output_tokens": 3})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse(r)
    kinds = [k for k, _ in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    assert [e["sequence_number"] for _, e in events] == list(range(len(events)))
    assert all(e["type"] == k for k, e in events)
    deltas = "".join(e["delta"] for k, e in events if k == "response.output_text.delta")
    final = events[-1][1]["response"]
    assert final["output"][0]["content"][0]["text"] == deltas == events[-4][1]["text"]
    assert events[0][1]["response"]["status"] == "in_progress" and final["status"] == "incomplete"
    assert client.get(f"/v1/responses/{final['id']}").json()["output"] == final["output"]  # stored before the end


def test_delete_then_retrieve_and_chains_through_it(client: TestClient):
    first = client.post("/v1/responses", json={"model": "sft", "input": "one", "max_output_tokens": 2}).json()
    second = client.post(
        "/v1/responses",
        json={"model": "sft", "input": "two", "max_output_tokens": 2, "previous_response_id": first["id"]},
    ).json()
    r = client.delete(f"/v1/responses/{first['id']}")
    assert r.status_code == 200 and r.json() == {"id": first["id"], "object": "response.deleted", "deleted": True}
    assert error(client.get(f"/v1/responses/{first['id']}"), 404)["param"] == "response_id"
    error(client.delete(f"/v1/responses/{first['id']}"), 404)
    assert client.get(f"/v1/responses/{second['id']}").status_code == 200  # itself intact
    e = error(
        client.post("/v1/responses", json={"model": "sft", "input": "three", "previous_response_id": second["id"]}), 400
    )
    assert e["param"] == "previous_response_id" and "deleted" in e["message"]
    e = error(
        client.post("/v1/responses", json={"model": "sft", "input": "x", "previous_response_id": first["id"]}), 404
    )
    assert e["param"] == "previous_response_id"
    e = error(
        client.post("/v1/responses", json={"model": "sft", "input": "x", "previous_response_id": "resp_nope"}), 404
    )
    assert e["param"] == "previous_response_id"
    error(client.get("/v1/responses/resp_nope"), 404)


def test_null_store_and_stream_are_their_defaults(client: TestClient, store: Store):
    body = client.post("/v1/responses", json={"model": "sft", "input": "hi", "store": None, "stream": None}).json()
    assert body["store"] is True and client.get(f"/v1/responses/{body['id']}").status_code == 200


def test_store_false_answers_but_keeps_nothing(client: TestClient, store: Store):
    body = client.post("/v1/responses", json={"model": "sft", "input": "hi", "store": False}).json()
    assert body["store"] is False and body["output"]
    error(client.get(f"/v1/responses/{body['id']}"), 404)
    assert store.list_conversations(viewer=None)[0] == []


@pytest.mark.parametrize(
    "field, value",
    [
        ("tools", [{"type": "function", "name": "f", "parameters": {}}]),
        ("reasoning", {"effort": "low"}),
        ("include", ["message.output_text.logprobs"]),
        ("background", True),
        ("conversation", "conv_1"),
        ("truncation", "auto"),
        ("text", {"format": {"type": "json_object"}}),
        ("top_logprobs", 2),
    ],
)
def test_every_unhonoured_field_is_a_400_naming_it(client: TestClient, field, value):
    e = error(client.post("/v1/responses", json={"model": "sft", "input": "hi", field: value}), 400)
    assert e["param"] and e["param"].split(".")[0] == field, e


def test_bad_input_is_a_400_naming_it(client: TestClient):
    image = [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x"}]}]
    assert error(client.post("/v1/responses", json={"model": "sft", "input": image}), 400)["param"].startswith("input")
    call = [{"type": "function_call_output", "call_id": "c", "output": "x"}]
    assert error(client.post("/v1/responses", json={"model": "sft", "input": call}), 400)["param"].startswith("input")
    assert error(client.post("/v1/responses", json={"model": "sft", "input": []}), 400)["param"] == "input"
    e = error(client.post("/v1/responses", json={"model": "sft", "input": "hi", "max_output_tokens": 10_000}), 400)
    assert e["param"] == "max_output_tokens" and "max_output_tokens" in e["message"]
    assert error(client.post("/v1/responses", json={"model": "nope", "input": "hi"}), 404)["param"] == "model"


def test_extensions_as_chat_has_them(client: TestClient):
    body = client.post(
        "/v1/responses", json={"model": "base", "input": "hi", "speculative": "ngram", "temperature": 0}
    ).json()
    assert body["speculative"]["method"] == "ngram"
    e = error(client.post("/v1/responses", json={"model": "sft", "input": "hi", "speculative": "eagle"}), 400)
    assert e["param"] == "speculative"
    e = error(client.post("/v1/responses", json={"model": "sft", "input": "hi", "reward_model": "nope"}), 400)
    assert e["param"] == "reward_model"


def test_another_key_cannot_see_or_continue_a_response(serve):
    with serve(api_keys=frozenset({USER, OTHER}), admin_key=ADMIN) as client:
        user, other, admin = ({"authorization": f"Bearer {k}"} for k in (USER, OTHER, ADMIN))
        body = client.post("/v1/responses", json={"model": "sft", "input": "secret"}, headers=user).json()
        error(client.get(f"/v1/responses/{body['id']}", headers=other), 404)
        error(client.delete(f"/v1/responses/{body['id']}", headers=other), 404)
        error(
            client.post(
                "/v1/responses", json={"model": "sft", "input": "x", "previous_response_id": body["id"]}, headers=other
            ),
            404,
        )
        error(client.get(f"/v1/responses/{body['id']}"), 401)
        assert client.get(f"/v1/responses/{body['id']}", headers=admin).status_code == 200
        assert client.get(f"/v1/responses/{body['id']}", headers=user).status_code == 200


def test_with_prompt_logging_off_nothing_is_stored(serve, store: Store):
    with serve(log_prompts=False) as client:
        body = client.post("/v1/responses", json={"model": "sft", "input": "hi"}).json()
        assert body["store"] is False
        assert (
            error(client.post("/v1/responses", json={"model": "sft", "input": "hi", "store": True}), 400)["param"]
            == "store"
        )
    assert store.list_conversations(viewer=None)[0] == []


def test_input_items_are_the_turns_own(client: TestClient):
    first = client.post(
        "/v1/responses",
        json={
            "model": "sft",
            "input": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "one"}],
        },
    ).json()
    second = client.post(
        "/v1/responses", json={"model": "sft", "input": "two", "previous_response_id": first["id"]}
    ).json()
    items = client.get(f"/v1/responses/{first['id']}/input_items", params={"order": "asc"}).json()
    assert [(i["role"], i["content"][0]["text"]) for i in items["data"]] == [("system", "Be brief."), ("user", "one")]
    assert items["object"] == "list" and not items["has_more"]
    items = client.get(f"/v1/responses/{second['id']}/input_items").json()["data"]
    assert [i["content"][0]["text"] for i in items] == ["two"] and items[0]["content"][0]["type"] == "input_text"
    page = client.get(f"/v1/responses/{first['id']}/input_items", params={"limit": 1}).json()
    assert [i["role"] for i in page["data"]] == ["user"] and page["has_more"]  # desc: newest first
    rest = client.get(f"/v1/responses/{first['id']}/input_items", params={"after": page["last_id"]}).json()
    assert [i["role"] for i in rest["data"]] == ["system"]
    error(client.get("/v1/responses/resp_nope/input_items"), 404)


def test_a_stored_branch_chat_cannot_take_is_a_400(client: TestClient, store: Store):
    from server.store import NewMessage

    _, [tool] = store.create_conversation(owner=None, messages=[NewMessage("tool", "42")])  # no tool_call_id
    e = error(
        client.post("/v1/responses", json={"model": "sft", "input": "and?", "previous_response_id": tool.id}), 400
    )
    assert e["param"] == "input"
