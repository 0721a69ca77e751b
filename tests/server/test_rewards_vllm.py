"""Reward models served by real vLLM (pooling runner) beside a generation engine, through one server.

One `stagechat serve` for the whole module, on the tiny family plus a reward model made from its
`sft` stage (adapter merged, one-label head): `POST /v1/rewards` and its error paths, the
`reward_model` extension in bodies, final stream chunks and WebSocket `done` frames, the stage
default, the store's log of scores, `/v1/models` kinds, a reload adopting a new reward model, and
an RLOO round (`models.rl_round`) trained against the reward model and served without a restart.
Training the reward model from a store is tested in tests/models/test_reward_model.py.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import httpx
import pytest

from server.launcher import stagechat_server
from server.registry_file import add_reward_model

pytestmark = pytest.mark.integration

QUESTION = [{"role": "user", "content": "What is the capital of Kenya?"}]


@pytest.fixture(scope="module")
def family(tiny_family, tmp_path_factory) -> Path:
    """A registry on the tiny family with reward model `rm` (the sft stage as a classifier); `sft`
    has `rm` as its default reward model."""
    from models.reward_model import load_policy_as_classifier

    root = tmp_path_factory.mktemp("rewards")
    model, tokenizer = load_policy_as_classifier(str(tiny_family / "base"), str(tiny_family / "lora"), root)
    model.save_pretrained(root / "rm")
    tokenizer.save_pretrained(root / "rm")
    (root / "stages.yaml").write_text(
        "engine: {max_model_len: 512, dtype: float32}\n"
        "stages:\n"
        f"  base:\n    model: {tiny_family / 'base'}\n"
        f"  sft:\n    adapter: {tiny_family / 'lora'}\n    base: base\n    reward_model: rm\n"
        "reward_models:\n"
        f"  rm:\n    model: {root / 'rm'}\n    description: the sft stage with a random score head\n"
    )
    return root


@pytest.fixture(scope="module")
def server(family):
    data = family / "data"
    server = stagechat_server(family / "stages.yaml", data, ("--no-ui",))
    server.data_dir = data
    yield server
    server.stop()


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=120) as client:
        yield client


def hf_score(family: Path, messages: list[dict], completion: str) -> float:
    """What transformers makes of the same input: the number vLLM's pooling runner must reproduce."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(family / "rm")
    model = AutoModelForSequenceClassification.from_pretrained(family / "rm", dtype=torch.float32).eval()
    ids = tokenizer.apply_chat_template(
        messages + [{"role": "assistant", "content": completion}], tokenize=True, return_dict=True, return_tensors="pt"
    )["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits[0, 0].item()


def score(http, messages, completion, model="rm") -> float:
    r = http.post("/v1/rewards", json={"model": model, "input": [{"messages": messages, "completion": completion}]})
    assert r.status_code == 200, r.text
    return r.json()["data"][0]["score"]


def test_rewards_endpoint_scores_like_transformers(http, family):
    r = http.post(
        "/v1/rewards",
        json={
            "model": "rm",
            "input": [
                {"messages": QUESTION, "completion": "The capital of Kenya is Nairobi."},
                {"messages": QUESTION, "completion": "Hello there, how are you today?"},
                {"prompt": "The capital of France is", "completion": " Paris."},
            ],
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == "rm"
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    scores = [d["score"] for d in body["data"]]
    assert scores[0] == pytest.approx(hf_score(family, QUESTION, "The capital of Kenya is Nairobi."), abs=1e-3)
    assert scores[1] == pytest.approx(hf_score(family, QUESTION, "Hello there, how are you today?"), abs=1e-3)
    assert scores[0] != scores[1]


@pytest.mark.parametrize(
    "body, status, param",
    [
        ({"model": "nope", "input": [{"messages": QUESTION, "completion": "x"}]}, 404, "model"),
        ({"model": "sft", "input": [{"messages": QUESTION, "completion": "x"}]}, 400, "model"),
        ({"model": "rm", "input": [{"messages": QUESTION, "completion": "Nairobi " * 600}]}, 400, "input[0]"),
        ({"model": "rm", "input": [{"messages": QUESTION}]}, 400, None),
        ({"model": "rm", "input": [{"messages": QUESTION, "prompt": "x", "completion": "y"}]}, 400, None),
        ({"model": "rm", "input": []}, 400, None),
    ],
)
def test_rewards_errors(http, body, status, param):
    r = http.post("/v1/rewards", json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"]
    if param is not None:
        assert error["param"] == param


def test_a_reward_model_cannot_generate_and_an_unknown_one_is_named(http):
    r = http.post("/v1/chat/completions", json={"model": "rm", "messages": QUESTION})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    assert "reward model" in r.json()["error"]["message"]
    r = http.post("/v1/completions", json={"model": "rm", "prompt": "Hello"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    r = http.post("/v1/chat/completions", json={"model": "base", "messages": QUESTION, "reward_model": "nope"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "reward_model"


def test_models_lists_kinds(http):
    data = {m["id"]: m for m in http.get("/v1/models").json()["data"]}
    assert data["base"]["kind"] == "stage" and data["sft"]["kind"] == "stage"
    assert data["rm"]["kind"] == "reward_model" and data["rm"]["object"] == "model"
    assert data["sft"]["reward_model"] == "rm" and data["base"]["reward_model"] is None


def test_chat_body_carries_each_answers_reward_and_the_store_logs_it(http, server):
    r = http.post(
        "/v1/chat/completions",
        json={"model": "base", "messages": QUESTION, "reward_model": "rm", "n": 2, "max_tokens": 8, "seed": 1},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    for choice in body["choices"]:
        assert choice["reward"]["model"] == "rm"
        assert choice["reward"]["score"] == pytest.approx(score(http, QUESTION, choice["message"]["content"]), abs=1e-4)
    from server.store import Store

    store = Store(f"sqlite:///{server.data_dir / 'stagechat.db'}")
    try:
        logged = store.get_generation(body["id"])
    finally:
        store.close()
    assert logged.reward_model == "rm" and logged.reward_score == pytest.approx(body["choices"][0]["reward"]["score"])


def test_base_without_reward_model_has_no_reward_and_sft_has_its_default(http):
    r = http.post("/v1/chat/completions", json={"model": "base", "messages": QUESTION, "max_tokens": 4})
    assert "reward" not in r.json()["choices"][0]
    r = http.post("/v1/chat/completions", json={"model": "sft", "messages": QUESTION, "max_tokens": 4})
    assert r.json()["choices"][0]["reward"]["model"] == "rm"


def test_stream_final_chunk_carries_the_rewards(http):
    chunks = []
    with http.stream(
        "POST",
        "/v1/chat/completions",
        json={
            "model": "base",
            "messages": QUESTION,
            "reward_model": "rm",
            "stream": True,
            "n": 2,
            "max_tokens": 6,
            "seed": 2,
        },
    ) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[6:]))
    texts = {0: "", 1: ""}
    rewards = {}
    for i, chunk in enumerate(chunks):
        for choice in chunk["choices"]:
            texts[choice["index"]] += choice["delta"].get("content", "")
            if "reward" in choice:
                assert i == len(chunks) - 1, "rewards come in the final chunk only"
                assert choice["finish_reason"] is not None
                rewards[choice["index"]] = choice["reward"]["score"]
    assert set(rewards) == {0, 1}
    for index, text in texts.items():
        assert rewards[index] == pytest.approx(score(http, QUESTION, text), abs=1e-4)


def test_completion_with_reward_model(http):
    r = http.post(
        "/v1/completions",
        json={"model": "base", "prompt": "The capital of France is", "max_tokens": 5, "reward_model": "rm"},
    )
    choice = r.json()["choices"][0]
    expected = http.post(
        "/v1/rewards",
        json={"model": "rm", "input": [{"prompt": "The capital of France is", "completion": choice["text"]}]},
    ).json()["data"][0]["score"]
    assert choice["reward"] == {"model": "rm", "score": pytest.approx(expected, abs=1e-4)}


def test_websocket_done_frame_carries_the_reward(server, http):
    from websockets.sync.client import connect

    with connect(server.url.replace("http", "ws") + "/v1/ws") as ws:
        ws.send(json.dumps({"type": "chat", "id": "w", "model": "sft", "messages": QUESTION, "max_tokens": 6}))
        text = ""
        while True:
            frame = json.loads(ws.recv(timeout=60))
            if frame["type"] == "delta":
                text += frame["text"]
            else:
                break
    assert frame["type"] == "done", frame
    assert frame["reward"]["model"] == "rm"
    assert frame["reward"]["score"] == pytest.approx(score(http, QUESTION, text), abs=1e-4)


def test_reload_adopts_a_new_reward_model(http, family, server):
    add_reward_model(
        family / "stages.yaml",
        "rm2",
        {"model": str(family / "rm"), "description": "same weights"},
        data_dir=server.data_dir,
    )
    r = http.post("/v1/admin/reload")
    assert r.status_code == 200, r.text
    assert r.json()["added_reward_models"] == ["rm2"]
    assert score(http, QUESTION, "Nairobi.", model="rm2") == pytest.approx(score(http, QUESTION, "Nairobi."))
    kinds = {m["id"]: m["kind"] for m in http.get("/v1/models").json()["data"]}
    assert kinds["rm2"] == "reward_model"


def test_rloo_round_against_the_reward_model_is_served_without_restart(http, family, server, tmp_path):
    from models.rl_round import RLPlan, train_rl_round

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(
            json.dumps(f"What is the capital of {c}?") + "\n"
            for c in ("Kenya", "France", "Japan", "Peru", "Chile", "Spain")
        )
    )
    result = train_rl_round(
        config=family / "stages.yaml",
        from_stage="sft",
        name="rl1",
        reward_model="rm",
        database_url=f"sqlite:///{tmp_path / 'unused.db'}",
        data_dir=server.data_dir,
        prompts_file=prompts,
        plan=RLPlan(steps=3, batch_size=4, num_generations=2, max_completion_length=12, eval_samples=2),
        server=server.url,
    )
    assert result.reloaded["added"] == ["rl1"]
    with (result.adapter_dir / "training_log.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert all(r["reward"] and r["kl"] for r in rows)
    assert (result.adapter_dir / "training_curves.png").stat().st_size > 1000
    meta = json.loads((result.adapter_dir / "stagechat_round.json").read_text())
    assert meta["method"] == "rloo" and meta["reward_model"] == "rm" and meta["plan"]["kl_coef"] == 0.05

    r = http.post("/v1/chat/completions", json={"model": "rl1", "messages": QUESTION, "max_tokens": 6})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["reward"]["model"] == "rm"  # inherited sft's default reward model


def test_leaderboard_reward_agreement_scores_judged_answers_with_the_real_reward_model(http, server):
    """A named preference between a base and an sft answer: `POST /v1/leaderboard/reward_scores` scores
    base's answer on the real engine (as /v1/rewards does) and takes sft's from the log (scored when
    served, sft's default); the leaderboard and the lineage read them. Runs last: rl1, when the RLOO
    test above registered it, shows its KL to sft from its round record."""
    import time

    messages = [{"role": "user", "content": "What is the capital of Peru?"}]
    answers = {}
    for stage in ("base", "sft"):
        r = http.post("/v1/chat/completions", json={"model": stage, "messages": messages, "max_tokens": 6, "seed": 3})
        assert r.status_code == 200, r.text
        answers[stage] = (r.json()["id"], r.json()["choices"][0]["message"]["content"])
    deadline = time.monotonic() + 10
    while True:  # the generation log commits in groups: the answers are there within a moment
        r = http.post("/v1/preferences", json={"response_ids": [answers["sft"][0], answers["base"][0]], "choice": "a"})
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert r.status_code == 200, r.text
    done = http.post("/v1/leaderboard/reward_scores", json={"reward_models": ["rm"]}).json()["models"]["rm"]
    assert done["from_log"] >= 1 and done["scored"] >= 1 and done["remaining"] == 0, done
    body = http.get("/v1/leaderboard", params={"votes": "all", "bootstrap": 0}).json()["reward_agreement"]
    rm = body["models"]["rm"]
    assert rm["pairs"] >= 1 and rm["unscored_pairs"] == 0 and 0 <= rm["agreement"] <= 1
    # the cached score is what the reward model says of that answer (base's only judged answer)
    assert rm["stages"]["base"]["mean_reward"] == pytest.approx(score(http, messages, answers["base"][1]), abs=1e-3)
    lineage = http.get("/v1/leaderboard/lineage", params={"votes": "all", "bootstrap": 0}).json()
    rows = {r["stage"]: r for f in lineage["families"] for r in f["stages"]}
    assert rows["sft"]["parent"] == "base" and rows["sft"]["rewards"]["rm"]["mean_reward"] is not None
    if "rl1" in rows:
        assert rows["rl1"]["parent"] == "sft" and rows["rl1"]["kl_source"].startswith("stagechat_round.json")
        assert rows["rl1"]["round"]["method"] == "rloo" and len(rows["rl1"]["round"]["history"]) == 3
