"""The Conversations API on the real app (scripted engines, a SQLite store): list, search, rename, delete,
branches, a branch as OpenAI messages, export and import of the tree, share links, and owner rules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server.auth import client_id_for
from server.settings import Settings
from server.store import Store
from tests.conftest import ready_client

pytestmark = pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
USER, OTHER, ADMIN = "user-key", "other-key", "admin-key"
KENYA = [{"role": "user", "content": "Capital of Kenya?"}, {"role": "assistant", "content": "Nairobi.", "stage": "sft"}]


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


def test_create_list_search_rename_delete(client: TestClient):
    made = client.post("/v1/conversations", json={"messages": KENYA}).json()
    assert made["object"] == "conversation" and made["title"] == "Capital of Kenya?" and made["client_id"] is None
    q, a = made["messages"]
    assert (a["parent_id"], a["stage"], a["ratings"]) == (q["id"], "sft", [])
    other = client.post("/v1/conversations", json={"title": "Empty"}).json()
    assert [c["id"] for c in client.get("/v1/conversations").json()["data"]] == [other["id"], made["id"]]
    assert [c["id"] for c in client.get("/v1/conversations", params={"q": "nairobi"}).json()["data"]] == [made["id"]]
    renamed = client.patch(f"/v1/conversations/{made['id']}", json={"title": "Kenya"}).json()
    assert renamed["title"] == "Kenya" and client.get(f"/v1/conversations/{made['id']}").json()["title"] == "Kenya"
    assert error(client.patch(f"/v1/conversations/{made['id']}", json={"title": ""}), 400)["param"] == "title"
    assert client.delete(f"/v1/conversations/{made['id']}").json()["deleted"] is True
    error(client.get(f"/v1/conversations/{made['id']}"), 404)
    error(client.delete(f"/v1/conversations/{made['id']}"), 404)


def test_branches_and_a_branch_as_openai_messages(client: TestClient):
    made = client.post("/v1/conversations", json={"messages": KENYA}).json()
    q, _ = made["messages"]
    [b] = client.post(
        f"/v1/conversations/{made['id']}/messages",
        json={"parent_id": q["id"], "messages": [{"role": "assistant", "content": "Nairobi!"}]},
    ).json()["data"]
    tree = client.get(f"/v1/conversations/{made['id']}").json()["messages"]
    assert [m["parent_id"] for m in tree] == [None, q["id"], q["id"]]  # two answers to one question
    branch = client.get(f"/v1/conversations/{made['id']}/branches/{b['id']}").json()
    assert branch["messages"] == [
        {"role": "user", "content": "Capital of Kenya?"},
        {"role": "assistant", "content": "Nairobi!"},
    ]
    e = error(
        client.post(
            f"/v1/conversations/{made['id']}/messages",
            json={"parent_id": "msg_nope", "messages": [{"role": "user", "content": "x"}]},
        ),
        400,
    )
    assert e["param"] == "parent_id"
    error(client.get(f"/v1/conversations/{made['id']}/branches/msg_nope"), 404)
    other = client.post("/v1/conversations", json={"messages": KENYA[:1]}).json()
    error(client.get(f"/v1/conversations/{other['id']}/branches/{b['id']}"), 404)  # not that conversation's


def test_export_import_round_trip_and_malformed_trees(client: TestClient, store: Store):
    made = client.post("/v1/conversations", json={"messages": KENYA}).json()
    client.post(
        f"/v1/conversations/{made['id']}/messages",
        json={"parent_id": made["messages"][0]["id"], "messages": [{"role": "assistant", "content": "N."}]},
    )
    tree = client.get(f"/v1/conversations/{made['id']}/export").json()
    assert tree["format"] == "stagechat.conversation.v1" and len(tree["messages"]) == 3
    copy = client.post("/v1/conversations/import", json=tree).json()
    assert copy["id"] != made["id"] and copy["title"] == made["title"]
    shape = [(m["role"], m["content"], m["stage"]) for m in copy["messages"]]
    assert sorted(shape, key=str) == sorted([(m["role"], m["content"], m["stage"]) for m in tree["messages"]], key=str)
    before = len(client.get("/v1/conversations").json()["data"])
    first = tree["messages"][0]
    for bad in (
        {"messages": "no"},
        {"format": "other", "messages": tree["messages"]},
        {"messages": [{**first, "parent_id": "missing"}]},
        {"messages": [{**first, "parent_id": first["id"]}]},  # its own parent: a cycle
        {"messages": [first, first]},
        {"messages": [{**first, "role": "wizard"}]},
        {"messages": [{**first, "extra": 1}]},
        {"messages": [{"id": "x"}]},
    ):
        assert client.post("/v1/conversations/import", json=bad).status_code == 400, bad
    assert len(client.get("/v1/conversations").json()["data"]) == before  # nothing written


def test_share_links_read_without_a_key_show_no_raters_and_can_be_revoked(serve):
    with serve(api_keys=frozenset({USER, OTHER}), admin_key=ADMIN) as client:
        user, other = ({"authorization": f"Bearer {k}"} for k in (USER, OTHER))
        answer = client.post("/v1/responses", json={"model": "sft", "input": "Capital of Kenya?"}, headers=user).json()
        assert (
            client.post(
                "/v1/feedback", json={"response_id": answer["generation_id"], "rating": "up"}, headers=user
            ).status_code
            == 200
        )
        [conv] = client.get("/v1/conversations", headers=user).json()["data"]
        full = client.get(f"/v1/conversations/{conv['id']}", headers=user).json()
        assert full["messages"][-1]["ratings"] == [{"client_id": client_id_for(USER), "rating": "up"}]

        link = client.post(f"/v1/conversations/{conv['id']}/share", headers=user).json()
        assert link["id"].startswith("shr_") and len(link["id"]) > 20
        error(client.post(f"/v1/conversations/{conv['id']}/share", headers=other), 404)
        shown = client.get(f"/v1/shared/{link['id']}")  # no key
        assert shown.status_code == 200
        body = shown.json()
        text = shown.text
        assert [m["content"] for m in body["messages"]] == [
            "Capital of Kenya?",
            answer["output"][0]["content"][0]["text"],
        ]
        assert client_id_for(USER) not in text and "rating" not in text and answer["generation_id"] not in text
        # read only: no write goes through a share id
        assert client.post(f"/v1/shared/{link['id']}", json={}).status_code == 405
        error(client.delete(f"/v1/shared/{link['id']}"), 401)
        error(client.delete(f"/v1/shared/{link['id']}", headers=other), 404)
        assert [s["id"] for s in client.get(f"/v1/conversations/{conv['id']}/shares", headers=user).json()["data"]] == [
            link["id"]
        ]
        page = client.get(link["page"])  # the same, as a page for a browser: escaped, no script may run
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "Capital of Kenya?" in page.text and "default-src 'none'" in page.headers["content-security-policy"]
        assert client_id_for(USER) not in page.text
        assert client.delete(f"/v1/shared/{link['id']}", headers=user).json()["deleted"] is True
        error(client.get(link["page"]), 404)
        error(client.get(f"/v1/shared/{link['id']}"), 404)


def test_owners_and_the_admin(serve):
    with serve(api_keys=frozenset({USER, OTHER}), admin_key=ADMIN) as client:
        user, other, admin = ({"authorization": f"Bearer {k}"} for k in (USER, OTHER, ADMIN))
        mine = client.post("/v1/conversations", json={"messages": KENYA}, headers=user).json()
        assert mine["client_id"] == client_id_for(USER)
        error(client.get("/v1/conversations"), 401)
        assert client.get("/v1/conversations", headers=other).json()["data"] == []
        for call in (
            lambda: client.get(f"/v1/conversations/{mine['id']}", headers=other),
            lambda: client.patch(f"/v1/conversations/{mine['id']}", json={"title": "x"}, headers=other),
            lambda: client.get(f"/v1/conversations/{mine['id']}/export", headers=other),
            lambda: client.delete(f"/v1/conversations/{mine['id']}", headers=other),
        ):
            error(call(), 404)
        assert [c["id"] for c in client.get("/v1/conversations", headers=admin).json()["data"]] == [mine["id"]]
        assert client.delete(f"/v1/conversations/{mine['id']}", headers=admin).status_code == 200


def test_a_response_continues_a_saved_conversation(client: TestClient):
    """Responses and saved conversations are one thing: a message id is a previous_response_id."""
    made = client.post("/v1/conversations", json={"messages": KENYA}).json()
    answer = client.post(
        "/v1/responses", json={"model": "sft", "input": "And Peru?", "previous_response_id": made["messages"][-1]["id"]}
    ).json()
    tree = client.get(f"/v1/conversations/{made['id']}").json()["messages"]
    assert [m["role"] for m in tree] == ["user", "assistant", "user", "assistant"] and tree[-1]["id"] == answer["id"]


def test_a_shared_page_escapes_what_it_shows(client: TestClient):
    made = client.post("/v1/conversations", json={"messages": [{"role": "user", "content": "<script>x()</script>"}]})
    link = client.post(f"/v1/conversations/{made.json()['id']}/share").json()
    page = client.get(link["page"]).text
    assert "<script>" not in page and "&lt;script&gt;x()&lt;/script&gt;" in page
