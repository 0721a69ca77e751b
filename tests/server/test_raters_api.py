"""A rater's data over HTTP (`server/routes/raters.py`): a key downloads and deletes its own; the admin
anyone's; another key gets 403; without keys `me` is nobody in particular (403)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from server.app import install_error_handlers
from server.auth import client_id_for
from server.routes.raters import router
from server.settings import Settings
from server.store import Store
from tests.server.raters_data import write_everything

USER, OTHER, ADMIN = "user-key", "other-key", "admin-key"


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def make_client(store: Store, tmp_path: Path, **settings) -> TestClient:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(router)
    app.state.store, app.state.settings = store, Settings(data_dir=tmp_path, **settings)
    return TestClient(app)


@pytest.fixture
def client(store: Store, tmp_path: Path) -> TestClient:
    write_everything(store, client_id_for(USER), client_id_for(OTHER))
    return make_client(store, tmp_path, api_keys=frozenset({USER, OTHER}), admin_key=ADMIN)


def error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert code is None or body["code"] == code
    return body


def test_a_key_downloads_its_own_data_and_only_the_admin_anyone_elses(client: TestClient):
    me, other = client_id_for(USER), client_id_for(OTHER)
    mine = client.get("/v1/raters/me/data", headers=auth(USER))
    assert mine.status_code == 200, mine.text
    doc = mine.json()
    assert doc["rater"] == me and doc["counts"]["feedback"] == 1 and doc["counts"]["arena_votes"] == 2
    assert {f["rater"] for f in doc["feedback"]} == {me}
    assert client.get(f"/v1/raters/{me}/data", headers=auth(USER)).json()["counts"] == doc["counts"]
    assert client.get(f"/v1/raters/{me}/data", headers=auth(ADMIN)).json()["counts"] == doc["counts"]
    error(client.get(f"/v1/raters/{other}/data", headers=auth(USER)), 403, "not_your_data")
    error(client.delete(f"/v1/raters/{other}/data", headers=auth(USER)), 403, "not_your_data")
    error(client.get("/v1/raters/me/data"), 401)
    error(client.get("/v1/raters/me/data", headers=auth("stolen")), 401)
    assert error(client.get(f"/v1/raters/{'x' * 65}/data", headers=auth(ADMIN)), 400)["param"] == "rater"
    assert client.get(f"/v1/raters/{other}/data", headers=auth(USER)).status_code == 403  # and nothing changed
    # OTHER's own rating and their rating of USER's answer: both theirs.
    assert client.get("/v1/raters/me/data", headers=auth(OTHER)).json()["counts"]["feedback"] == 2


def test_a_key_deletes_its_own_data_and_the_admin_anyones(client: TestClient):
    other = client_id_for(OTHER)
    gone = client.delete("/v1/raters/me/data", headers=auth(USER))
    assert gone.status_code == 200, gone.text
    body = gone.json()
    assert body["object"] == "rater.data.deleted" and body["deleted"] is True
    assert body["counts"]["feedback"] == 1 and body["counts"]["generations_kept"] == 1
    left = client.get("/v1/raters/me/data", headers=auth(USER)).json()["counts"]
    assert left["feedback"] == left["arena_votes"] == left["conversations"] == 0
    assert client.get("/v1/raters/me/data", headers=auth(OTHER)).json()["counts"]["feedback"] == 2
    by_admin = client.delete(f"/v1/raters/{other}/data", headers=auth(ADMIN))
    assert by_admin.status_code == 200 and by_admin.json()["counts"]["feedback"] == 2
    assert client.get(f"/v1/raters/{other}/data", headers=auth(ADMIN)).json()["counts"]["feedback"] == 0


def test_without_keys_me_is_nobody_in_particular(store: Store, tmp_path: Path):
    write_everything(store, "anonymous", "someone")
    client = make_client(store, tmp_path)
    error(client.get("/v1/raters/me/data"), 403, "anonymous_rater")
    error(client.delete("/v1/raters/me/data"), 403, "anonymous_rater")
    assert store.rater_data("anonymous")["counts"]["feedback"] == 1  # nothing deleted
    # With no admin key configured anyone is the admin, as for every admin endpoint.
    assert client.get("/v1/raters/anonymous/data").json()["counts"]["feedback"] == 1


def test_a_parameter_or_a_body_is_refused_and_deletes_nothing(client: TestClient, store: Store):
    me = client_id_for(USER)
    e = error(client.delete("/v1/raters/me/data", params={"dry_run": "1"}, headers=auth(USER)), 400, "extra_forbidden")
    assert e["param"] == "dry_run"
    e = error(client.request("DELETE", "/v1/raters/me/data", json={"keep": ["feedback"]}, headers=auth(USER)), 400)
    assert e["code"] == "extra_forbidden"
    assert error(client.get(f"/v1/raters/{me}/data", params={"section": "x"}, headers=auth(ADMIN)), 400)["param"] == (
        "section"
    )
    assert store.rater_data(me)["counts"]["feedback"] == 1
    assert client.get("/v1/raters/me/data", params={"api_key": USER}).status_code == 200  # the key as a parameter
