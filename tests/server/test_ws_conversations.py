"""`/v1/ws` chats saved as conversations (opt-in `store`, `previous_response_id`), on scripted engines and a
SQLite store: saved like `/v1/responses` saves, with the same owner rules; bad values refused, naming the
field, and nothing saved."""

from __future__ import annotations

import time

import pytest
from starlette.testclient import TestClient

from server.auth import client_id_for
from server.settings import Settings
from server.store import Store

KENYA = [{"role": "user", "content": "Capital of Kenya?"}]
CHAT = {"type": "chat", "model": "base", "max_tokens": 3}
KEYS = dict(api_keys=frozenset({"alice-key", "bob-key"}), admin_key="admin-key")


@pytest.fixture
def store(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'ws.db'}")
    yield store
    store.close()


@pytest.fixture
def make_client(fake_app, store, tmp_path):
    clients = []

    def make(*, with_store: bool = True, **settings_kwargs) -> TestClient:
        settings = Settings(data_dir=tmp_path, **settings_kwargs)
        app, pool = fake_app(store=store if with_store else None, settings=settings, delay=0.0)
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        deadline = time.monotonic() + 5
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, "scripted engines did not warm up"
            time.sleep(0.01)
        client.engine = lambda: pool.built[("fake/base", None)]
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def finish(ws, fid) -> dict:
    """The frame that ends request `fid`, with the text its deltas streamed (as `_text`)."""
    text = ""
    while True:
        frame = ws.receive_json()
        if frame["id"] == fid and frame["type"] == "delta":
            text += frame["text"]
        elif frame["id"] == fid:
            return {**frame, "_text": text}


def chat(ws, fid, messages, **fields) -> dict:
    ws.send_json({**CHAT, "id": fid, "messages": messages, **fields})
    return finish(ws, fid)


def test_store_saves_the_turn_and_previous_response_id_continues_it(make_client, store):
    client = make_client()
    with client.websocket_connect("/v1/ws") as ws:
        first = chat(ws, "a", KENYA, store=True)
        assert first["type"] == "done" and first["conversation_id"].startswith("conv_")
        second = chat(ws, "b", [{"role": "user", "content": "And Peru?"}], previous_response_id=first["message_id"])
        # the saved branch went before this frame's messages, to the engine
        alone = chat(ws, "p", [{"role": "user", "content": "And Peru?"}])
        assert second["usage"]["prompt_tokens"] > alone["usage"]["prompt_tokens"] + first["usage"]["completion_tokens"]
        # from the first answer again: a branch beside "And Peru?"
        third = chat(ws, "c", [{"role": "user", "content": "And Chad?"}], previous_response_id=first["message_id"])
        plain = chat(ws, "d", KENYA)  # not asked: nothing saved
    assert second["conversation_id"] == third["conversation_id"] == first["conversation_id"]
    assert "conversation_id" not in plain and "message_id" not in plain
    [conversation] = store.list_conversations(viewer=None)[0]
    assert conversation.owner is None and conversation.title == "Capital of Kenya?"
    tree = store.conversation_messages(conversation.id, viewer=None)
    by_id = {m.id: m for m in tree}
    assert [(m.role, m.content) for m in tree][:2] == [("user", "Capital of Kenya?"), ("assistant", first["_text"])]
    answer = by_id[first["message_id"]]
    assert answer.generation_id == first["response_id"] and answer.stage == "base"
    assert answer.sampling["max_tokens"] == 3 and answer.content  # the answer's decoding settings, and its text
    peru, chad = by_id[by_id[second["message_id"]].parent_id], by_id[by_id[third["message_id"]].parent_id]
    assert peru.content == "And Peru?" and chad.content == "And Chad?"
    assert peru.parent_id == chad.parent_id == first["message_id"]  # two branches under the first answer
    assert len(tree) == 6

    # The same conversation through the Responses API: a WebSocket answer is a previous_response_id there too.
    more = client.post(
        "/v1/responses", json={"model": "base", "input": "And Mali?", "previous_response_id": second["message_id"]}
    )
    assert more.status_code == 200, more.text
    assert len(store.conversation_messages(conversation.id, viewer=None)) == 8


@pytest.mark.parametrize(
    "fields, param, code",
    [
        ({"store": "yes"}, "store", "invalid_store"),
        ({"store": 1}, "store", "invalid_store"),
        ({"store": None, "previous_response_id": 5}, "previous_response_id", None),
        ({"previous_response_id": ""}, "previous_response_id", None),
        ({"previous_response_id": "msg_nope"}, "previous_response_id", None),
        ({"store": True, "n": 2}, "n", "invalid_n"),
        ({"store": True, "storage": True}, "storage", None),  # a misspelt field: refused as any unknown one
    ],
)
def test_bad_values_are_refused_naming_the_field_and_nothing_is_saved(make_client, store, fields, param, code):
    client = make_client()
    with client.websocket_connect("/v1/ws") as ws:
        error = chat(ws, "x", KENYA, **fields)
        assert error["type"] == "error" and error["error"]["param"] == param, error
        if code:
            assert error["error"]["code"] == code
        assert chat(ws, "y", KENYA)["type"] == "done"  # the socket stays open
    assert store.list_conversations(viewer=None)[0] == []


