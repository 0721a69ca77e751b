"""`/v1/ws` on scripted engines and a real SQLite store: every frame type and every error path."""

import time

import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from server.settings import Settings
from server.store import Store

MESSAGES = [{"role": "user", "content": "Capital of Kenya?"}]
CHAT = {"type": "chat", "model": "base", "messages": MESSAGES}


def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


@pytest.fixture
def store(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'ws.db'}")
    yield store
    store.close()


@pytest.fixture
def make_client(fake_app, store):
    clients = []

    def make(
        *, with_store: bool = True, settings: Settings | None = None, wait_ready: bool = True, **engine_kwargs
    ) -> TestClient:
        app, pool = fake_app(store=store if with_store else None, settings=settings, **engine_kwargs)
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        if wait_ready:
            wait_until(lambda: client.get("/ready").status_code == 200)
        client.pool = pool
        client.engine = lambda: pool.built[("fake/base", None)]
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client):
    return make_client()


def collect(ws, request_id) -> tuple[list[dict], dict]:
    """The delta frames of one request, and the frame that ended it (done or error)."""
    deltas = []
    while True:
        frame = ws.receive_json()
        assert frame["id"] == request_id
        if frame["type"] == "delta":
            deltas.append(frame)
        else:
            return deltas, frame


def expect_error(ws, status_code: str, id=None) -> dict:
    frame = ws.receive_json()
    assert frame["type"] == "error", frame
    assert frame["id"] == id
    assert frame["error"]["code"] == status_code, frame
    assert set(frame["error"]) >= {"message", "type", "code"}
    return frame["error"]


# -- chat ----------------------------------------------------------------------------------------


def test_chat_streams_deltas_then_done_with_usage(client):
    with client.websocket_connect("/v1/ws") as ws:
        ws.send_json({**CHAT, "id": "a", "max_tokens": 4})
        deltas, done = collect(ws, "a")
    assert [d["text"] for d in deltas] == ["The", " capital", " of", " Kenya"]
    assert all("logprobs" not in d and "index" not in d for d in deltas)
    assert done["type"] == "done" and done["finish_reason"] == "length"
    assert done["response_id"].startswith("chatcmpl-") and done["model"] == "base"
    assert done["usage"]["completion_tokens"] == 4
    assert done["usage"]["total_tokens"] == done["usage"]["prompt_tokens"] + 4
    assert done["speculative"] is None
    assert done["timings"]["ttft_ms"] is not None


def test_chat_goes_through_the_shared_service_with_decoding_fields(client):
    with client.websocket_connect("/v1/ws") as ws:
        ws.send_json(
            {
                **CHAT,
                "id": 7,
                "temperature": 0.3,
                "top_p": 0.9,
                "seed": 11,
                "max_tokens": 2,
                "stop": ["Nairobi"],
                "stream": False,
            }
        )
        collect(ws, 7)
    _, settings, _ = client.engine().requests[-1]
    assert (settings.temperature, settings.top_p, settings.seed, settings.max_tokens) == (0.3, 0.9, 11, 2)
    assert settings.stop == ("Nairobi",)


def test_chat_with_logprobs_carries_them_on_every_delta(client):
    with client.websocket_connect("/v1/ws") as ws:
        ws.send_json({**CHAT, "id": "lp", "max_tokens": 3, "logprobs": True, "top_logprobs": 2})
        deltas, done = collect(ws, "lp")
    assert done["type"] == "done"
    for delta in deltas:
        [entry] = delta["logprobs"]["content"]
        assert entry["token"] == delta["text"] and entry["logprob"] < 0
        assert len(entry["top_logprobs"]) == 2


def test_speculative_figures_on_done(client):
    with client.websocket_connect("/v1/ws") as ws:
        ws.send_json({**CHAT, "id": "s", "speculative": "ngram"})
        _, done = collect(ws, "s")
    assert done["speculative"]["method"] == "ngram"
    assert done["speculative"]["accepted_tokens"] == 6 and done["speculative"]["acceptance_rate"] == 0.75


def test_n_greater_than_one_indexes_deltas(client):
    with client.websocket_connect("/v1/ws") as ws:
        ws.send_json({**CHAT, "id": "n", "n": 2, "max_tokens": 2})
        deltas, done = collect(ws, "n")
    assert sorted({d["index"] for d in deltas}) == [0, 1]
    assert [c["index"] for c in done["choices"]] == [0, 1]


