"""The blind arena (`server/arena.py`, `server/routes/arena.py`, `server/store/arena.py`) on the real app
over scripted engines: one stage per engine, each with its own script, so a scripted rater can judge
answers by their words alone, as a person would, never by a stage name."""

from __future__ import annotations

import json
import random
import re
import shutil
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from server.app import create_app
from server.arena_pairs import draw_pair, interval_widths, pair_probabilities
from server.fake_engine import ScriptedEngine
from server.pool import EnginePool
from server.registry import Registry
from server.settings import Settings
from server.store import BattleConflict, BattleSide, InvalidFeedback, Judgement, Store, UnknownItem
from tests.conftest import ready_client

ARENA_REGISTRY = {
    "stages": {"base": {"model": "fake/base"}, "sft": {"model": "fake/sft"}, "rlhf": {"model": "fake/rlhf"}}
}
# What each stage says, whatever it is asked: worst to best.
SCRIPTS = {"fake/base": "the the of the and", "fake/sft": "Nairobi.", "fake/rlhf": "The capital of Kenya is Nairobi."}
QUALITY = {text: rank for rank, text in enumerate(SCRIPTS.values())}
KEYS = ("key-alice", "key-bob")
ASK = {"messages": [{"role": "user", "content": "What is the capital of Kenya?"}]}


def arena_app(store: Store, tmp_path, *, scripts: dict[str, str] = SCRIPTS, keys=KEYS, **engine_kwargs):
    pool = EnginePool(
        Registry.model_validate(ARENA_REGISTRY),
        lambda spec: ScriptedEngine(scripts[spec.model], **engine_kwargs),
        max_live_engines=3,
    )
    settings = Settings(data_dir=tmp_path, api_keys=frozenset(keys))
    return create_app(settings, pool, store=store, with_ui=False), pool


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """As tests/server/conftest.py's, but SQLite in memory-backed /dev/shm where there is one: these tests
    count votes, not fsyncs, and a battle costs five commits (≈ 17 ms each on the shared disk)."""
    if request.param == "postgres":
        yield request.getfixturevalue("postgres_url")
        return
    folder = Path(tempfile.mkdtemp(dir="/dev/shm")) if Path("/dev/shm").is_dir() else tmp_path
    yield f"sqlite:///{folder / 'arena.db'}"
    if folder != tmp_path:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def client(store: Store, tmp_path) -> Iterator:
    with ready_client(*arena_app(store, tmp_path)) as client:
        client.headers["Authorization"] = f"Bearer {KEYS[0]}"
        yield client


def as_bob() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[1]}"}


def open_battle(client, **extra) -> dict:
    r = client.post("/v1/arena/battles", json={**ASK, **extra})
    assert r.status_code == 200, r.text
    return r.json()


def test_a_battle_names_no_stage_until_the_vote(client, store: Store):
    r = client.post("/v1/arena/battles", json={**ASK, "temperature": 0, "max_tokens": 8})
    assert r.status_code == 200
    battle = r.json()
    assert set(battle["a"]) == set(battle["b"]) == {"content", "finish_reason"}
    assert battle["a"]["content"] in QUALITY and battle["b"]["content"] in QUALITY
    assert battle["a"]["content"] != battle["b"]["content"]  # two different stages
    leaked = (r.text + json.dumps(dict(r.headers))).lower()
    for word in ("base", "sft", "rlhf", "chatcmpl", "usage", "speculative", "stage"):
        assert word not in leaked, word
    assert len(battle["id"]) >= 32  # secrets.token_urlsafe(24)
    shown = client.get(f"/v1/arena/battles/{battle['id']}")
    assert "stage" not in shown.text and "vote" not in shown.json()

    voted = client.post(
        f"/v1/arena/battles/{battle['id']}/vote", json={"winner": "b", "reasons": ["correct"], "comment": "b knows"}
    )
    assert voted.status_code == 200
    body = voted.json()
    by_text = {text: model.split("/")[1] for model, text in SCRIPTS.items()}
    assert body["a"]["stage"] == by_text[battle["a"]["content"]]
    assert body["b"]["stage"] == by_text[battle["b"]["content"]]
    assert body["winner"] == "b" and body["reasons"] == ["correct"] and body["comment"] == "b knows"
    (judgement,) = store.iter_arena_judgements()
    assert judgement.blind and judgement.stages == [body["a"]["stage"], body["b"]["stage"]]
    assert judgement.groups == [[1], [0]] and judgement.response_ids == [
        body["a"]["response_id"],
        body["b"]["response_id"],
    ]
    assert store.get_generation(body["a"]["response_id"]).stage == body["a"]["stage"]
    assert client.get(f"/v1/arena/battles/{battle['id']}").json()["vote"]["a"]["stage"] == body["a"]["stage"]


