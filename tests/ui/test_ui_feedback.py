"""Collecting preference data in a real headless Chromium, on scripted engines: a message sent while
an answer streams is queued (not lost), multi-turn Compare with K = 3 columns (ranking with a tie,
thumbs with reasons, re-rating, a correction, continuing from the best answer), the Leaderboard
tab, and Gradio's login with an API key (each person's ratings under their own rater id)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from browser_steps import ask, chat_answer_texts, click_thumb, open_tab, wait_for

from server.auth import client_id_for
from server.settings import Settings
from server.store import GenerationRecord
from tests.records import chat_record

pytestmark = pytest.mark.browser

SCRIPT = "Nairobi is the capital and largest city of Kenya, on the Athi River."
THREE = {
    "stages": {
        "base": {"model": "fake/base", "description": "pre-trained only"},
        "sft": {"adapter": "fake/sft", "base": "base", "description": "instruction-tuned"},
        "rlhf": {"adapter": "fake/rlhf", "base": "base", "description": "preference-tuned"},
    }
}


def user_texts(page) -> list[str]:
    return [t.strip() for t in page.locator("#chat-log [data-testid=user]").all_inner_texts()]


def test_a_message_sent_while_an_answer_streams_is_queued_not_lost(fake_ui_server, page):
    server = fake_ui_server(script=SCRIPT, delay=0.12, max_model_len=256)
    page.goto(server.url)
    ask(page, "Capital of Kenya?")
    wait_for(lambda: bool(chat_answer_texts(page)) and 0 < len(chat_answer_texts(page)[-1]) < len(SCRIPT))
    ask(page, "And of Peru?")  # while the first answer is still streaming
    wait_for(lambda: user_texts(page) == ["Capital of Kenya?", "And of Peru?"], timeout=10)
    wait_for(
        lambda: (
            chat_answer_texts(page) == [SCRIPT, SCRIPT] and "streaming" not in page.locator("#chat-stats").inner_text()
        ),
        timeout=40,
    )
    engine = server.pool.built[("fake/base", None)]
    assert len(engine.requests) == 2  # both messages answered, one after the other
    assert user_texts(page) == ["Capital of Kenya?", "And of Peru?"]
    second = [g for g in _generations(server.store) if g.messages[-1]["content"] == "And of Peru?"]
    assert [m["role"] for m in second[0].messages] == ["user", "assistant", "user"]  # answered after the first
    assert second[0].messages[1]["content"] == SCRIPT


def _generations(store) -> list[GenerationRecord]:
    import sqlalchemy as sa

    with store.engine.connect() as conn:
        ids = [row[0] for row in conn.execute(sa.text("select id from generations order by created_at"))]
    return [store.get_generation(i) for i in ids]


def _click_label(page, container: str, text: str) -> None:
    """Click the choice `text` of a Gradio checkbox group or radio (each choice is a <label>)."""
    page.locator(f"{container} label").filter(has_text=re.compile(rf"^\s*{re.escape(text)}\s*$")).first.click()


def _stored(page) -> str:
    return page.locator("#compare-verdict").inner_text()


def test_compare_ranks_rates_corrects_and_continues_multi_turn(fake_ui_server, page, artifacts):
    server = fake_ui_server(THREE, script=SCRIPT, delay=0.02, max_model_len=512)
    store = server.store
    page.goto(server.url)
    open_tab(page, "Compare")
    page.locator("#compare-stages label").filter(has_text=re.compile(r"^\s*rlhf")).first.click()
    wait_for(lambda: page.locator("#compare-answer-C").is_visible())
    page.locator("#compare-prompt textarea").fill("Capital of Kenya?")
    page.click("#compare-run")
    wait_for(lambda: all(SCRIPT in page.locator(f"#compare-answer-{s}").inner_text() for s in "ABC"))
    wait_for(lambda: page.locator("#compare-fix-C textarea").input_value() == SCRIPT)  # answers are done

    # thumbs with reasons and a comment, then a re-rating that replaces rating and reasons entirely
    _click_label(page, "#compare-tags", "correct")
    page.locator("#compare-comment textarea").fill("names the capital")
    page.click("#compare-up-A")
    wait_for(lambda: "👍" in _stored(page))
    [fb] = store.list_feedback()[0]
    assert (fb.rating, fb.tags, fb.comment, fb.stage) == ("up", ["correct"], "names the capital", "base")
    _click_label(page, "#compare-tags", "correct")  # untick
    _click_label(page, "#compare-tags", "rambling")
    page.locator("#compare-comment textarea").fill("")
    page.click("#compare-down-A")
    wait_for(lambda: store.list_feedback()[0][0].rating == "down")
    [fb] = store.list_feedback()[0]
    assert (fb.rating, fb.tags, fb.comment) == ("down", ["rambling"], None)

    # a ranking with a tie: B best, A and C tied second
    for slot, place in [("A", "2"), ("B", "1"), ("C", "2")]:
        _click_label(page, f"#compare-rank-{slot}", place)
    page.click("#compare-rank")
    wait_for(lambda: "Stored ranking" in _stored(page))
    [ranking] = store.list_items("ranking")[0]
    answers = {g.stage: g.id for g in _generations(store)}
    assert ranking.ranking == [[answers["sft"]], [answers["base"], answers["rlhf"]]]
    assert "B (sft) > A (base) = C (rlhf)" in _stored(page)

    # a correction of C's answer
    page.locator("#compare-fix-C textarea").fill("The capital of Kenya is Nairobi.")
    page.click("#compare-fix-save-C")
    wait_for(lambda: "correction of C" in _stored(page))
    [corr] = store.list_items("correction")[0]
    assert (corr.response_id, corr.completion) == (answers["rlhf"], "The capital of Kenya is Nairobi.")
    page.locator("#compare-fix-B textarea").fill(SCRIPT + " ")  # unchanged: refused, nothing stored
    page.click("#compare-fix-save-B")
    wait_for(lambda: page.get_by_text("unchanged").count() > 0)
    assert len(store.list_items("correction")[0]) == 1

    # turn 2: every column continues from the best answer, each with its own (identical) history
    page.locator("#compare-prompt textarea").fill("And of Peru?")
    page.click("#compare-run")
    wait_for(lambda: len(_generations(store)) == 6)
    wait_for(
        lambda: (
            all(page.locator(f"#compare-fix-{s} textarea").input_value() == SCRIPT for s in "ABC")
            and not any("streaming" in page.locator(f"#compare-stats-{s}").inner_text() for s in "ABC")
        )
    )
    turn2 = _generations(store)[3:]
    for g in turn2:
        assert g.messages == [
            {"role": "user", "content": "Capital of Kenya?"},
            {"role": "assistant", "content": SCRIPT},
            {"role": "user", "content": "And of Peru?"},
        ]
    assert "Capital of Kenya?" in page.locator("#compare-history-A").inner_text()
    for slot, place in [("A", "1"), ("B", "2"), ("C", "3")]:
        _click_label(page, f"#compare-rank-{slot}", place)
    page.click("#compare-rank")
    wait_for(lambda: len(store.list_items("ranking")[0]) == 2)
    newest = store.list_items("ranking")[0][0]
    assert sorted(newest.response_ids) == sorted(g.id for g in turn2)  # anchored to the turn-2 prefix
    page.screenshot(path=str(artifacts / "compare-ranking-fake.png"), full_page=True)


def _judged(store, n: int) -> None:
    """n questions, each answered by base, sft and rlhf; alice prefers sft over base, bob ranks all three."""
    for i in range(n):
        messages = [{"role": "user", "content": f"question {i}"}]
        ids = []
        for stage in ("base", "sft", "rlhf"):
            rid = f"chatcmpl-{stage}-{i}"
            store.record_generation(chat_record(messages, f"{stage} answer {i}", id=rid, stage=stage, client_id="ui"))
            ids.append(rid)
        base, sft, rlhf = ids
        store.prefer([sft, base], "a", rater="alice")
        store.rank([base, sft, rlhf], [[rlhf], [sft], [base]], rater="bob")


def test_leaderboard_tab_shows_strengths_intervals_and_the_win_rate_plot(fake_ui_server, page, artifacts):
    server = fake_ui_server(THREE, script=SCRIPT)
    _judged(server.store, 12)
    page.goto(server.url)
    open_tab(page, "Leaderboard")
    wait_for(lambda: "judgements" in page.locator("#leaderboard-summary").inner_text())
    assert "**" not in page.locator("#leaderboard-summary").inner_text()
    assert "24 judgements" in page.locator("#leaderboard-summary").inner_text()
    assert "Krippendorff" in page.locator("#leaderboard-summary").inner_text()
    text = page.locator("#leaderboard-table").inner_text()
    assert text.index("rlhf") < text.index("sft") < text.index("base")  # strongest first
    wait_for(lambda: page.locator("#leaderboard-plot img, #leaderboard-plot svg, #leaderboard-plot canvas").count() > 0)
    # the lineage plot (base → sft, base → rlhf), and no reward model to hold against people here
    wait_for(lambda: page.locator("#leaderboard-lineage img, #leaderboard-lineage svg").count() > 0)
    assert "names no reward model" in page.locator("#leaderboard-rm-summary").inner_text()
    page.screenshot(path=str(artifacts / "leaderboard-fake.png"), full_page=True)

    page.locator("#leaderboard-rater textarea, #leaderboard-rater input").first.fill("alice")
    page.click("#leaderboard-refresh")
    wait_for(lambda: "12 judgements" in page.locator("#leaderboard-summary").inner_text())
    wait_for(lambda: "rlhf" not in page.locator("#leaderboard-table").inner_text())
    assert "sft" in page.locator("#leaderboard-table").inner_text()
    page.locator("#leaderboard-since textarea, #leaderboard-since input").first.fill("2999-01-01")
    page.click("#leaderboard-refresh")
    wait_for(lambda: "No preferences" in page.locator("#leaderboard-summary").inner_text())


def _log_in(page, name: str, key: str) -> None:
    page.locator("textarea, input[type=text]").first.fill(name)  # Gradio's login: a textbox, a password
    page.locator("input[type=password]").fill(key)
    page.get_by_role("button", name=re.compile("login", re.I)).click()


def test_login_with_an_api_key_and_ratings_under_each_raters_id(fake_ui_server, page, browser, tmp_path: Path):
    settings = Settings(data_dir=tmp_path, api_keys=frozenset({"alice-key", "bob-key"}), admin_key="admin-key")
    server = fake_ui_server(settings=settings, script=SCRIPT, delay=0.01, max_model_len=256)
    page.goto(server.url)
    wait_for(lambda: page.locator("input[type=password]").count() == 1)  # the UI is behind the login
    assert page.locator("#chat-input").count() == 0
    _log_in(page, "alice", "not-a-key")
    wait_for(lambda: page.get_by_text(re.compile("incorrect credentials", re.I)).count() > 0)
    _log_in(page, "alice", "alice-key")
    ask(page, "Capital of Kenya?")
    wait_for(lambda: SCRIPT in (chat_answer_texts(page) or [""])[-1])
    click_thumb(page, answer=0, up=True)
    wait_for(lambda: "Rated" in page.locator("#chat-rating").inner_text())

    other = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        bob = other.new_page()
        bob.goto(server.url)
        wait_for(lambda: bob.locator("input[type=password]").count() == 1)
        _log_in(bob, "alice", "bob-key")  # a name taken by another key is refused
        wait_for(lambda: bob.get_by_text(re.compile("incorrect credentials", re.I)).count() > 0)
        _log_in(bob, "bob", "bob-key")
        ask(bob, "Capital of Kenya?")
        wait_for(lambda: SCRIPT in (chat_answer_texts(bob) or [""])[-1])
        click_thumb(bob, answer=0, up=False)
        wait_for(lambda: "Rated" in bob.locator("#chat-rating").inner_text())
    finally:
        other.close()

    raters = {fb.rater: fb.rating for fb in server.store.list_feedback()[0]}
    assert raters == {client_id_for("alice-key"): "up", client_id_for("bob-key"): "down"}
    # each rater sees (and may delete) their own browser ratings through the API, the admin all of them
    import httpx

    mine = httpx.get(f"{server.url}/v1/feedback", headers={"authorization": "Bearer alice-key"}).json()["data"]
    assert [f["rating"] for f in mine] == ["up"]
    everyone = httpx.get(f"{server.url}/v1/feedback", headers={"authorization": "Bearer admin-key"}).json()["data"]
    assert len(everyone) == 2
    r = httpx.delete(f"{server.url}/v1/feedback/{mine[0]['id']}", headers={"authorization": "Bearer alice-key"})
    assert r.status_code == 200
    assert [fb.rater for fb in server.store.list_feedback()[0]] == [client_id_for("bob-key")]
