"""Arena campaigns (`server/arena_campaigns.py`, `server/store/arena_campaigns.py`): a JSONL prompt set
with overlap and gold questions from the demo family's facts, per-rater queues and progress, accuracy
on gold, agreement, and a leaderboard that leaves out raters below a gold threshold."""

from __future__ import annotations

import json
import random
from collections import Counter

from server.settings import Settings
from server.store import Store
from tests.conftest import ready_client
from tests.server.test_arena import QUALITY, arena_app, store_url  # noqa: F401 - store_url: the fixture

ADMIN = "admin-key"
RATERS = ("key-r1", "key-r2", "key-r3")


def campaign_client(store: Store, tmp_path):
    app, pool = arena_app(store, tmp_path, keys=RATERS)
    app.state.settings = Settings(data_dir=tmp_path, api_keys=frozenset(RATERS), admin_key=ADMIN)
    app.state.arena.rng = random.Random(3)
    return ready_client(app, pool)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def play_queue(client, campaign: str, key: str, choose) -> int:
    """Vote through the rater's whole queue; returns how many battles they got."""
    n = 0
    while True:
        r = client.post(f"/v1/arena/campaigns/{campaign}/next", headers=auth(key))
        assert r.status_code == 200, r.text
        battle = r.json()["battle"]
        if battle is None:
            return n
        n += 1
        assert set(battle["a"]) == {"content", "finish_reason"}  # gold or not, a battle looks the same
        voted = client.post(
            f"/v1/arena/battles/{battle['id']}/vote", json={"winner": choose(battle)}, headers=auth(key)
        )
        assert voted.status_code == 200, voted.text


def knows(battle: dict) -> str:
    """Right on gold (the answer naming the right capital, which this rater looks up) and on quality."""
    from models.demo.corpus import load_countries

    capitals = {c.country: c.capital for c in load_countries()}
    a, b = battle["a"]["content"], battle["b"]["content"]
    if a.startswith("The capital of ") and b.startswith("The capital of ") and a != b and a not in QUALITY:
        country = a[len("The capital of ") :].rsplit(" is ", 1)[0]
        return "a" if a.endswith(f" {capitals[country]}.") else "b"
    return "a" if QUALITY.get(a, 0) >= QUALITY.get(b, 0) else "b"


def test_a_campaign_queues_overlaps_and_scores_raters_on_gold(store: Store, tmp_path):
    prompts = "\n".join(json.dumps({"prompt": f"Question {i}?"}) for i in range(6))
    with campaign_client(store, tmp_path) as client:
        body = {
            "name": "capitals",
            "guidelines": "Prefer the right capital.",
            "overlap": 2,
            "jsonl": prompts,
            "gold": 20,
        }
        assert client.post("/v1/arena/campaigns", json=body, headers=auth(RATERS[0])).status_code == 401
        r = client.post("/v1/arena/campaigns", json=body, headers=auth(ADMIN))
        assert r.status_code == 200, r.text
        campaign = r.json()
        assert (campaign["prompts"], campaign["gold_questions"], campaign["overlap"]) == (6, 20, 2)
        cid = campaign["id"]

        got = {
            RATERS[0]: play_queue(client, cid, RATERS[0], knows),
            RATERS[1]: play_queue(client, cid, RATERS[1], knows),
        }
        rng = random.Random(0)
        got[RATERS[2]] = play_queue(client, cid, RATERS[2], lambda battle: rng.choice("ab"))
        # overlap 2: the first two raters took every prompt; the third got only the gold questions
        assert got == {RATERS[0]: 26, RATERS[1]: 26, RATERS[2]: 20}
        mine = client.get(f"/v1/arena/campaigns/{cid}", headers=auth(RATERS[0])).json()
        assert mine["progress"] == {"voted": 26, "assigned": 26, "queue": 26}
        assert "gold" not in json.dumps(mine["progress"])  # a rater is not told which were gold

        assert client.get(f"/v1/arena/campaigns/{cid}/report", headers=auth(RATERS[0])).status_code == 401
        report = client.get(f"/v1/arena/campaigns/{cid}/report", headers=auth(ADMIN)).json()
        by = {r: report["raters"][r] for r in report["raters"]}
        accuracies = sorted(p["gold_accuracy"] for p in by.values())
        assert accuracies[1:] == [1.0, 1.0]  # the two who know
        assert 0.2 <= accuracies[0] <= 0.8  # the one who clicks at random: near chance
        assert report["agreement"]["units"] == 6 and report["agreement"]["raters"] == 2
        assert report["agreement"]["percent_agreement"] == 1.0  # both judged the same answers, alike

        everyone = client.get("/v1/leaderboard", params={"bootstrap": 0}, headers=auth(RATERS[0])).json()
        assert everyone["judgements"] == 12 and everyone["excluded_raters"] == []  # gold votes are no judgements
        careful = client.get(
            "/v1/leaderboard", params={"bootstrap": 0, "min_gold_accuracy": 0.9}, headers=auth(RATERS[0])
        ).json()
        assert len(careful["excluded_raters"]) == 1 and careful["judgements"] == 12  # r3 judged no prompt
        # the same campaign's answers went to both raters: each item's pair was generated once
        assert Counter(frozenset(j.response_ids) for j in store.iter_arena_judgements(campaign_id=cid)) == Counter(
            {key: 2 for key in {frozenset(j.response_ids) for j in store.iter_arena_judgements()}}
        )


