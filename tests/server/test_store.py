"""The store's writes and reads against real databases: a SQLite file and a PostgreSQL server (`store`
is parametrized). The schema and the engine's guarantees: test_store_engine.py; the records: test_store_records.py."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from server.store import (
    Base,
    CorrectionRow,
    FeedbackRow,
    InvalidFeedback,
    PreferenceRow,
    RankingRow,
    Store,
    UnknownItem,
    UnknownResponse,
)
from tests.records import chat_record


def count(store: Store, table: type[Base]) -> int:
    with store.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


def test_generation_round_trips(store: Store, log_answer):
    record = log_answer()
    got = store.get_generation(record.id)
    assert got == record
    assert got.created_at.tzinfo is not None
    assert store.get_generation("chatcmpl-nope") is None


def test_rerating_replaces_the_rating(store: Store, log_answer):
    answer = log_answer()
    first = store.rate(answer.id, "up", rater="alice", tags=["correct"])
    second = store.rate(answer.id, "down", rater="alice", comment="actually wrong")
    assert count(store, FeedbackRow) == 1
    assert second.id == first.id and second.created_at == first.created_at
    assert (second.rating, second.comment, second.tags) == ("down", "actually wrong", [])
    assert second.updated_at >= first.updated_at
    page, _ = store.list_feedback()
    assert [(fb.id, fb.rating) for fb in page] == [(first.id, "down")]

    store.rate(answer.id, "up", rater="bob")  # another rater: another rating
    assert count(store, FeedbackRow) == 2


def test_bad_ratings_are_refused_and_change_nothing(store: Store, log_answer):
    answer = log_answer()
    with pytest.raises(UnknownResponse) as e:
        store.rate("chatcmpl-unknown", "up", rater="alice")
    assert e.value.param == "response_id"
    with pytest.raises(InvalidFeedback) as e:
        store.rate(answer.id, "meh", rater="alice")
    assert e.value.param == "rating"
    with pytest.raises(InvalidFeedback):
        store.rate(answer.id, "up", rater="alice", completion="not what it said")
    with pytest.raises(InvalidFeedback):
        store.rate(answer.id, "up", rater="alice", prompt=[{"role": "user", "content": "another question"}])
    assert count(store, FeedbackRow) == 0


def test_without_prompt_logging_a_rating_carries_its_text(store: Store, log_answer):
    answer = log_answer("Capital of Peru?", "Lima.", logged=False)
    assert store.get_generation(answer.id).completion is None
    with pytest.raises(InvalidFeedback, match="does not log prompts.*'prompt'.*'completion'"):
        store.rate(answer.id, "up", rater="alice")
    with pytest.raises(InvalidFeedback, match="not the prompt"):
        store.rate(
            answer.id,
            "up",
            rater="alice",
            prompt=[{"role": "user", "content": "Capital of Chile?"}],
            completion="Lima.",
        )
    prompt = [{"role": "user", "content": "Capital of Peru?"}]
    fb = store.rate(answer.id, "up", rater="alice", prompt=prompt, completion="Lima.")
    assert (fb.prompt, fb.completion) == (prompt, "Lima.")
    [rated] = store.iter_rated_answers()
    assert (rated.prompt, rated.completion, rated.label) == (prompt, "Lima.", True)


def test_preferences(store: Store, log_answer):
    a = log_answer(answer="Nairobi.", stage="sft")
    b = log_answer(answer="Mombasa.", stage="rlhf")
    other = log_answer("Capital of Peru?", "Lima.")
    pref = store.prefer([a.id, b.id], "a", rater="alice")
    assert (pref.response_ids, pref.choice, pref.stage_a, pref.stage_b) == ((a.id, b.id), "a", "sft", "rlhf")

    # The same pair in the other order is the same preference: restated, not duplicated.
    again = store.prefer([b.id, a.id], "a", rater="alice")
    assert (again.id, again.response_ids, again.choice) == (pref.id, (b.id, a.id), "a")
    assert count(store, PreferenceRow) == 1
    [pair] = store.iter_preferred_pairs()
    assert (pair.chosen, pair.rejected) == ("Mombasa.", "Nairobi.")  # b's text won the restated vote

    with pytest.raises(InvalidFeedback, match="different prompts"):
        store.prefer([a.id, other.id], "a", rater="alice")
    with pytest.raises(InvalidFeedback, match="two different"):
        store.prefer([a.id, a.id], "a", rater="alice")
    with pytest.raises(InvalidFeedback, match="choice"):
        store.prefer([a.id, b.id], "left", rater="alice")
    with pytest.raises(UnknownResponse):
        store.prefer([a.id, "chatcmpl-unknown"], "a", rater="alice")
    assert count(store, PreferenceRow) == 1

    store.prefer([a.id, b.id], "tie", rater="bob")
    assert count(store, PreferenceRow) == 2
    assert len(list(store.iter_preferred_pairs())) == 1  # a tie has no winner


def test_list_filters_and_pages(store: Store, log_answer):
    ids = []
    for i in range(7):
        answer = log_answer(f"q{i}", f"a{i}", stage="sft" if i % 2 else "base")
        ids.append(store.rate(answer.id, "up" if i < 4 else "down", rater="alice").id)
    newest_first = ids[::-1]

    seen, after = [], None
    while True:
        page, has_more = store.list_feedback(limit=3, after=after)
        seen += [fb.id for fb in page]
        if not has_more:
            break
        after = page[-1].id
    assert seen == newest_first

    assert {fb.stage for fb in store.list_feedback(stage="sft")[0]} == {"sft"}
    assert len(store.list_feedback(stage="sft")[0]) == 3
    assert [fb.rating for fb in store.list_feedback(rating="down")[0]] == ["down"] * 3
    assert store.list_feedback(rater="bob")[0] == []
    now = datetime.now(timezone.utc)
    assert len(store.list_feedback(since=now - timedelta(minutes=5))[0]) == 7
    assert store.list_feedback(since=now + timedelta(minutes=5))[0] == []
    assert store.list_feedback(until=now - timedelta(minutes=5))[0] == []
    with pytest.raises(InvalidFeedback):
        store.list_feedback(after="fb-unknown")
    with pytest.raises(InvalidFeedback):
        store.list_feedback(rating="meh")


def test_concurrent_writers_from_threads(store: Store, log_answer):
    """The serving layer logs from worker threads while raters re-rate: no lost or doubled rows."""
    answer = log_answer()
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for i in range(10):
                log_answer(f"q{worker}-{i}", "a")
                store.rate(answer.id, "up" if i % 2 else "down", rater=f"rater{worker}")
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert count(store, FeedbackRow) == 6
    assert {fb.rating for fb in store.list_feedback(limit=10)[0]} == {"up"}  # each rater's last word


# -- rankings, corrections, who owns what ---------------------------------------------------------


def test_rankings_with_ties_replace_and_give_every_ordered_pair(store: Store, log_answer):
    a, b, c, d = (
        log_answer(answer=t, stage=s)
        for t, s in [("Nairobi.", "rlhf"), ("Nairobi!", "sft"), ("Mombasa.", "base"), ("Paris.", "base")]
    )
    ranking = store.rank([a.id, b.id, c.id, d.id], [[a.id, b.id], [c.id], [d.id]], rater="alice", comment="ok")
    assert ranking.ranking == [[a.id, b.id], [c.id], [d.id]] and ranking.stages == ["rlhf", "sft", "base", "base"]
    pairs = {(p.chosen, p.rejected) for p in store.iter_ranked_pairs()}
    # a tie gives no pair; every better-group answer beats every worse-group answer
    assert pairs == {
        ("Nairobi.", "Mombasa."),
        ("Nairobi!", "Mombasa."),
        ("Nairobi.", "Paris."),
        ("Nairobi!", "Paris."),
        ("Mombasa.", "Paris."),
    }
    # the same set in another order, same rater: the ranking is restated, not duplicated
    again = store.rank([d.id, c.id, b.id, a.id], [[d.id], [c.id, b.id, a.id]], rater="alice")
    assert again.id == ranking.id and count(store, RankingRow) == 1
    assert {(p.chosen, p.rejected) for p in store.iter_ranked_pairs()} == {
        ("Paris.", t) for t in ("Mombasa.", "Nairobi!", "Nairobi.")
    }
    store.rank([a.id, b.id], [[b.id], [a.id]], rater="alice")  # another set: another ranking
    assert count(store, RankingRow) == 2
    [j] = [j for j in store.iter_judgements() if len(j.response_ids) == 2]
    assert (j.stages, j.groups) == (["rlhf", "sft"], [[1], [0]])


def test_bad_rankings_are_refused_and_change_nothing(store: Store, log_answer):
    a, b, c, d, e = (log_answer(answer=f"answer {i}") for i in range(5))
    other = log_answer("Capital of Peru?", "Lima.")
    cases = [
        ([a.id], [[a.id]], "response_ids"),  # K = 1
        ([a.id, b.id, c.id, d.id, e.id], [[a.id, b.id, c.id, d.id, e.id]], "response_ids"),  # K = 5
        ([a.id, a.id], [[a.id], [a.id]], "response_ids"),  # an id twice
        ([a.id, b.id], [[a.id]], "ranking"),  # b unplaced
        ([a.id, b.id], [[a.id], [b.id], [a.id]], "ranking"),  # a placed twice
        ([a.id, b.id], [[a.id], [c.id]], "ranking"),  # c is not ranked
        ([a.id, b.id], [[a.id], []], "ranking"),  # an empty group
        ([a.id, b.id], "a > b", "ranking"),
    ]
    for ids, ranking, param in cases:
        with pytest.raises(InvalidFeedback) as err:
            store.rank(ids, ranking, rater="alice")
        assert err.value.param == param, (ids, ranking)
    with pytest.raises(InvalidFeedback, match="different conversations"):
        store.rank([a.id, other.id], [[a.id], [other.id]], rater="alice")
    with pytest.raises(UnknownResponse):
        store.rank([a.id, "chatcmpl-unknown"], [[a.id], ["chatcmpl-unknown"]], rater="alice")
    assert count(store, RankingRow) == 0


def test_same_conversation_means_the_same_whole_prefix(store: Store):
    """Turn 2 of two Compare columns with different histories answers two different conversations."""

    def logged(id: str, history: list[dict], answer: str) -> str:
        store.record_generation(chat_record(history, answer, id=id, client_id="ui"))
        return id

    turn1 = [{"role": "user", "content": "Capital of Kenya?"}]
    col_a = [*turn1, {"role": "assistant", "content": "Nairobi."}, {"role": "user", "content": "And Peru?"}]
    col_b = [*turn1, {"role": "assistant", "content": "Mombasa."}, {"role": "user", "content": "And Peru?"}]
    x, y = logged("r-a2", col_a, "Lima."), logged("r-b2", col_b, "Cusco.")
    with pytest.raises(InvalidFeedback, match="different conversations"):
        store.rank([x, y], [[x], [y]], rater="alice")
    z = logged("r-a2-sample", col_a, "Arequipa.")
    store.rank([x, z], [[x], [z]], rater="alice")
    [pair] = store.iter_ranked_pairs()
    assert pair.prompt == col_a and (pair.chosen, pair.rejected) == ("Lima.", "Arequipa.")  # the exact prefix


def test_corrections(store: Store, log_answer):
    answer = log_answer(answer="Mombasa.")
    for text in ("", "   ", "Mombasa.", " Mombasa.\n"):
        with pytest.raises(InvalidFeedback) as err:
            store.correct(answer.id, text, rater="alice")
        assert err.value.param == "completion"
    with pytest.raises(UnknownResponse):
        store.correct("chatcmpl-unknown", "Nairobi.", rater="alice")
    assert count(store, CorrectionRow) == 0

    first = store.correct(answer.id, "Nairobi.", rater="alice", comment="wrong city")
    again = store.correct(answer.id, "Nairobi is the capital.", rater="alice")
    assert again.id == first.id and (again.completion, again.comment) == ("Nairobi is the capital.", None)
    store.correct(answer.id, "Nairobi", rater="bob")
    assert count(store, CorrectionRow) == 2
    assert sorted((c.original, c.corrected) for c in store.iter_corrections()) == [
        ("Mombasa.", "Nairobi"),
        ("Mombasa.", "Nairobi is the capital."),
    ]


def test_corrections_without_prompt_logging_carry_the_original(store: Store, log_answer):
    answer = log_answer("Capital of Peru?", "Cusco.", logged=False)
    prompt = [{"role": "user", "content": "Capital of Peru?"}]
    with pytest.raises(InvalidFeedback, match="'original'"):
        store.correct(answer.id, "Lima.", rater="alice", prompt=prompt)
    with pytest.raises(InvalidFeedback, match="unchanged"):
        store.correct(answer.id, "Cusco.", rater="alice", prompt=prompt, original="Cusco.")
    store.correct(answer.id, "Lima.", rater="alice", prompt=prompt, original="Cusco.")
    [c] = store.iter_corrections()
    assert (c.prompt, c.original, c.corrected) == (prompt, "Cusco.", "Lima.")


def test_raters_list_and_delete_only_their_own(store: Store, log_answer):
    a, b = log_answer(answer="Nairobi."), log_answer(answer="Mombasa.")
    fb = store.rate(a.id, "up", rater="alice")
    store.rate(a.id, "down", rater="bob")
    pref = store.prefer([a.id, b.id], "a", rater="alice")
    rank = store.rank([a.id, b.id], [[a.id, b.id]], rater="bob")
    corr = store.correct(b.id, "Nairobi.", rater="alice")
    assert [p.id for p in store.list_items("preference", rater="alice")[0]] == [pref.id]
    assert store.list_items("preference", rater="bob")[0] == []
    assert [r.id for r in store.list_items("ranking")[0]] == [rank.id]
    [c] = store.list_items("correction", rater="alice")[0]
    assert (c.id, c.stage, c.completion) == (corr.id, "sft", "Nairobi.")

    for kind, item in [("feedback", fb), ("preference", pref), ("correction", corr)]:
        with pytest.raises(UnknownItem):
            store.delete(kind, item.id, rater="bob")  # not bob's
    with pytest.raises(UnknownItem):
        store.delete("ranking", rank.id, rater="alice")
    assert (
        count(store, FeedbackRow),
        count(store, PreferenceRow),
        count(store, RankingRow),
        count(store, CorrectionRow),
    ) == (2, 1, 1, 1)
    store.delete("feedback", fb.id, rater="alice")
    store.delete("preference", pref.id, rater="alice")
    store.delete("correction", corr.id, rater="alice")
    store.delete("ranking", rank.id)  # the admin: any rater's
    assert (
        count(store, FeedbackRow),
        count(store, PreferenceRow),
        count(store, RankingRow),
        count(store, CorrectionRow),
    ) == (1, 0, 0, 0)
    assert store.unrate(a.id, rater="bob") and not store.unrate(a.id, rater="bob")


def test_judgements_filter_by_time_and_rater(store: Store, log_answer):
    a, b = log_answer(answer="Nairobi.", stage="rlhf"), log_answer(answer="Mombasa.", stage="base")
    store.prefer([a.id, b.id], "b", rater="alice")
    store.prefer([a.id, b.id], "both_bad", rater="bob")
    store.rank([a.id, b.id], [[a.id], [b.id]], rater="carol")
    judged = {j.rater: (j.stages, j.groups) for j in store.iter_judgements()}
    assert judged == {
        "alice": (["rlhf", "base"], [[1], [0]]),
        "bob": (["rlhf", "base"], [[0, 1]]),
        "carol": (["rlhf", "base"], [[0], [1]]),
    }
    assert [j.rater for j in store.iter_judgements(rater="bob")] == ["bob"]
    later = datetime.now(timezone.utc) + timedelta(seconds=5)
    assert list(store.iter_judgements(since=later)) == []
    assert len(list(store.iter_judgements(until=later))) == 3