def test_two_requests_interleave_on_one_socket(make_client):
    client = make_client(delay=0.01)
    with client.websocket_connect("/v1/ws") as ws:
        ws.send_json({**CHAT, "id": "x"})
        ws.send_json({**CHAT, "id": "y", "model": "sft"})
        frames = []
        while sum(f["type"] == "done" for f in frames) < 2:
            frames.append(ws.receive_json())
    order = [f["id"] for f in frames if f["type"] == "delta"]
    first_done = next(i for i, f in enumerate(frames) if f["type"] == "done")
    assert {"x", "y"} <= set(order[:first_done])  # both streamed before either finished
    texts = {rid: "".join(f["text"] for f in frames if f["type"] == "delta" and f["id"] == rid) for rid in "xy"}
    assert texts["x"] == "The capital of Kenya is Nairobi."
    assert texts["y"] == "The capital of Kenya is"  # sft's default max_tokens is 5


def test_the_answer_is_logged_before_done(client, store):
    with client.websocket_connect("/v1/ws") as ws:
        ws.send_json({**CHAT, "id": "log"})
        _, done = collect(ws, "log")
    record = store.get_generation(done["response_id"])
    assert record.completion == "The capital of Kenya is Nairobi." and record.stage == "base"


# -- cancel and disconnect -------------------------------------------------------------------------


def test_cancel_aborts_in_the_engine_and_says_cancelled(make_client, store):
    client = make_client(delay=0.05)
    with client.websocket_connect("/v1/ws") as ws:
        ws.send_json({**CHAT, "id": "c"})
        assert ws.receive_json()["type"] == "delta"
        ws.send_json({"type": "cancel", "id": "c"})
        _, done = collect(ws, "c")
        assert done["type"] == "done" and done["finish_reason"] == "cancelled"
        assert done["usage"]["completion_tokens"] < 7
        assert done["response_id"] in client.engine().aborted
        # the socket stays usable, and the same id may run again once finished
        ws.send_json({**CHAT, "id": "c", "max_tokens": 1})
        _, again = collect(ws, "c")
        assert again["finish_reason"] == "length"
    assert not client.engine().running


def test_cancel_of_a_finished_request_is_silently_ignored(client):
    with client.websocket_connect("/v1/ws") as ws:
        ws.send_json({**CHAT, "id": "f", "max_tokens": 1})
        collect(ws, "f")
        ws.send_json({"type": "cancel", "id": "f"})
        ws.send_json({**CHAT, "id": "g", "max_tokens": 1})
        _, done = collect(ws, "g")  # no error frame for "f" came first
        assert done["type"] == "done"


def test_cancel_errors(client):
    with client.websocket_connect("/v1/ws") as ws:
        ws.send_json({"type": "cancel", "id": "never"})
        assert expect_error(ws, "unknown_id", id="never")["type"] == "not_found_error"
        ws.send_json({"type": "cancel"})
        expect_error(ws, "missing_id")


def test_closing_the_socket_aborts_all_its_generations(make_client):
    client = make_client(delay=0.05)
    with client.websocket_connect("/v1/ws") as ws:
        ws.send_json({**CHAT, "id": 1})
        ws.send_json({**CHAT, "id": 2, "model": "sft", "max_tokens": 50})
        seen = set()
        while seen != {1, 2}:
            seen.add(ws.receive_json()["id"])
    engine = client.engine()
    wait_until(lambda: len(engine.aborted) == 2 and not engine.running)


# -- feedback --------------------------------------------------------------------------------------


def answer(ws, rid="q", **fields) -> str:
    ws.send_json({**CHAT, "id": rid, **fields})
    return collect(ws, rid)[1]["response_id"]


def test_feedback_is_acknowledged_and_stored_like_the_http_route(client, store):
    with client.websocket_connect("/v1/ws") as ws:
        response_id = answer(ws)
        ws.send_json({"type": "feedback", "id": "fb1", "response_id": response_id, "rating": "up", "comment": "right"})
        ack = ws.receive_json()
    assert ack["type"] == "ack" and ack["id"] == "fb1"
    assert ack["feedback"]["response_id"] == response_id and ack["feedback"]["rating"] == "up"
    page, _ = store.list_feedback()
    assert [(f.response_id, f.rating, f.comment, f.rater) for f in page] == [(response_id, "up", "right", "anonymous")]
    # the HTTP route lists the very same rating
    listed = client.get("/v1/feedback").json()["data"]
    assert [f["id"] for f in listed] == [ack["feedback"]["id"]]


def test_feedback_without_id_acks_with_null_id_and_rerating_replaces(client, store):
    with client.websocket_connect("/v1/ws") as ws:
        response_id = answer(ws)
        ws.send_json({"type": "feedback", "response_id": response_id, "rating": "up"})
        assert ws.receive_json()["id"] is None
        ws.send_json({"type": "feedback", "response_id": response_id, "rating": "down"})
        assert ws.receive_json()["feedback"]["rating"] == "down"
    page, _ = store.list_feedback()
    assert [f.rating for f in page] == ["down"]


