"""Scripted raters playing the arena through the real app on scripted engines, and what the
leaderboard (`GET /v1/leaderboard`) makes of their votes: a rater who always clicks a separates no
stage and shows a position bias of 1; an honest one separates the stages; a rater who only likes
length lifts the longer-writing stage in the raw fit but not in the style-controlled one."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable

from server.app import create_app
from server.fake_engine import ScriptedEngine
from server.pool import EnginePool
from server.registry import Registry
from server.settings import Settings
from server.store import Store
from tests.conftest import ready_client
from tests.server.test_arena import ASK, QUALITY, arena_app, store_url  # noqa: F401 - store_url: the fixture

Rater = Callable[[dict, random.Random], str]


def play(client, battles: int, rater: Rater, seed: int = 0, **extra) -> None:
    rng = random.Random(seed)
    client.app.state.arena.rng = random.Random(seed)  # pairs and sides as in production, but repeatable
    for _ in range(battles):
        r = client.post("/v1/arena/battles", json={**ASK, **extra})
        assert r.status_code == 200, r.text
        battle = r.json()
        voted = client.post(f"/v1/arena/battles/{battle['id']}/vote", json={"winner": rater(battle, rng)})
        assert voted.status_code == 200, voted.text


def always_a(battle: dict, rng: random.Random) -> str:
    return "a"


def honest(battle: dict, rng: random.Random, accuracy: float = 0.8) -> str:
    """Prefers the better answer (by its words) four times in five."""
    better = "a" if QUALITY[battle["a"]["content"]] > QUALITY[battle["b"]["content"]] else "b"
    return better if rng.random() < accuracy else {"a": "b", "b": "a"}[better]


def board(client, **params) -> dict:
    r = client.get("/v1/leaderboard", params={"bootstrap": 100, **params})
    assert r.status_code == 200, r.text
    return r.json()


def overlapping(rows: list[dict]) -> bool:
    """Whether every pair of stages' 95% intervals overlaps."""
    return all(a["ci95"][0] <= b["ci95"][1] and b["ci95"][0] <= a["ci95"][1] for a in rows for b in rows)


def separated(rows: list[dict]) -> bool:
    ordered = sorted(rows, key=lambda r: r["strength"])
    return all(lo["ci95"][1] < hi["ci95"][0] for lo, hi in itertools.pairwise(ordered))


def test_a_rater_who_always_clicks_a_separates_nothing(store: Store, tmp_path):
    with ready_client(*arena_app(store, tmp_path, keys=())) as client:
        play(client, 200, always_a)
        body = board(client)
    assert body["votes"] == "blind" and body["judgements"] == 200 and body["blind_judgements"] == 200
    assert overlapping(body["data"]), body["data"]
    assert body["position_bias"]["side_a_wins"] == 1.0 and body["position_bias"]["decisive_votes"] == 200
    assert body["raters"] == {"anonymous": 200}
    assert overlapping(body["style_controlled"]["data"])


def test_an_honest_rater_separates_the_stages(store: Store, tmp_path, log_answer):
    with ready_client(*arena_app(store, tmp_path, keys=())) as client:
        play(client, 240, honest)
        body = board(client)
        # a named preference does not count in the blind board, and does in `votes=all`
        a, b = log_answer(stage="base"), log_answer(stage="rlhf")
        store.prefer([a.id, b.id], "a", rater="named")
        assert board(client, bootstrap=0)["judgements"] == 240
        everything = board(client, votes="all", bootstrap=0)
    assert [r["stage"] for r in body["data"]] == ["rlhf", "sft", "base"]
    assert separated(body["data"]), body["data"]
    assert 0.35 < body["position_bias"]["side_a_wins"] < 0.65  # sides at random: no position bias
    assert everything["votes"] == "all" and everything["judgements"] == 241
    assert everything["raters"] == {"anonymous": 240, "named": 1}


class LengthyEngine(ScriptedEngine):
    """Says the same thing at a random length per request: `extra` more padding words on average."""

    def __init__(self, extra: int, rng: random.Random):
        super().__init__(max_model_len=256)
        self.extra, self.rng = extra, rng

    async def generate(self, prompt_token_ids, settings, request_id, adapter=None):
        self.script = "Nairobi." + " indeed" * self.rng.randint(self.extra, self.extra + 12)
        async for batch in super().generate(prompt_token_ids, settings, request_id, adapter):
            yield batch


def likes_length(battle: dict, rng: random.Random) -> str:
    """Judges by length alone (as σ of 3 × the normalised length difference): the content is the same."""
    la, lb = (len(battle[s]["content"].split()) for s in ("a", "b"))
    return "a" if rng.random() < 1 / (1 + pow(2.718281828, -3 * (la - lb) / (la + lb))) else "b"


def test_style_control_takes_the_edge_of_writing_longer(store: Store, tmp_path):
    rng = random.Random(7)
    pool = EnginePool(
        Registry.model_validate({"stages": {"terse": {"model": "fake/terse"}, "wordy": {"model": "fake/wordy"}}}),
        lambda spec: LengthyEngine(8 if spec.model == "fake/wordy" else 0, rng),
    )
    app = create_app(Settings(data_dir=tmp_path), pool, store=store, with_ui=False)
    with ready_client(app, pool) as client:
        play(client, 300, likes_length, max_tokens=40)
        body = board(client)
    raw = {r["stage"]: r for r in body["data"]}
    styled = {r["stage"]: r for r in body["style_controlled"]["data"]}
    assert raw["wordy"]["ci95"][0] > raw["terse"]["ci95"][1]  # raw Bradley–Terry: wordy clearly ahead
    assert overlapping(list(styled.values()))  # at equal length: no stage ahead
    gap_raw = raw["wordy"]["strength"] - raw["terse"]["strength"]
    gap_styled = styled["wordy"]["strength"] - styled["terse"]["strength"]
    assert abs(gap_styled) < gap_raw / 3
    assert body["style_controlled"]["coefficients"]["length"]["ci95"][0] > 0  # length, not the stage, wins


def test_style_features_count_markdown():
    from server.style_control import style_features

    text = "# Title\n\nSome **bold** words and __more__.\n\n- one\n- two\n1. three\n"
    assert list(style_features(text)) == [len(text.split()), 1, 3, 2]