def test_a_bad_message_after_a_saved_branch_is_named_by_its_place_in_the_frame(make_client, store):
    client = make_client()
    with client.websocket_connect("/v1/ws") as ws:
        first = chat(ws, "a", KENYA, store=True)
        bad = [{"role": "user", "content": "And Peru?"}, {"role": "user"}]  # the frame's messages[1]: no content
        error = chat(ws, "b", bad, previous_response_id=first["message_id"])
    assert error["type"] == "error" and error["error"]["param"].startswith("messages.1"), error
    assert len(store.conversation_messages(first["conversation_id"], viewer=None)) == 2


def test_a_foreign_conversation_is_unknown_and_the_admin_sees_all(make_client, store):
    client = make_client(**KEYS)
    with client.websocket_connect("/v1/ws?api_key=alice-key") as ws:
        mine = chat(ws, "a", KENYA, store=True)
    conversation = store.get_conversation(mine["conversation_id"], viewer=None)
    assert conversation.owner == client_id_for("alice-key")
    with client.websocket_connect("/v1/ws", headers={"Authorization": "Bearer bob-key"}) as ws:
        error = chat(ws, "b", [{"role": "user", "content": "Hi"}], previous_response_id=mine["message_id"])
        assert error["type"] == "error" and error["error"]["param"] == "previous_response_id"
        assert error["error"]["code"] == "not_found"  # as an unknown id: it reveals nothing
        bobs = chat(ws, "c", KENYA, store=True)
    assert store.get_conversation(bobs["conversation_id"], viewer=None).owner == client_id_for("bob-key")
    assert len(store.conversation_messages(mine["conversation_id"], viewer=None)) == 2  # bob wrote nothing there
    with client.websocket_connect("/v1/ws?api_key=admin-key") as ws:  # the admin continues anyone's
        admins = chat(ws, "d", [{"role": "user", "content": "Hi"}], previous_response_id=mine["message_id"])
    assert admins["conversation_id"] == mine["conversation_id"]
    listed = client.get("/v1/conversations", headers={"Authorization": "Bearer alice-key"}).json()["data"]
    assert [c["id"] for c in listed] == [mine["conversation_id"]]  # listed as the UI's and the API's are


def test_a_chain_through_a_deleted_response_is_refused(make_client, store):
    client = make_client()
    first = client.post("/v1/responses", json={"model": "base", "input": "Capital of Kenya?", "max_output_tokens": 3})
    second = client.post(
        "/v1/responses",
        json={
            "model": "base",
            "input": "And Peru?",
            "previous_response_id": first.json()["id"],
            "max_output_tokens": 3,
        },
    )
    assert client.delete(f"/v1/responses/{first.json()['id']}").status_code == 200
    before = store.conversation_messages(store.list_conversations(viewer=None)[0][0].id, viewer=None)
    with client.websocket_connect("/v1/ws") as ws:
        broken = chat(ws, "a", [{"role": "user", "content": "More"}], previous_response_id=second.json()["id"])
        gone = chat(ws, "b", [{"role": "user", "content": "More"}], previous_response_id=first.json()["id"])
    assert broken["type"] == "error" and broken["error"]["param"] == "previous_response_id"
    assert first.json()["id"] in broken["error"]["message"]
    assert gone["type"] == "error" and gone["error"]["code"] == "not_found"
    assert store.conversation_messages(before[0].conversation_id, viewer=None) == before


def test_prompt_logging_off_keeps_nothing_and_an_explicit_store_is_refused(make_client, store):
    client = make_client(log_prompts=False)
    with client.websocket_connect("/v1/ws") as ws:
        error = chat(ws, "a", KENYA, store=True)
        assert error["type"] == "error" and error["error"]["param"] == "store"
        assert chat(ws, "b", KENYA, store=False)["type"] == "done"
    no_store = make_client(with_store=False)
    with no_store.websocket_connect("/v1/ws") as ws:
        error = chat(ws, "a", KENYA, store=True)
        assert error["type"] == "error" and error["error"]["param"] == "store"
    assert store.list_conversations(viewer=None)[0] == []


def test_a_cancelled_chat_saves_nothing(fake_app, store, tmp_path):
    app, pool = fake_app(store=store, settings=Settings(data_dir=tmp_path), delay=0.05)
    with TestClient(app) as client:
        deadline = time.monotonic() + 5
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with client.websocket_connect("/v1/ws") as ws:
            ws.send_json({**CHAT, "max_tokens": 50, "id": "c", "messages": KENYA, "store": True})
            assert ws.receive_json()["type"] == "delta"
            ws.send_json({"type": "cancel", "id": "c"})
            done = finish(ws, "c")
    assert done["finish_reason"] == "cancelled" and "conversation_id" not in done
    assert store.list_conversations(viewer=None)[0] == []
