"""Reward scoring in the serving layer, on scripted engines: `/v1/rewards`, the `reward_model`
extension (body, final chunk, WebSocket done frame), the stage default, the store's log, errors,
and reload. The scripted reward engine scores a text by its number of whitespace tokens, so every
expected number is computed independently here. Real vLLM: test_rewards_vllm.py.
"""

from __future__ import annotations

import json

import pytest

from server.app import create_app
from server.fake_engine import FakeTokenizer
from server.registry import Registry
from server.rewards import RewardService
from server.settings import Settings
from server.store import Store
from tests.conftest import FAKE_REGISTRY, ready_client

REGISTRY = {
    "stages": {**FAKE_REGISTRY["stages"], "sft": {**FAKE_REGISTRY["stages"]["sft"], "reward_model": "rm"}},
    "reward_models": {"rm": {"model": "fake/rm", "description": "counts words"}},
}
QUESTION = [{"role": "user", "content": "Capital of Kenya?"}]


class ScriptedRewardEngine:
    """Score = tokens of the rendered (prompt + answer) / 10; context 40 tokens."""

    max_model_len = 40

    def __init__(self, model: str, engine_args: dict):
        self.model = model
        self.tokenizer = FakeTokenizer()
        self.started = False

    async def start(self) -> None:
        self.started = True

    async def score(self, prompts: list[list[int]]) -> list[float]:
        return [len(ids) / 10 for ids in prompts]

    async def shutdown(self) -> None:
        self.started = False


def expected(messages, answer: str) -> float:
    tokenizer = FakeTokenizer()
    conversation = messages + [{"role": "assistant", "content": answer}]
    return (
        len(tokenizer.encode(tokenizer.apply_chat_template(conversation, tokenize=False), add_special_tokens=False))
        / 10
    )


@pytest.fixture
def client(fake_pool_factory, tmp_path):
    pool = fake_pool_factory(REGISTRY)
    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    rewards = RewardService(pool.registry, factory=ScriptedRewardEngine)
    settings = Settings(data_dir=tmp_path, registry_path=tmp_path / "stages.yaml")
    app = create_app(settings, pool, store=store, with_ui=False, rewards=rewards)
    with ready_client(app, pool) as client:
        client.store = store
        client.rewards = rewards
        yield client


def test_rewards_endpoint(client):
    r = client.post(
        "/v1/rewards",
        json={
            "model": "rm",
            "input": [
                {"messages": QUESTION, "completion": "Nairobi."},
                {"prompt": "Capital:", "completion": " Nairobi is it"},
            ],
        },
    )
    assert r.status_code == 200, r.text
    assert r.json() == {
        "object": "list",
        "model": "rm",
        "data": [
            {"object": "reward", "index": 0, "score": expected(QUESTION, "Nairobi.")},
            {"object": "reward", "index": 1, "score": pytest.approx(0.4)},
        ],
    }  # "Capital:", "Nairobi", "is", "it<eos>"


