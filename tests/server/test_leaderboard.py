"""Leaderboard statistics (`server/leaderboard.py`) on judgements with known answers, and
`GET /v1/leaderboard` on a real store (SQLite and PostgreSQL)."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from server.app import install_error_handlers
from server.leaderboard import agreement, fit_bradley_terry, leaderboard, outcomes
from server.routes.leaderboard import router
from server.settings import Settings
from server.store import Judgement, Store

NOW = datetime(2026, 11, 24, tzinfo=timezone.utc)


def judged(
    stages: list[str], groups: list[list[int]], rater: str = "r", ids: list[str] | None = None, at: datetime = NOW
) -> Judgement:
    return Judgement("j", rater, ids or [f"x{random.random()}" for _ in stages], stages, groups, at)


def test_outcomes_of_a_ranking_with_a_tie_and_a_same_stage_pair():
    j = judged(["rlhf", "sft", "base", "base"], [[0, 1], [2], [3]])
    assert sorted(outcomes(j)) == sorted(
        [("rlhf", "sft", 0.5), ("rlhf", "base", 1.0), ("rlhf", "base", 1.0), ("sft", "base", 1.0), ("sft", "base", 1.0)]
    )  # base vs base: skipped


def test_bradley_terry_recovers_known_strengths():
    true = np.array([1.0, 0.0, -1.0])
    p = 1 / (1 + np.exp(-(true[:, None] - true[None, :])))
    wins = 10_000 * p * (1 - np.eye(3))  # expected scores of 10k meetings per pair
    theta = fit_bradley_terry(wins, prior=0.0)
    assert np.allclose(theta, true, atol=1e-3)


def test_leaderboard_orders_separates_and_reports_win_rates():
    rng = random.Random(0)
    strength = {"rlhf": 1.5, "sft": 0.5, "base": -2.0}
    votes = []
    for _ in range(400):
        a, b = rng.sample(sorted(strength), 2)
        p = 1 / (1 + np.exp(strength[b] - strength[a]))
        votes.append(judged([a, b], [[0], [1]] if rng.random() < p else [[1], [0]]))
    board = leaderboard(votes, bootstrap=100)
    assert [r.stage for r in board.stages] == ["rlhf", "sft", "base"]
    assert board.separated() and board.judgements == 400
    for row in board.stages:
        assert row.ci[0] <= row.strength <= row.ci[1]
    assert sum(r.votes for r in board.stages) == 800  # two stages per vote
    assert 0.6 < board.win_rates["rlhf"]["base"] <= 1 and board.win_rates["base"]["rlhf"] < 0.4
    assert abs(board.win_rates["sft"]["rlhf"] + board.win_rates["rlhf"]["sft"] - 1) < 1e-9
    few = leaderboard(votes[:6], bootstrap=100)
    assert not few.separated()  # six votes cannot separate three stages
    assert leaderboard(votes, bootstrap=100, seed=3).to_dict() == leaderboard(votes, bootstrap=100, seed=3).to_dict()


def test_empty_and_same_stage_only():
    assert leaderboard([]).to_dict()["data"] == []
    assert leaderboard([judged(["sft", "sft"], [[0], [1]])]).stages == []


def test_agreement_krippendorff():
    pairs = [[f"a{i}", f"b{i}"] for i in range(6)]
    verdicts = [[[0], [1]], [[1], [0]], [[0, 1]], [[0], [1]], [[1], [0]], [[0], [1]]]
    same = [judged(["sft", "rlhf"], v, rater=r, ids=ids) for ids, v in zip(pairs, verdicts) for r in ("al", "bo")]
    full = agreement(same)
    assert (full.units, full.raters, full.percent_agreement) == (
        6,
        2,
        1.0,
    ) and full.krippendorff_alpha == pytest.approx(1.0)
    flipped = [
        judged(["sft", "rlhf"], v[::-1] if len(v) == 2 else v, rater="cy", ids=ids) for ids, v in zip(pairs, verdicts)
    ]
    against = agreement([*[j for j in same if j.rater == "al"], *flipped])
    assert against.krippendorff_alpha < 0 and against.percent_agreement == pytest.approx(1 / 6, abs=1e-4)
    # a rater's later say replaces their earlier one on the same pair
    restated = judged(["sft", "rlhf"], [[1], [0]], rater="al", ids=pairs[0], at=NOW + timedelta(seconds=1))
    assert agreement([*same, restated]).percent_agreement == pytest.approx(5 / 6, abs=1e-4)
    assert agreement([same[0]]).krippendorff_alpha is None  # one rater: nothing to agree on


@pytest.fixture
def client(store: Store, tmp_path) -> TestClient:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(router)
    app.state.store = store
    app.state.settings = Settings(data_dir=tmp_path)
    return TestClient(app)


def test_leaderboard_route_reads_preferences_and_rankings(client: TestClient, store: Store, log_answer):
    for i in range(4):
        q = f"question {i}"
        base, sft, rlhf = (log_answer(q, f"{s} says {i}", stage=s) for s in ("base", "sft", "rlhf"))
        store.prefer([sft.id, base.id], "a", rater="alice")
        store.rank([base.id, sft.id, rlhf.id], [[rlhf.id], [sft.id], [base.id]], rater="bob")
        store.rank([base.id, sft.id, rlhf.id], [[rlhf.id, sft.id], [base.id]], rater="carol")
    body = client.get("/v1/leaderboard", params={"bootstrap": 50}).json()
    assert [r["stage"] for r in body["data"]] == ["rlhf", "sft", "base"]
    assert body["judgements"] == 12 and body["model"] == "bradley-terry"
    assert {r["stage"]: r["votes"] for r in body["data"]} == {"rlhf": 8, "sft": 12, "base": 12}
    rlhf = body["data"][0]
    assert rlhf["ci95"][0] <= rlhf["strength"] <= rlhf["ci95"][1] and rlhf["elo"] > 1000
    assert body["win_rates"]["sft"]["base"] == 1.0
    assert body["agreement"]["units"] == 12  # every pair of every question, judged by two or three raters

    only_alice = client.get("/v1/leaderboard", params={"rater": "alice", "bootstrap": 0}).json()
    assert only_alice["judgements"] == 4 and {r["stage"] for r in only_alice["data"]} == {"sft", "base"}
    later = (datetime.now(timezone.utc) + timedelta(minutes=1)).isoformat()
    assert client.get("/v1/leaderboard", params={"since": later}).json()["judgements"] == 0
    assert client.get("/v1/leaderboard", params={"until": later, "bootstrap": 0}).json()["judgements"] == 12
    r = client.get("/v1/leaderboard", params={"since": "yesterday"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "since"
    assert client.get("/v1/leaderboard", params={"bootstrap": -1}).status_code == 400


def test_leaderboard_route_needs_a_key_when_keys_are_set(store: Store, tmp_path):
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(router)
    app.state.store = store
    app.state.settings = Settings(data_dir=tmp_path, api_keys=frozenset({"k"}))
    client = TestClient(app)
    assert client.get("/v1/leaderboard").status_code == 401
    assert client.get("/v1/leaderboard", headers={"authorization": "Bearer k"}).status_code == 200