def test_preference_is_stored(client, store):
    with client.websocket_connect("/v1/ws") as ws:
        a, b = answer(ws, "a"), answer(ws, "b", model="sft")
        ws.send_json({"type": "preference", "id": "p", "response_ids": [a, b], "choice": "b"})
        ack = ws.receive_json()
    assert ack["type"] == "ack" and ack["preference"]["choice"] == "b"
    assert ack["preference"]["stages"] == ["base", "sft"]


def test_ranking_and_correction_frames_are_stored(client, store):
    with client.websocket_connect("/v1/ws") as ws:
        a, b, c = answer(ws, "a", seed=1), answer(ws, "b", model="sft"), answer(ws, "c", seed=2)
        ws.send_json({"type": "ranking", "id": "r", "response_ids": [a, b, c], "ranking": [[b], [a, c]]})
        ack = ws.receive_json()
        assert ack["type"] == "ack" and ack["id"] == "r" and ack["ranking"]["ranking"] == [[b], [a, c]]
        ws.send_json({"type": "ranking", "id": "bad", "response_ids": [a, b], "ranking": [[a]]})
        error = ws.receive_json()
        assert error["type"] == "error" and error["id"] == "bad" and error["error"]["param"] == "ranking"
        ws.send_json({"type": "correction", "id": "c", "response_id": a, "completion": "It is Nairobi."})
        ack = ws.receive_json()
        assert ack["type"] == "ack" and ack["correction"]["completion"] == "It is Nairobi."
        ws.send_json({"type": "correction", "id": "empty", "response_id": a, "completion": " "})
        assert ws.receive_json()["error"]["param"] == "completion"
    assert [r.ranking for r in store.list_items("ranking")[0]] == [[[b], [a, c]]]
    assert [c.response_id for c in store.list_items("correction")[0]] == [a]


@pytest.mark.parametrize(
    ("frame", "code", "status_type"),
    [
        ({"response_id": "chatcmpl-nope", "rating": "up"}, "not_found", "not_found_error"),
        ({"response_id": "RID", "rating": "meh"}, None, "invalid_request_error"),
        ({"response_id": "RID", "rating": "up", "bogus": 1}, "extra_forbidden", "invalid_request_error"),
        ({"rating": "up"}, "missing", "invalid_request_error"),
    ],
)
def test_feedback_errors(client, store, frame, code, status_type):
    with client.websocket_connect("/v1/ws") as ws:
        response_id = answer(ws)
        frame = {k: (response_id if v == "RID" else v) for k, v in frame.items()}
        ws.send_json({"type": "feedback", "id": "e", **frame})
        error = ws.receive_json()
    assert error["type"] == "error" and error["id"] == "e"
    assert error["error"]["type"] == status_type
    if code:
        assert error["error"]["code"] == code
    assert store.list_feedback()[0] == []


def test_feedback_without_a_store_is_unavailable(make_client):
    client = make_client(with_store=False)
    with client.websocket_connect("/v1/ws") as ws:
        ws.send_json({"type": "feedback", "id": 3, "response_id": "x", "rating": "up"})
        assert expect_error(ws, "no_store", id=3)["type"] == "service_unavailable"


# -- malformed frames: an error frame, and the socket stays open -----------------------------------


@pytest.mark.parametrize(
    ("raw", "code", "id"),
    [
        ("not json", "invalid_json", None),
        ("[1, 2]", "invalid_frame", None),
        ('{"id": "u", "type": "shout"}', "unknown_type", "u"),
        ('{"id": "u"}', "unknown_type", "u"),
        ('{"type": "chat", "model": "base", "messages": []}', "missing_id", None),
        ('{"type": "chat", "id": true, "model": "base"}', "invalid_id", None),
        ('{"type": "chat", "id": "v", "messages": [{"role": "user", "content": "x"}]}', "missing", "v"),
        ('{"type": "chat", "id": "v", "model": "base", "messages": []}', "too_short", "v"),
        (
            '{"type": "chat", "id": "v", "model": "base", "temperature": 5, '
            '"messages": [{"role": "user", "content": "x"}]}',
            "less_than_equal",
            "v",
        ),
        (
            '{"type": "chat", "id": "v", "model": "base", "top_logprobs": 2, '
            '"messages": [{"role": "user", "content": "x"}]}',
            "value_error",
            "v",
        ),
    ],
)
def test_malformed_frames_get_an_error_and_the_socket_stays_open(client, raw, code, id):
    with client.websocket_connect("/v1/ws") as ws:
        ws.send_text(raw)
        expect_error(ws, code, id=id)
        ws.send_json({**CHAT, "id": "after", "max_tokens": 1})
        assert collect(ws, "after")[1]["type"] == "done"


