"""The HTTP contract: the OpenAPI spec says what the server answers and what it checks, wrong methods
get 405, and schemathesis (every phase, all checks, two fixed seeds, bounded examples) finds no
failure and no server error against the real app on scripted engines, served by uvicorn on loopback."""

import subprocess
import sys
import threading
import time
from datetime import datetime, timezone

import httpx
import pytest
import uvicorn
import yaml
from fastapi import FastAPI
from starlette.responses import PlainTextResponse
from starlette.testclient import TestClient

from server.contract import MethodNotAllowedMiddleware
from server.errors import APIError
from server.launcher import free_port
from server.routes.params import parse_time
from server.settings import Settings
from server.store import Store
from tests.conftest import FAKE_REGISTRY, ready_client

# Semantic checks JSON Schema cannot state (a prompt longer than the context, a tool message without
# its call, a list cursor naming nothing, a ranking that does not place every id) answer 400 to
# schema-valid data: positive_data_acceptance accepts 400 on top of its defaults. Not for the
# operations whose every check the schema states (enums, time formats): there a 400 to schema-valid
# data is a failure, as it was for `?format=` and `?until=` before the schema said so. Every other
# check runs with its defaults.
SCHEMATHESIS_TOML = """
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "400", "401", "403", "404", "409", "429"]

[[operations]]
include-name = ["GET /v1/leaderboard", "GET /v1/feedback/export"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "429"]
"""
PHASES = "examples,coverage,fuzzing,stateful"