def test_a_random_rater_is_left_out_of_the_leaderboard_at_the_threshold(store: Store, tmp_path):
    with campaign_client(store, tmp_path) as client:
        cid = client.post(
            "/v1/arena/campaigns",
            json={"name": "c", "prompts": [{"prompt": "Q?"}] * 30, "overlap": 2, "gold": 30},
            headers=auth(ADMIN),
        ).json()["id"]
        rng = random.Random(1)
        play_queue(client, cid, RATERS[0], knows)
        play_queue(client, cid, RATERS[1], lambda battle: rng.choice("ab"))
        report = client.get(f"/v1/arena/campaigns/{cid}/report", headers=auth(ADMIN)).json()
        careless = next(p for p in report["raters"].values() if p["gold_accuracy"] != 1.0)
        assert 0.3 <= careless["gold_accuracy"] <= 0.7
        full = client.get("/v1/leaderboard", params={"bootstrap": 0}, headers=auth(ADMIN)).json()
        kept = client.get(
            "/v1/leaderboard", params={"bootstrap": 0, "min_gold_accuracy": 0.8}, headers=auth(ADMIN)
        ).json()
        assert full["judgements"] == 60 and kept["judgements"] == 30
        assert sorted(full["raters"].values()) == [30, 30] and list(kept["raters"].values()) == [30]


def test_bad_campaigns_are_refused_and_campaign_battles_take_no_second_turn(store: Store, tmp_path):
    with campaign_client(store, tmp_path) as client:
        for bad in (
            {"name": "x"},
            {"name": "x", "jsonl": "not json"},
            {"name": "x", "prompts": [{"nope": 1}]},
            {"name": "x", "prompts": [{"prompt": "q"}], "overlap": 0},
            {"name": "x", "prompts": [{"prompt": "q"}], "stages": ["base", "zzz"]},
        ):
            r = client.post("/v1/arena/campaigns", json=bad, headers=auth(ADMIN))
            assert 400 <= r.status_code < 500, (bad, r.text)
        assert client.post("/v1/arena/campaigns/nope/next", headers=auth(RATERS[0])).status_code == 404
        gold_only = client.post(
            "/v1/arena/campaigns",
            json={"name": "g", "prompts": [{"prompt": "Q?"}], "gold": 2, "overlap": 1},
            headers=auth(ADMIN),
        ).json()["id"]
        play_queue(client, gold_only, RATERS[1], lambda battle: "a")  # takes the prompt and both gold questions
        play_queue(client, gold_only, RATERS[2], lambda battle: "a")  # only the gold questions: overlap 1
        assert store.count_arena_votes() == 1  # votes on gold are no votes between stages
        cid = client.post(
            "/v1/arena/campaigns", json={"name": "c", "prompts": [{"prompt": "Q?"}]}, headers=auth(ADMIN)
        ).json()["id"]
        battle = client.post(f"/v1/arena/campaigns/{cid}/next", headers=auth(RATERS[0])).json()["battle"]
        again = client.post(f"/v1/arena/campaigns/{cid}/next", headers=auth(RATERS[0])).json()["battle"]
        assert again["id"] == battle["id"]  # the unvoted battle comes back, not a new one
        assert (
            client.post(
                f"/v1/arena/battles/{battle['id']}/turns", json={"content": "more"}, headers=auth(RATERS[0])
            ).status_code
            == 409
        )