def test_more_turns_each_side_continues_its_own_conversation(client, store: Store):
    battle = open_battle(client)
    r = client.post(f"/v1/arena/battles/{battle['id']}/turns", json={"content": "Are you sure?"})
    assert r.status_code == 200 and r.json()["turns"] == 2
    stored = store.get_battle(battle["id"], rater=_rater(store, battle["id"]))
    conversation = stored.turns[1]["user"]
    assert conversation == {"role": "user", "content": "Are you sure?"}
    revealed = client.post(f"/v1/arena/battles/{battle['id']}/vote", json={"winner": "tie"}).json()
    assert revealed["a"]["response_id"] == stored.turns[1]["a"]["response_id"]  # the vote judges the last turn
    # side a's second prompt held side a's own first answer, not side b's
    logged = store.get_generation(revealed["a"]["response_id"])
    assert [m["content"] for m in logged.messages] == [
        ASK["messages"][0]["content"],
        battle["a"]["content"],
        "Are you sure?",
    ]
    assert client.post(f"/v1/arena/battles/{battle['id']}/turns", json={"content": "again"}).status_code == 409


def _rater(store: Store, battle_id: str) -> str:
    with store.engine.connect() as conn:
        return conn.execute(sa.text("SELECT rater FROM arena_battles WHERE id = :id"), {"id": battle_id}).scalar_one()


def _counts(store: Store) -> tuple[int, int, int]:
    with store.engine.connect() as conn:
        return tuple(
            conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one()  # type: ignore[return-value]
            for t in ("arena_battles", "arena_votes", "generations")
        )


def test_every_bad_input_is_a_4xx_and_changes_nothing(client, store: Store):
    battle = open_battle(client)
    bid = battle["id"]
    before = _counts(store)
    bad = [
        (client.post("/v1/arena/battles/no-such-battle/vote", json={"winner": "a"}), 404),
        (client.post(f"/v1/arena/battles/{bid}/vote", json={"winner": "a"}, headers=as_bob()), 404),  # foreign
        (client.get(f"/v1/arena/battles/{bid}", headers=as_bob()), 404),
        (client.post(f"/v1/arena/battles/{bid}/turns", json={"content": "hi"}, headers=as_bob()), 404),
        (client.post(f"/v1/arena/battles/{bid}/vote", json={"winner": "c"}), 400),
        (client.post(f"/v1/arena/battles/{bid}/vote", json={"winner": "a", "reasons": "nope"}), 400),
        (client.post(f"/v1/arena/battles/{bid}/vote", json={"winner": "a", "stage": "sft"}), 400),
        (client.post(f"/v1/arena/battles/{bid}/vote", json={}), 400),
        (
            client.post(f"/v1/arena/battles/{bid}/vote", json={"winner": "a"}, headers={"Authorization": "Bearer x"}),
            401,
        ),
        (client.post("/v1/arena/battles", json={**ASK, "stages": ["base", "nope"]}), 404),
        (client.post("/v1/arena/battles", json={**ASK, "stages": ["base", "base"]}), 400),
        (client.post("/v1/arena/battles", json={**ASK, "model": "sft"}), 400),
        (client.post("/v1/arena/battles", json={"messages": []}), 400),
        (client.post("/v1/arena/battles", json={**ASK, "max_tokens": 10_000}), 400),  # over the context
        (client.post(f"/v1/arena/battles/{bid}/turns", json={"content": ""}), 400),
    ]
    for response, status in bad:
        assert response.status_code == status, (response.request.url, response.text)
        assert "error" in response.json()
    assert _counts(store) == before  # not a battle, vote or generation more
    too_long = bad[13][0].json()["error"]
    # A fixed message: a side's own (its context length, say) could hint at its stage.
    assert too_long["message"].startswith("One side of the battle could not answer") and too_long["param"] != "model"
    assert not any(s in too_long["message"] for s in ("base", "sft", "rlhf"))
    assert not re.search(r"\d", too_long["message"])

    assert client.post(f"/v1/arena/battles/{bid}/vote", json={"winner": "both_bad"}).status_code == 200
    after = _counts(store)
    second = client.post(f"/v1/arena/battles/{bid}/vote", json={"winner": "a"})
    assert second.status_code == 409 and second.json()["error"]["code"] == "battle_conflict"
    assert client.post(f"/v1/arena/battles/{bid}/turns", json={"content": "more"}).status_code == 409  # finished
    assert _counts(store) == after
    assert [j.groups for j in store.iter_arena_judgements()] == [[[0, 1]]]


