"""The feedback API over HTTP: a tiny app with only the feedback router and the real error handlers."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from server.app import install_error_handlers
from server.auth import client_id_for
from server.routes.feedback import router
from server.settings import Settings
from server.store import Store

KENYA = [{"role": "user", "content": "What is the capital of Kenya?"}]
USER, ADMIN = "user-key", "admin-key"


@pytest.fixture
def make_client(store: Store, tmp_path: Path) -> Callable[..., TestClient]:
    def make(**settings) -> TestClient:
        app = FastAPI()
        install_error_handlers(app)
        app.include_router(router)
        app.state.store = store
        app.state.settings = Settings(data_dir=tmp_path, **settings)
        return TestClient(app)

    return make


@pytest.fixture
def client(make_client) -> TestClient:
    return make_client()


def error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_rate_and_rerate(client: TestClient, store: Store, log_answer):
    answer = log_answer()
    r = client.post("/v1/feedback", json={"response_id": answer.id, "rating": "up", "tags": ["correct"]})
    assert r.status_code == 200, r.text
    first = r.json()
    assert first["object"] == "feedback" and first["id"].startswith("fb-")
    assert (first["response_id"], first["rating"], first["tags"], first["stage"]) == (
        answer.id,
        "up",
        ["correct"],
        "sft",
    )
    assert isinstance(first["created_at"], int)

    again = client.post("/v1/feedback", json={"response_id": answer.id, "rating": "down", "comment": "no"}).json()
    assert (again["id"], again["rating"], again["comment"]) == (first["id"], "down", "no")
    listing = client.get("/v1/feedback").json()
    assert [(fb["id"], fb["rating"]) for fb in listing["data"]] == [(first["id"], "down")]


def test_rating_errors(client: TestClient, log_answer):
    answer = log_answer()
    e = error(client.post("/v1/feedback", json={"response_id": "chatcmpl-nope", "rating": "up"}), 404)
    assert (e["type"], e["param"]) == ("not_found_error", "response_id")
    e = error(client.post("/v1/feedback", json={"response_id": answer.id, "rating": "meh"}), 400)
    assert e["param"] == "rating" and "up, down" in e["message"]
    error(client.post("/v1/feedback", json={"response_id": answer.id}), 400)  # missing rating
    error(client.post("/v1/feedback", json={"response_id": answer.id, "rating": "up", "stars": 5}), 400)
    error(client.post("/v1/feedback", content=b"{not json", headers={"content-type": "application/json"}), 400)
    assert client.get("/v1/feedback").json()["data"] == []  # nothing was stored


def test_without_prompt_logging_the_body_carries_the_text(client: TestClient, log_answer):
    answer = log_answer(logged=False)
    e = error(client.post("/v1/feedback", json={"response_id": answer.id, "rating": "up"}), 400)
    assert "does not log prompts" in e["message"] and "'prompt'" in e["message"] and "'completion'" in e["message"]
    r = client.post(
        "/v1/feedback", json={"response_id": answer.id, "rating": "up", "prompt": KENYA, "completion": "Nairobi."}
    )
    assert r.status_code == 200, r.text


def test_preferences(client: TestClient, log_answer):
    a, b = log_answer(answer="Nairobi."), log_answer(answer="Mombasa.", stage="rlhf")
    other = log_answer("Capital of Peru?", "Lima.")
    r = client.post("/v1/preferences", json={"response_ids": [a.id, b.id], "choice": "a"})
    assert r.status_code == 200, r.text
    pref = r.json()
    assert (pref["object"], pref["response_ids"], pref["choice"], pref["stages"]) == (
        "preference",
        [a.id, b.id],
        "a",
        ["sft", "rlhf"],
    )

    e = error(client.post("/v1/preferences", json={"response_ids": [a.id, other.id], "choice": "a"}), 400)
    assert "different prompts" in e["message"]
    error(client.post("/v1/preferences", json={"response_ids": [a.id, a.id], "choice": "a"}), 400)
    error(client.post("/v1/preferences", json={"response_ids": [a.id, b.id, other.id], "choice": "a"}), 400)
    error(client.post("/v1/preferences", json={"response_ids": [a.id, b.id], "choice": "left"}), 400)
    e = error(client.post("/v1/preferences", json={"response_ids": [a.id, "chatcmpl-nope"], "choice": "a"}), 404)
    assert e["param"] == "response_ids"


def test_list_filters_and_pages(client: TestClient, log_answer):
    for i in range(5):
        answer = log_answer(f"q{i}", "a", stage="base" if i < 2 else "sft")
        client.post("/v1/feedback", json={"response_id": answer.id, "rating": "up" if i % 2 else "down"})

    ids, after = [], None
    while True:
        page = client.get("/v1/feedback", params={"limit": 2, **({"after": after} if after else {})}).json()
        assert page["object"] == "list"
        ids += [fb["id"] for fb in page["data"]]
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert len(ids) == len(set(ids)) == 5

    assert len(client.get("/v1/feedback", params={"stage": "base"}).json()["data"]) == 2
    assert {fb["rating"] for fb in client.get("/v1/feedback", params={"rating": "up"}).json()["data"]} == {"up"}
    hour_ago, in_an_hour = time.time() - 3600, time.time() + 3600
    assert len(client.get("/v1/feedback", params={"since": hour_ago}).json()["data"]) == 5
    assert client.get("/v1/feedback", params={"since": in_an_hour}).json()["data"] == []
    assert client.get("/v1/feedback", params={"until": "2000-01-01T00:00:00Z"}).json()["data"] == []
    assert error(client.get("/v1/feedback", params={"since": "yesterday"}), 400)["param"] == "since"
    error(client.get("/v1/feedback", params={"rating": "meh"}), 400)
    error(client.get("/v1/feedback", params={"limit": 0}), 400)
    assert error(client.get("/v1/feedback", params={"after": "fb-nope"}), 400)["param"] == "after"


def test_export_streams_json_lines(client: TestClient, log_answer):
    good, bad = log_answer(answer="Nairobi."), log_answer(answer="Mombasa.")
    client.post("/v1/feedback", json={"response_id": good.id, "rating": "up"})
    client.post("/v1/feedback", json={"response_id": bad.id, "rating": "down"})
    r = client.get("/v1/feedback/export", params={"format": "dpo"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    rows = [json.loads(line) for line in r.text.splitlines()]
    assert rows == [
        {
            "prompt": KENYA,
            "chosen": [{"role": "assistant", "content": "Nairobi."}],
            "rejected": [{"role": "assistant", "content": "Mombasa."}],
        }
    ]
    assert len(client.get("/v1/feedback/export", params={"format": "kto"}).text.splitlines()) == 2
    assert error(client.get("/v1/feedback/export", params={"format": "ppo"}), 400)["param"] == "format"


def test_keys(make_client, log_answer):
    client = make_client(api_keys=frozenset({USER, "other-key"}), admin_key=ADMIN)
    user, other, admin = ({"authorization": f"Bearer {k}"} for k in (USER, "other-key", ADMIN))
    a, b = log_answer(), log_answer()
    assert error(client.post("/v1/feedback", json={"response_id": a.id, "rating": "up"}), 401)
    fb = client.post("/v1/feedback", json={"response_id": a.id, "rating": "up"}, headers=user).json()
    assert fb["client_id"] == client_id_for(USER) != USER  # the store never holds a key
    client.post("/v1/feedback", json={"response_id": b.id, "rating": "down"}, headers=other)

    # Raters see their own ratings; the admin sees everyone's.
    assert [x["id"] for x in client.get("/v1/feedback", headers=user).json()["data"]] == [fb["id"]]
    assert len(client.get("/v1/feedback", headers=admin).json()["data"]) == 2

    e = error(client.get("/v1/feedback/export", params={"format": "kto"}, headers=user), 401)
    assert e["code"] == "invalid_admin_key"
    assert client.get("/v1/feedback/export", params={"format": "kto"}, headers=admin).status_code == 200


def test_rankings(client: TestClient, log_answer):
    a, b, c = (log_answer(answer=t, stage=s) for t, s in [("Nairobi.", "rlhf"), ("Nairobi", "sft"), ("No.", "base")])
    other = log_answer("Capital of Peru?", "Lima.")
    r = client.post(
        "/v1/rankings",
        json={"response_ids": [a.id, b.id, c.id], "ranking": [[a.id, b.id], [c.id]], "comment": "a and b both fine"},
    )
    assert r.status_code == 200, r.text
    ranking = r.json()
    assert (ranking["object"], ranking["ranking"], ranking["stages"]) == (
        "ranking",
        [[a.id, b.id], [c.id]],
        ["rlhf", "sft", "base"],
    )
    again = client.post("/v1/rankings", json={"response_ids": [c.id, b.id, a.id], "ranking": [[a.id], [b.id], [c.id]]})
    assert again.json()["id"] == ranking["id"]  # the same answers, restated
    rows = [json.loads(x) for x in client.get("/v1/feedback/export", params={"format": "dpo"}).text.splitlines()]
    assert len(rows) == 3  # every ordered pair of a > b > c

    e = error(
        client.post("/v1/rankings", json={"response_ids": [a.id, other.id], "ranking": [[a.id], [other.id]]}), 400
    )
    assert e["param"] == "response_ids" and "different conversations" in e["message"]
    assert (
        error(client.post("/v1/rankings", json={"response_ids": [a.id, b.id], "ranking": [[a.id]]}), 400)["param"]
        == "ranking"
    )
    assert (
        error(client.post("/v1/rankings", json={"response_ids": [a.id, a.id], "ranking": [[a.id], [a.id]]}), 400)[
            "param"
        ]
        == "response_ids"
    )
    assert (
        error(client.post("/v1/rankings", json={"response_ids": [a.id], "ranking": [[a.id]]}), 400)["param"]
        == "response_ids"
    )
    error(client.post("/v1/rankings", json={"response_ids": [a.id, b.id], "ranking": [[a.id], [b.id]], "k": 2}), 400)
    assert (
        error(
            client.post(
                "/v1/rankings", json={"response_ids": [a.id, "chatcmpl-x"], "ranking": [[a.id], ["chatcmpl-x"]]}
            ),
            404,
        )["param"]
        == "response_ids"
    )
    assert len(client.get("/v1/rankings").json()["data"]) == 1


def test_corrections(client: TestClient, log_answer):
    answer = log_answer(answer="Mombasa.")
    for text in ("", "  ", "Mombasa."):
        e = error(client.post("/v1/corrections", json={"response_id": answer.id, "completion": text}), 400)
        assert e["param"] == "completion"
    error(client.post("/v1/corrections", json={"response_id": answer.id}), 400)
    assert (
        error(client.post("/v1/corrections", json={"response_id": "chatcmpl-x", "completion": "Nairobi."}), 404)[
            "param"
        ]
        == "response_id"
    )
    assert client.get("/v1/corrections").json()["data"] == []
    r = client.post("/v1/corrections", json={"response_id": answer.id, "completion": "Nairobi.", "comment": "city"})
    assert r.status_code == 200, r.text
    corr = r.json()
    assert (corr["object"], corr["completion"], corr["stage"], corr["comment"]) == (
        "correction",
        "Nairobi.",
        "sft",
        "city",
    )
    sft = [json.loads(x) for x in client.get("/v1/feedback/export", params={"format": "sft"}).text.splitlines()]
    assert sft == [{"messages": KENYA + [{"role": "assistant", "content": "Nairobi."}]}]
    dpo = [json.loads(x) for x in client.get("/v1/feedback/export", params={"format": "dpo"}).text.splitlines()]
    assert [(d["chosen"][0]["content"], d["rejected"][0]["content"]) for d in dpo] == [("Nairobi.", "Mombasa.")]


def test_raters_list_and_delete_their_own_and_the_admin_all(make_client, log_answer):
    client = make_client(api_keys=frozenset({USER, "other-key"}), admin_key=ADMIN)
    user, other, admin = ({"authorization": f"Bearer {k}"} for k in (USER, "other-key", ADMIN))
    a, b = log_answer(answer="Nairobi."), log_answer(answer="Mombasa.")
    made = {
        "feedback": client.post("/v1/feedback", json={"response_id": a.id, "rating": "up"}, headers=user).json(),
        "preferences": client.post(
            "/v1/preferences", json={"response_ids": [a.id, b.id], "choice": "a"}, headers=user
        ).json(),
        "rankings": client.post(
            "/v1/rankings", json={"response_ids": [a.id, b.id], "ranking": [[b.id], [a.id]]}, headers=user
        ).json(),
        "corrections": client.post(
            "/v1/corrections", json={"response_id": b.id, "completion": "Nairobi."}, headers=user
        ).json(),
    }
    client.post("/v1/rankings", json={"response_ids": [a.id, b.id], "ranking": [[a.id, b.id]]}, headers=other)
    for path, item in made.items():
        assert item["client_id"] == client_id_for(USER), item
        assert [x["id"] for x in client.get(f"/v1/{path}", headers=user).json()["data"]] == [item["id"]]
        assert all(
            x["client_id"] != client_id_for(USER) for x in client.get(f"/v1/{path}", headers=other).json()["data"]
        )
        error(client.get(f"/v1/{path}"), 401)
        e = error(client.delete(f"/v1/{path}/{item['id']}", headers=other), 404)  # not theirs: nothing revealed
        assert e["type"] == "not_found_error"
        r = client.delete(f"/v1/{path}/{item['id']}", headers=user)
        assert r.status_code == 200 and r.json()["deleted"] is True
        assert client.get(f"/v1/{path}", headers=user).json()["data"] == []
        error(client.delete(f"/v1/{path}/{item['id']}", headers=user), 404)  # gone
    [theirs] = client.get("/v1/rankings", headers=admin).json()["data"]
    assert client.delete(f"/v1/rankings/{theirs['id']}", headers=admin).status_code == 200  # the admin: anyone's
    assert client.get("/v1/rankings", headers=other).json()["data"] == []


# ---------------------------------------------------------------------------------------------
# Through the real app: the serving layer logs answers, the feedback API rates them.


@contextmanager
def serve(fake_app, store: Store, tmp_path: Path, **settings) -> Iterator[TestClient]:
    app, _ = fake_app(store=store, settings=Settings(data_dir=tmp_path, **settings))
    with TestClient(app) as client:
        deadline = time.monotonic() + 10
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, "scripted engines never got ready"
            time.sleep(0.01)
        yield client


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_answers_from_the_app_can_be_rated_and_exported(fake_app, store: Store, tmp_path: Path):
    with serve(fake_app, store, tmp_path) as client:
        body = client.post(
            "/v1/chat/completions", json={"model": "sft", "messages": KENYA, "n": 2, "max_tokens": 4, "seed": 1}
        ).json()
        first, second = body["id"], f"{body['id']}:1"
        logged = store.get_generation(first)
        assert logged is not None and logged.messages == KENYA and logged.stage == "sft"
        assert logged.completion == body["choices"][0]["message"]["content"]

        assert client.post("/v1/feedback", json={"response_id": first, "rating": "up"}).status_code == 200
        assert client.post("/v1/feedback", json={"response_id": second, "rating": "up"}).status_code == 200
        pref = client.post("/v1/preferences", json={"response_ids": [first, second], "choice": "a"})
        assert pref.status_code == 200, pref.text
        sft = [json.loads(x) for x in client.get("/v1/feedback/export", params={"format": "sft"}).text.splitlines()]
        texts = {c["message"]["content"] for c in body["choices"]}  # scripted answers may coincide
        assert sorted(sft, key=str) == sorted(
            [{"messages": KENYA + [{"role": "assistant", "content": t}]} for t in texts], key=str
        )


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_with_prompt_logging_off_the_app_logs_only_a_hash(fake_app, store: Store, tmp_path: Path):
    with serve(fake_app, store, tmp_path, log_prompts=False) as client:
        body = client.post("/v1/chat/completions", json={"model": "sft", "messages": KENYA, "max_tokens": 4}).json()
        text = body["choices"][0]["message"]["content"]
        logged = store.get_generation(body["id"])
        assert (logged.messages, logged.completion) == (None, None)
        e = error(client.post("/v1/feedback", json={"response_id": body["id"], "rating": "up"}), 400)
        assert "does not log prompts" in e["message"]
        r = client.post(
            "/v1/feedback", json={"response_id": body["id"], "rating": "up", "prompt": KENYA, "completion": text}
        )
        assert r.status_code == 200, r.text