@pytest.mark.parametrize(
    "body, status, param, code",
    [
        ({"model": "nope", "input": [{"messages": QUESTION, "completion": "x"}]}, 404, "model", "model_not_found"),
        ({"model": "base", "input": [{"messages": QUESTION, "completion": "x"}]}, 400, "model", "model_is_stage"),
        (
            {
                "model": "rm",
                "input": [
                    {"messages": QUESTION, "completion": "x"},
                    {"messages": QUESTION, "completion": "word " * 50},
                ],
            },
            400,
            "input[1]",
            "context_length_exceeded",
        ),
        ({"model": "rm", "input": [{"completion": "x"}]}, 400, None, None),
        ({"model": "rm", "input": [{"messages": QUESTION, "completion": "x", "extra": 1}]}, 400, None, None),
    ],
)
def test_rewards_endpoint_errors(client, body, status, param, code):
    r = client.post("/v1/rewards", json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    if param:
        assert error["param"] == param
    if code:
        assert error["code"] == code


def test_chat_body_rewards_each_choice_and_the_store_logs_it(client):
    r = client.post(
        "/v1/chat/completions",
        json={"model": "base", "messages": QUESTION, "n": 2, "reward_model": "rm", "max_tokens": 3},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    for choice in body["choices"]:
        assert choice["reward"] == {"model": "rm", "score": expected(QUESTION, choice["message"]["content"])}
    second = client.store.get_generation(f"{body['id']}:1")
    assert (second.reward_model, second.reward_score) == ("rm", body["choices"][1]["reward"]["score"])


def test_stage_default_and_no_reward_without_one(client):
    r = client.post("/v1/chat/completions", json={"model": "sft", "messages": QUESTION, "max_tokens": 2})
    assert r.json()["choices"][0]["reward"]["model"] == "rm"
    r = client.post("/v1/chat/completions", json={"model": "base", "messages": QUESTION, "max_tokens": 2})
    assert "reward" not in r.json()["choices"][0]
    assert client.store.get_generation(r.json()["id"]).reward_score is None


def test_stream_rewards_only_in_the_final_chunk(client):
    with client.stream(
        "POST",
        "/v1/chat/completions",
        json={"model": "base", "messages": QUESTION, "n": 2, "reward_model": "rm", "max_tokens": 3, "stream": True},
    ) as r:
        chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    texts: dict[int, str] = {0: "", 1: ""}
    for chunk in chunks[:-1]:
        assert all("reward" not in c and c["finish_reason"] is None for c in chunk["choices"])
        for c in chunk["choices"]:
            texts[c["index"]] += c["delta"].get("content", "")
    final = {c["index"]: c for c in chunks[-1]["choices"]}
    assert set(final) == {0, 1}
    for index, c in final.items():
        text = texts[index] + c["delta"].get("content", "")
        assert c["finish_reason"] == "length"
        assert c["reward"] == {"model": "rm", "score": expected(QUESTION, text)}


def test_completion_reward(client):
    r = client.post(
        "/v1/completions", json={"model": "base", "prompt": "Capital:", "max_tokens": 2, "reward_model": "rm"}
    )
    choice = r.json()["choices"][0]
    tokenizer = FakeTokenizer()
    assert (
        choice["reward"]["score"]
        == len(tokenizer.encode("Capital:" + choice["text"] + tokenizer.eos_token, add_special_tokens=False)) / 10
    )


def test_too_long_for_the_reward_model_is_a_null_score_with_the_reason(client):
    client.rewards._engines["fake/rm"].max_model_len = 4
    r = client.post(
        "/v1/chat/completions", json={"model": "base", "messages": QUESTION, "reward_model": "rm", "max_tokens": 3}
    )
    assert r.status_code == 200  # the answer is served; only its score is missing, and why
    reward = r.json()["choices"][0]["reward"]
    assert reward["score"] is None and "context" in reward["error"]


@pytest.mark.parametrize(
    "body, param",
    [
        ({"model": "rm", "messages": QUESTION}, "model"),
        ({"model": "base", "messages": QUESTION, "reward_model": "nope"}, "reward_model"),
    ],
)
def test_chat_refusals(client, body, param):
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param
    r = client.post("/v1/completions", json={**{k: v for k, v in body.items() if k != "messages"}, "prompt": "x"})
    assert r.status_code == 400 and r.json()["error"]["param"] == param


def test_websocket_done_frame(client):
    with client.websocket_connect("/v1/ws") as ws:
        ws.send_json({"type": "chat", "id": 1, "model": "sft", "messages": QUESTION, "max_tokens": 3})
        text = ""
        while (frame := ws.receive_json())["type"] == "delta":
            text += frame["text"]
    assert frame["type"] == "done"
    assert frame["reward"] == {"model": "rm", "score": expected(QUESTION, text)}


def test_models_kinds(client):
    data = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert {k: m["kind"] for k, m in data.items()} == {"base": "stage", "sft": "stage", "rm": "reward_model"}
    assert data["sft"]["reward_model"] == "rm"


def test_reload_adopts_new_reward_models_and_stops_removed_ones(client, tmp_path):
    registry = tmp_path / "stages.yaml"
    old_engine = next(iter(client.rewards._engines.values()))
    registry.write_text(
        json.dumps({"stages": FAKE_REGISTRY["stages"], "reward_models": {"rm2": {"model": "fake/rm2"}}})
    )
    r = client.post("/v1/admin/reload")
    assert r.status_code == 200, r.text
    assert r.json()["added_reward_models"] == ["rm2"] and r.json()["reward_models"] == ["rm2"]
    assert not old_engine.started  # rm's engine stopped: nothing names it any more
    assert (
        client.post(
            "/v1/rewards", json={"model": "rm2", "input": [{"messages": QUESTION, "completion": "x"}]}
        ).status_code
        == 200
    )
    assert (
        client.post(
            "/v1/rewards", json={"model": "rm", "input": [{"messages": QUESTION, "completion": "x"}]}
        ).status_code
        == 404
    )


def test_registry_validates_reward_models():
    with pytest.raises(ValueError, match="not under `reward_models:`"):
        Registry.model_validate({"stages": {"b": {"model": "m", "reward_model": "rm"}}})
    with pytest.raises(ValueError, match="both a stage and a reward model"):
        Registry.model_validate({"stages": {"b": {"model": "m"}}, "reward_models": {"b": {"model": "r"}}})


def test_ui_answers_show_the_score_beside_the_figures(client):
    """Chat and Compare render `Answer.stats()` beside every answer; a stage default scores UI answers."""
    from ui.stream import chat_request, stream_answer

    async def last(stage):
        answer = None
        async for answer in stream_answer(client.app.state.service, chat_request(stage, QUESTION, max_tokens=3)):  # noqa: B007
            pass
        return answer

    scored = client.portal.call(last, "sft")  # on the app's own event loop, as Gradio's handlers run
    assert scored.reward == {"model": "rm", "score": expected(QUESTION, scored.text), "error": None}
    assert f"reward {scored.reward['score']:+.3f} (rm)" in scored.stats()
    unscored = client.portal.call(last, "base")
    assert unscored.reward is None and "reward" not in unscored.stats()
