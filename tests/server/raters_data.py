"""A store with two raters' data in every table a rater owns: what the rater-data and backup tests write."""

from __future__ import annotations

import itertools

from server.store import BattleSide, NewMessage, Store
from tests.records import chat_record

RATER, OTHER = "rater-1", "rater-2"
_numbers = itertools.count()


def logged(store: Store, client: str, question: str, text: str, stage: str = "sft") -> str:
    """Log a chat answer asked by `client`; returns its id."""
    record = chat_record(question, text, stage=stage, client_id=client)
    store.record_generation(record)
    return record.id


def gold_vote(store: Store, campaign_id: str, rater: str, right: bool) -> None:
    """The rater takes their next gold item of the campaign and answers it right or wrong."""
    item = store.open_campaign_battle(campaign_id, rater=rater)
    battle = store.claim_item(item, rater=rater, flip=False)  # type: ignore[arg-type]
    assert battle is not None and battle.gold == "a"
    store.vote(battle.id, "a" if right else "b", rater=rater)


def gold_campaign(store: Store, questions: int = 4) -> str:
    items = [
        {"messages": [{"role": "user", "content": f"Gold {i}?"}], "gold_right": "Right.", "gold_wrong": "Wrong."}
        for i in range(questions)
    ]
    return store.create_campaign(name="gold", guidelines="", overlap=1, stages=None, settings={}, items=items).id


def battle_vote(store: Store, rater: str, winner: str = "a") -> str:
    a = logged(store, rater, "Arena?", "Answer A.", stage="base")
    b = logged(store, rater, "Arena?", "Answer B.", stage="sft")
    battle = store.open_battle(
        rater=rater, stage_a="base", stage_b="sft", messages=[{"role": "user", "content": "Arena?"}], settings={}
    )
    store.finish_turn(battle.id, user=None, a=BattleSide(a, "Answer A.", "stop"), b=BattleSide(b, "Answer B.", "stop"))
    store.vote(battle.id, winner, rater=rater, reasons=["clearer"], comment="a is better")
    return battle.id


def write_everything(store: Store, rater: str, other: str) -> dict[str, str]:
    """Both raters give one of each kind; `other` also rates an answer `rater` asked for (so it must be
    kept when `rater`'s data goes). Returns ids worth checking."""
    ids: dict[str, str] = {}
    for who in (rater, other):
        x = logged(store, who, f"Capital of Kenya, {who}?", "Nairobi.")
        y = logged(store, who, f"Capital of Kenya, {who}?", "Mombasa.", stage="base")
        z = logged(store, who, f"Capital of Kenya, {who}?", "Kisumu.", stage="rlhf")
        store.rate(x, "up", rater=who, comment="right", tags=["correct"])
        store.prefer([x, y], "a", rater=who)
        store.rank([x, y, z], [[x], [y, z]], rater=who)
        store.correct(y, "Nairobi, not Mombasa.", rater=who)
        battle_vote(store, who)
        conversation, messages = store.create_conversation(
            owner=who, messages=[NewMessage("user", "Hello"), NewMessage("assistant", "Hi.", stage="sft")]
        )
        store.share_conversation(conversation.id, viewer=who)
        ids[who] = x
    campaign = gold_campaign(store)
    gold_vote(store, campaign, rater, right=True)
    gold_vote(store, campaign, other, right=False)
    store.rate(ids[rater], "down", rater=other)  # other's rating of an answer rater asked for
    ids["campaign"] = campaign
    return ids