def test_spec_documents_openai_errors_not_422(fake_app):
    app, _ = fake_app()
    spec = TestClient(app).get("/openapi.json").json()
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    chat = spec["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert "422" not in chat
    assert {"200", "400", "401", "404", "413", "429", "503"} <= set(chat)
    assert chat["429"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
    assert set(chat["200"]["content"]) == {"application/json", "text/event-stream"}
    assert set(spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
    assert "503" in spec["paths"]["/ready"]["get"]["responses"]


def test_a_known_path_with_a_wrong_method_is_405_even_under_a_catch_all_mount():
    app = FastAPI()

    @app.get("/v1/models")
    def models():
        return {"data": []}

    app.mount("/", PlainTextResponse("ui"))  # like the Gradio UI at /
    app.add_middleware(MethodNotAllowedMiddleware, routes_of=lambda: app.router.routes)
    client = TestClient(app)
    r = client.delete("/v1/models")
    assert r.status_code == 405 and r.headers["allow"] == "GET"
    assert r.json()["error"]["code"] == "method_not_allowed"
    assert client.get("/v1/models").status_code == 200
    assert client.delete("/elsewhere").text == "ui"  # unknown paths still reach the mount


def test_a_route_added_later_is_served_not_405():
    # The middleware remembers the routes' paths and methods: a route added while serving counts too.
    app = FastAPI()

    @app.get("/items")
    def items():
        return []

    app.add_middleware(MethodNotAllowedMiddleware, routes_of=lambda: app.router.routes)
    client = TestClient(app)
    assert client.get("/items").status_code == 200
    assert client.post("/items").status_code == 405

    @app.post("/items")
    def add_item():
        return {"added": True}

    assert client.post("/items").json() == {"added": True}
    assert client.delete("/items").headers["allow"] == "GET, POST"


def test_the_app_answers_405_with_allow(fake_app):
    with ready_client(*fake_app()) as client:
        r = client.get("/v1/chat/completions")
        assert r.status_code == 405 and r.headers["allow"] == "POST"
        assert r.json()["error"]["type"] == "invalid_request_error"


@pytest.fixture
def served_fake_app(fake_app, tmp_path):
    """The app (scripted engines, a real SQLite store) under uvicorn on a loopback port."""
    registry = tmp_path / "stages.yaml"
    registry.write_text(yaml.safe_dump(FAKE_REGISTRY))
    store = Store(f"sqlite:///{tmp_path / 'stagechat.db'}")
    app, _ = fake_app(store=store, settings=Settings(data_dir=tmp_path, registry_path=registry))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(url + "/ready").status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the app did not come up"
        time.sleep(0.05)
    yield url
    server.should_exit = True
    thread.join(10)


@pytest.mark.parametrize("seed", [1234, 7])
def test_schemathesis_every_phase_all_checks_find_nothing(served_fake_app, tmp_path, seed):
    # ~20 s a seed on 2 busy cores: 10 examples an operation keeps both seeds within a minute.
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_TOML)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "--config-file",
            str(config),
            "--no-color",
            "run",
            f"{served_fake_app}/openapi.json",
            "--checks",
            "all",
            "--phases",
            PHASES,
            "--seed",
            str(seed),
            "--max-examples",
            "10",
            "--workers",
            "1",
            "--generation-database",
            "none",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "Server error" not in result.stdout
    for phase in ("Examples", "Coverage", "Fuzzing", "Stateful"):  # each ran (none skipped) and passed
        assert f"✅ {phase}" in result.stdout, result.stdout[-3000:]


def test_the_spec_states_what_the_query_parameters_accept(fake_app, tmp_path):
    app, _ = fake_app(store=Store(f"sqlite:///{tmp_path / 'stagechat.db'}"))
    spec = TestClient(app).get("/openapi.json").json()
    params = {
        (path, p["name"]): p["schema"]
        for path, item in spec["paths"].items()
        for op in item.values()
        for p in op.get("parameters", [])
    }
    assert params[("/v1/feedback/export", "format")]["enum"] == ["kto", "dpo", "sft"]
    for path in ("/v1/leaderboard", "/v1/feedback", "/v1/rankings"):
        for name in ("since", "until"):
            kinds = params[(path, name)]["anyOf"]
            assert {"type": "string", "format": "date-time"} in kinds and any("pattern" in k for k in kinds)
    assert params[("/v1/feedback", "after")]["minLength"] == 1
    feedback = spec["components"]["schemas"]["FeedbackRequest"]["properties"]
    assert feedback["rating"]["enum"] == ["up", "down"]
    assert spec["components"]["schemas"]["RankingRequest"]["properties"]["response_ids"]["maxItems"] == 4


def test_the_spec_links_an_answer_to_its_rating_and_a_rating_to_its_deletion(fake_app, tmp_path):
    app, _ = fake_app(store=Store(f"sqlite:///{tmp_path / 'stagechat.db'}"))
    spec = TestClient(app).get("/openapi.json").json()
    ops = {op["operationId"]: (path, method) for path, item in spec["paths"].items() for method, op in item.items()}
    chat_links = spec["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["links"]
    assert ops[chat_links["RateTheAnswer"]["operationId"]] == ("/v1/feedback", "post")
    assert chat_links["RateTheAnswer"]["requestBody"]["response_id"] == "$response.body#/id"
    delete = spec["paths"]["/v1/rankings"]["post"]["responses"]["200"]["links"]["DeleteRanking"]
    assert ops[delete["operationId"]] == ("/v1/rankings/{item_id}", "delete")
    assert delete["parameters"] == {"path.item_id": "$response.body#/id"}


@pytest.mark.parametrize(
    "value, expected",
    [
        ("1767225600", datetime(2026, 1, 1, tzinfo=timezone.utc)),
        ("1.7672256e9", datetime(2026, 1, 1, tzinfo=timezone.utc)),  # a JSON number, as the schema says
        ("2026-01-01T02:00:00+02:00", datetime(2026, 1, 1, tzinfo=timezone.utc)),
        ("2026-01-01", datetime(2026, 1, 1, tzinfo=timezone.utc)),  # naive: UTC
        ("1e99", datetime(9999, 12, 30, tzinfo=timezone.utc)),  # past year 9999: after every stored time
        ("0001-01-01T00:00:00+14:00", datetime(1, 1, 2, tzinfo=timezone.utc)),
    ],
)
def test_a_time_filter_reads_what_the_schema_states(value, expected):
    assert parse_time(value, "since") == expected


@pytest.mark.parametrize("value", ["", " 1", "nan", "inf", "1_000", "2024-01-01T12:99:00Z"])
def test_a_time_filter_outside_the_schema_is_a_400(value):
    with pytest.raises(APIError) as refused:
        parse_time(value, "until")
    assert refused.value.status == 400 and "'until'" in str(refused.value.message)
