"""A rater's data in the store (`server/store/raters.py`), on SQLite and PostgreSQL: everything one
rater gave in one JSON document, deleted all or nothing, nobody else's touched; and the gold threshold."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from server.export import examples
from server.store import Store
from tests.server.raters_data import OTHER, RATER, gold_campaign, gold_vote, write_everything

SECTIONS = ("generations", "feedback", "preferences", "rankings", "corrections", "arena_battles", "arena_votes")


def test_a_raters_data_is_everything_they_gave_and_nothing_else(store: Store):
    ids = write_everything(store, RATER, OTHER)
    doc = store.rater_data(RATER)
    json.dumps(doc)  # one JSON document, as it is
    assert doc["object"] == "rater.data" and doc["rater"] == RATER
    assert doc["counts"] == {
        "generations": 5,  # three answers and the two sides of a battle
        "feedback": 1,
        "preferences": 1,
        "rankings": 1,
        "corrections": 1,
        "arena_battles": 2,  # a battle and a gold question of the campaign
        "arena_votes": 2,
        "conversations": 1,
        "conversation_messages": 2,
    }
    for section in SECTIONS:
        owners = {row.get("rater", row.get("client_id")) for row in doc[section]}
        assert owners == {RATER}, section
    assert doc["feedback"][0]["comment"] == "right" and doc["feedback"][0]["tags"] == ["correct"]
    assert {v["winner"] for v in doc["arena_votes"]} == {"a"}
    assert any(b["campaign_id"] == ids["campaign"] and b["gold"] == "a" for b in doc["arena_battles"])
    conversation = doc["conversations"][0]
    assert [m["content"] for m in conversation["messages"]] == ["Hello", "Hi."] and len(conversation["shares"]) == 1
    assert store.rater_data("nobody")["counts"] == dict.fromkeys(doc["counts"], 0)


def test_deleting_a_raters_data_leaves_everyone_elses(store: Store):
    ids = write_everything(store, RATER, OTHER)
    others_before = store.rater_data(OTHER)
    answers = [g["id"] for g in store.rater_data(RATER)["generations"]]
    store.save_reward_scores("rm", "ckpt", [(g, 0.5, None) for g in answers])  # the leaderboard's cache
    deleted = store.delete_rater_data(RATER)
    assert deleted == {
        "conversation_shares": 1,
        "conversation_messages": 2,
        "conversations": 1,
        "arena_votes": 2,
        "arena_battles": 2,
        "feedback": 1,
        "preferences": 1,
        "rankings": 1,
        "corrections": 1,
        "generations": 4,
        "generations_kept": 1,  # the answer the other rater rated
        "reward_scores": 4,  # the deleted answers' cached scores; the kept answer's stays
    }
    assert set(store.cached_reward_scores("rm", "ckpt", answers)) == {ids[RATER]}
    after = store.rater_data(RATER)
    assert after["counts"] == {**dict.fromkeys(after["counts"], 0), "generations": 1}
    assert after["generations"][0]["id"] == ids[RATER]
    others_after = store.rater_data(OTHER)
    for section in (*SECTIONS, "conversations"):
        assert others_after[section] == others_before[section], section
    # The other rater's rating still exports with the kept answer's text.
    assert any(r["completion"][0]["content"] == "Nairobi." and not r["label"] for r in examples(store, "kto"))
    assert store.delete_rater_data(RATER)["generations_kept"] == 1  # again: nothing more to delete


def _counts(store: Store) -> dict[str, int]:
    with store.engine.connect() as conn:
        names = sa.inspect(conn).get_table_names()
        return {t: conn.execute(sa.select(sa.func.count()).select_from(sa.table(t))).scalar_one() for t in names}


def test_a_deletion_that_fails_midway_deletes_nothing(store: Store, monkeypatch):
    write_everything(store, RATER, OTHER)
    before = _counts(store)

    def fail(*_args):  # after every table but the log was emptied of the rater's rows
        raise RuntimeError("disk gone")

    monkeypatch.setattr("server.store.raters._still_referenced", fail)
    with pytest.raises(RuntimeError):
        store.delete_rater_data(RATER)
    assert _counts(store) == before
    assert store.rater_data(RATER)["counts"]["feedback"] == 1


def test_gold_threshold_names_the_raters_below_it(store: Store):
    campaign = gold_campaign(store, questions=10)
    for i in range(10):
        gold_vote(store, campaign, "careful", right=True)
        gold_vote(store, campaign, "random", right=i % 2 == 0)
    gold_vote(store, campaign, "sloppy", right=False)
    assert store.gold_excluded(None) == []
    assert store.gold_excluded(0.6) == ["random", "sloppy"]
    assert store.gold_excluded(0.5) == ["sloppy"]
    assert store.gold_excluded(0.0) == []