def test_binary_frames_are_refused(client):
    with client.websocket_connect("/v1/ws") as ws:
        ws.send_bytes(b"{}")
        expect_error(ws, "invalid_frame")


def test_validation_error_names_the_parameter(client):
    with client.websocket_connect("/v1/ws") as ws:
        ws.send_json({**CHAT, "id": "p", "temperature": 5})
        error = expect_error(ws, "less_than_equal", id="p")
    assert error["param"] == "temperature" and error["message"].startswith("temperature:")


@pytest.mark.parametrize(
    ("fields", "code", "status_type"),
    [
        ({"model": "gpt-9"}, "model_not_found", "not_found_error"),
        ({"speculative": "medusa"}, "unknown_speculative_method", "invalid_request_error"),
        ({"max_tokens": 1000}, "context_length_exceeded", "invalid_request_error"),
        (
            {"messages": [{"role": "user", "content": "word " * 100}]},
            "context_length_exceeded",
            "invalid_request_error",
        ),
    ],
)
def test_service_errors_end_the_request(client, fields, code, status_type):
    with client.websocket_connect("/v1/ws") as ws:
        ws.send_json({**CHAT, "id": "r", **fields})
        assert expect_error(ws, code, id="r")["type"] == status_type


def test_duplicate_running_id_is_refused(make_client):
    client = make_client(delay=0.05)
    with client.websocket_connect("/v1/ws") as ws:
        ws.send_json({**CHAT, "id": "d"})
        ws.send_json({**CHAT, "id": "d"})
        frames = [ws.receive_json() for _ in range(2)]
        errors = [f for f in frames if f["type"] == "error"]
        assert errors and errors[0]["error"]["code"] == "duplicate_id"
        _, done = collect(ws, "d")
        assert done["type"] == "done"


def test_not_ready_is_a_503_frame(make_client):
    client = make_client(wait_ready=False)
    client.pool.ready = False
    with client.websocket_connect("/v1/ws") as ws:
        ws.send_json({**CHAT, "id": "nr"})
        assert expect_error(ws, "not_ready", id="nr")["type"] == "service_unavailable"


def test_engine_failure_mid_stream_is_an_error_frame(make_client):
    client = make_client()

    async def broken(*args, **kwargs):
        raise RuntimeError("engine died")
        yield  # pragma: no cover

    client.engine().generate = broken
    with client.websocket_connect("/v1/ws") as ws:
        ws.send_json({**CHAT, "id": "b"})
        assert expect_error(ws, "internal_error", id="b")["type"] == "server_error"
        ws.send_json({"type": "cancel", "id": "b"})  # finished: ignored, socket still open
        ws.send_json({"type": "nope"})
        expect_error(ws, "unknown_type")


# -- auth ------------------------------------------------------------------------------------------


def test_a_wrong_key_gets_an_error_frame_then_a_policy_close(make_client, tmp_path):
    client = make_client(settings=Settings(data_dir=tmp_path, api_keys=frozenset({"k1"})))
    with client.websocket_connect("/v1/ws?api_key=wrong") as ws:
        assert expect_error(ws, "invalid_api_key")["type"] == "authentication_error"
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == 1008


def test_a_valid_key_in_header_or_query_is_the_rater(make_client, tmp_path, store):
    from server.auth import client_id_for

    client = make_client(settings=Settings(data_dir=tmp_path, api_keys=frozenset({"k1"})))
    with client.websocket_connect("/v1/ws", headers={"Authorization": "Bearer k1"}) as ws:
        response_id = answer(ws)
    with client.websocket_connect("/v1/ws?api_key=k1") as ws:
        ws.send_json({"type": "feedback", "response_id": response_id, "rating": "up"})
        assert ws.receive_json()["feedback"]["client_id"] == client_id_for("k1")
    assert store.get_generation(response_id).client_id == client_id_for("k1")


@pytest.mark.parametrize(
    "field", [{"tools": [{"type": "function", "function": {"name": "weather"}}]}, {"prompt_logprobs": 1}]
)
def test_fields_frames_cannot_carry_are_refused(client, field):
    with client.websocket_connect("/v1/ws") as ws:
        ws.send_json(
            {"type": "chat", "id": "t", "model": "base", "messages": [{"role": "user", "content": "hi"}], **field}
        )
        error = ws.receive_json()
    assert error["type"] == "error" and error["error"]["param"] == next(iter(field))