def test_no_vote_before_both_answers_are_complete(store: Store, log_answer):
    battle = store.open_battle(rater="r", stage_a="base", stage_b="sft", messages=ASK["messages"], settings={})
    with pytest.raises(BattleConflict, match="still being written"):
        store.vote(battle.id, "a", rater="r")
    a, b = log_answer(stage="base"), log_answer(stage="sft")
    store.finish_turn(battle.id, user=None, a=BattleSide(a.id, "x", "stop"), b=BattleSide(b.id, "y", "stop"))
    store.start_turn(battle.id, rater="r")  # a second turn in flight
    with pytest.raises(BattleConflict):
        store.vote(battle.id, "a", rater="r")
    store.abandon_turn(battle.id)  # it failed: back to ready, with the first turn
    with pytest.raises(UnknownItem):
        store.vote(battle.id, "a", rater="someone else")
    with pytest.raises(InvalidFeedback):
        store.vote(battle.id, "A", rater="r")
    vote, finished = store.vote(battle.id, "a", rater="r")
    assert (vote.stage_a, vote.stage_b, vote.response_a, finished.status) == ("base", "sft", a.id, "voted")
    failed = store.open_battle(rater="r", stage_a="base", stage_b="sft", messages=ASK["messages"], settings={})
    store.abandon_turn(failed.id)
    with pytest.raises(BattleConflict, match="could not be written"):
        store.vote(failed.id, "a", rater="r")


def test_a_vote_while_the_answers_stream_is_refused(store: Store, tmp_path):
    """Slow engines: the battle exists (generating) while both sides write; a vote then is a 409."""
    import asyncio

    from server.arena import BattleRequest

    app, pool = arena_app(store, tmp_path, delay=0.02)
    with ready_client(app, pool):
        service = app.state.arena

        async def scenario():
            battle, deltas = await service.open(BattleRequest.model_validate(ASK), "r")
            first = await deltas.__anext__()
            assert first.side in ("a", "b") and first.text
            with pytest.raises(BattleConflict):
                store.vote(battle.id, "a", rater="r")
            async for _ in deltas:
                pass
            return battle.id

        bid = asyncio.run(scenario())
    assert store.vote(bid, "a", rater="r")[1].status == "voted"


