"""The HTTP contract: the OpenAPI spec says what the server answers, wrong methods get 405, and
schemathesis (all checks, fixed seed, bounded examples) finds no failure and no server error
against the real app on scripted engines, served by uvicorn on loopback."""

import subprocess
import sys
import threading
import time

import httpx
import pytest
import uvicorn
import yaml
from fastapi import FastAPI
from starlette.responses import PlainTextResponse
from starlette.testclient import TestClient

from server.contract import MethodNotAllowedMiddleware
from server.launcher import free_port
from server.settings import Settings
from server.store import Store
from tests.conftest import FAKE_REGISTRY, ready_client

# Semantic checks JSON Schema cannot state (a prompt longer than the context, a tool message without
# its call, a malformed time) answer 400 to schema-valid data: positive_data_acceptance accepts 400
# on top of its defaults. Every other check runs with its defaults.
SCHEMATHESIS_TOML = """
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "400", "401", "403", "404", "409", "429"]
"""


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


def test_schemathesis_all_checks_find_nothing(served_fake_app, tmp_path):
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_TOML)
    result = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "--no-color", "run",
         f"{served_fake_app}/openapi.json", "--checks", "all", "--seed", "1", "--max-examples", "20",
         "--workers", "1", "--generation-database", "none"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "Server error" not in result.stdout