def test_concurrent_raters_lose_and_double_no_vote(store: Store, log_answer):
    """4 raters × 50 battles at once, each vote sent twice at the same moment: 200 votes, no more."""
    answers = [log_answer(stage=s) for s in ("base", "sft")]
    sides = [BattleSide(a.id, a.completion, "stop") for a in answers]
    battles = {}
    for rater in range(4):
        for _ in range(50):
            b = store.open_battle(
                rater=f"r{rater}", stage_a="base", stage_b="sft", messages=ASK["messages"], settings={}
            )
            store.finish_turn(b.id, user=None, a=sides[0], b=sides[1])
            battles[b.id] = f"r{rater}"
    outcomes: Counter = Counter()
    lock = threading.Lock()

    def rater_votes(rater: str) -> None:
        mine = [bid for bid, r in battles.items() if r == rater]
        for bid in mine:
            for _ in range(2):  # the second must be refused, never stored
                try:
                    store.vote(bid, random.choice(["a", "b", "tie"]), rater=rater)
                    result = "ok"
                except BattleConflict:
                    result = "conflict"
                with lock:
                    outcomes[result] += 1

    threads = [threading.Thread(target=rater_votes, args=(f"r{i}",)) for i in range(4)]
    # two threads per rater: the same battles voted on from two connections at once
    threads += [threading.Thread(target=rater_votes, args=(f"r{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert outcomes == {"ok": 200, "conflict": 600}
    judgements = list(store.iter_arena_judgements())
    assert len(judgements) == 200 and len({j.id for j in judgements}) == 200
    assert Counter(j.rater for j in judgements) == {f"r{i}": 50 for i in range(4)}


def test_concurrent_battles_over_http(client, store: Store):
    """Battles opened and voted by two raters at once through the app: none lost or doubled."""
    from concurrent.futures import ThreadPoolExecutor

    def play(n: int) -> str:
        headers = {"Authorization": f"Bearer {KEYS[n % 2]}"}
        opened = client.post("/v1/arena/battles", json=ASK, headers=headers)
        assert opened.status_code == 200, opened.text
        battle = opened.json()
        assert (
            client.post(f"/v1/arena/battles/{battle['id']}/vote", json={"winner": "a"}, headers=headers).status_code
            == 200
        )
        return battle["id"]

    with ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(play, range(24)))
    assert len(set(ids)) == 24
    assert _counts(store)[:2] == (24, 24)


# -- drawing pairs -------------------------------------------------------------------------------


def test_the_draw_favours_the_widest_intervals_but_keeps_every_pair():
    stages = ["base", "sft", "rlhf"]
    settled = [
        Judgement(str(i), "r", ["x", "y"], ["sft", "rlhf"], [[0], [1]] if i % 3 else [[1], [0]], None)
        for i in range(300)
    ]
    widths = interval_widths(settled, stages)
    assert widths["base"] > 5 * widths["sft"]  # base never judged: the prior's widest interval
    probabilities = pair_probabilities(stages, widths)
    assert sum(probabilities.values()) == pytest.approx(1)
    assert probabilities[("base", "rlhf")] > probabilities[("rlhf", "sft")] >= 0.5 / 3  # floor: every pair
    rng = random.Random(1)
    draws = Counter(draw_pair(stages, widths, rng) for _ in range(3000))
    assert len(draws) == 6  # every pair, on both sides
    a_first = sum(n for (a, b), n in draws.items() if a == "base")
    b_first = sum(n for (a, b), n in draws.items() if b == "base")
    assert abs(a_first - b_first) < 0.1 * (a_first + b_first)  # sides: a coin toss
    with pytest.raises(ValueError):
        draw_pair(["base"], {})


def test_the_arena_draws_every_pair(client):
    seen = Counter()
    for _ in range(30):
        battle = open_battle(client)
        seen[frozenset((battle["a"]["content"], battle["b"]["content"]))] += 1
    assert len(seen) == 3
    only = open_battle(client, stages=["sft", "rlhf"])
    assert {only["a"]["content"], only["b"]["content"]} == {SCRIPTS["fake/sft"], SCRIPTS["fake/rlhf"]}


# -- over the WebSocket ---------------------------------------------------------------------------


def frames_until(ws, fid, last_types=("done", "error", "ack")) -> list[dict]:
    frames = []
    while True:
        frame = ws.receive_json()
        frames.append(frame)
        if frame.get("id") == fid and frame["type"] in last_types:
            return frames


def test_a_battle_streams_over_the_websocket(store: Store, tmp_path):
    app, pool = arena_app(store, tmp_path, delay=0.005)
    with ready_client(app, pool) as client, client.websocket_connect(f"/v1/ws?api_key={KEYS[0]}") as ws:
        ws.send_json({"type": "arena", "id": 1, **ASK, "temperature": 0})
        frames = frames_until(ws, 1)
        assert frames[0]["type"] == "battle"
        bid = frames[0]["battle_id"]
        deltas = [f for f in frames if f["type"] == "delta"]
        texts = {side: "".join(f["text"] for f in deltas if f["side"] == side) for side in ("a", "b")}
        assert all(t.strip() in QUALITY for t in texts.values()) and len(deltas) > 2
        assert frames[-1] == {"type": "done", "id": 1, "battle_id": bid, "finish_reason": {"a": "stop", "b": "stop"}}
        raw = json.dumps(frames)
        assert not any(word in raw for word in ("base", "sft", "rlhf", "chatcmpl", "usage"))

        ws.send_json({"type": "arena_turn", "id": 2, "battle_id": bid, "content": "Sure?"})
        assert frames_until(ws, 2)[-1]["type"] == "done"
        ws.send_json({"type": "arena_vote", "id": 3, "battle_id": bid, "winner": "a"})
        ack = frames_until(ws, 3)[-1]
        assert ack["type"] == "ack" and ack["arena_vote"]["a"]["stage"] in ("base", "sft", "rlhf")
        ws.send_json({"type": "arena_vote", "id": 4, "battle_id": bid, "winner": "a"})
        assert frames_until(ws, 4)[-1]["error"]["code"] == "battle_conflict"
        ws.send_json({"type": "arena_vote", "id": 5, "battle_id": "nope", "winner": "a"})
        assert frames_until(ws, 5)[-1]["error"]["type"] == "not_found_error"

        # a cancelled battle: both sides stop, and the battle is given up (no vote possible)
        ws.send_json({"type": "arena", "id": 6, **ASK})
        opened = ws.receive_json()
        ws.send_json({"type": "cancel", "id": 6})
        assert frames_until(ws, 6)[-1]["finish_reason"] == "cancelled"
        assert store.get_battle(opened["battle_id"], rater=_rater(store, opened["battle_id"])).status == "failed"
    assert len(list(store.iter_arena_judgements())) == 1
