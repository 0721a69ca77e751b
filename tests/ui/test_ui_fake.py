"""The UI in a real headless Chromium on scripted engines (a per-token delay makes streaming visible):
chat streaming, stage switch, stop, regenerate, thumbs, compare + preference, token view (and the
same answer scored by every stage).
The same flows run on real vLLM in `test_ui_vllm.py`."""

import pytest
from browser_steps import (
    ask,
    chat_answer_texts,
    click_thumb,
    give_verdict,
    open_tab,
    pick_stage,
    record_growth,
    run_compare,
    wait_for,
)

pytestmark = pytest.mark.browser

SCRIPT = "Nairobi is the capital and largest city of Kenya, on the Athi River."


@pytest.fixture
def server(fake_ui_server):
    return fake_ui_server(script=SCRIPT, delay=0.04, max_model_len=256)


def test_chat_streams_rates_and_continues_across_stages(server, page, artifacts):
    page.goto(server.url)
    pick_stage(page, "base")
    growth = record_growth(page, "#chat-log")
    ask(page, "What is the capital of Kenya?")
    wait_for(lambda: "Athi River." in chat_answer_texts(page)[-1:][0] if chat_answer_texts(page) else False)
    states = growth()
    assert len([s for s in states if s and s != SCRIPT]) >= 3, states  # painted while streaming
    stats = page.locator("#chat-stats").inner_text()
    assert "tok/s" in stats and "TTFT" in stats

    click_thumb(page, answer=0, up=True)
    wait_for(lambda: "Rated" in page.locator("#chat-rating").inner_text())
    [fb] = server.store.list_feedback()[0]
    assert fb.rating == "up" and fb.stage == "base"
    record = server.store.get_generation(fb.response_id)
    assert record.completion == SCRIPT

    # switch stage mid-conversation: the same conversation goes on, to the new stage
    pick_stage(page, "sft")
    ask(page, "And of France?")
    wait_for(lambda: len(chat_answer_texts(page)) == 2 and "streaming" not in page.locator("#chat-stats").inner_text())
    engine = server.pool.built[("fake/base", None)]
    prompt_ids, _, adapter = engine.requests[-1]
    assert adapter is not None and adapter.name == "sft"
    assert len(prompt_ids) > len(engine.requests[0][0])  # carried the first exchange along
    click_thumb(page, answer=1, up=False)
    wait_for(lambda: len(server.store.list_feedback()[0]) == 2)
    assert {f.stage: f.rating for f in server.store.list_feedback()[0]} == {"base": "up", "sft": "down"}
    page.screenshot(path=str(artifacts / "chat-fake.png"), full_page=True)


def test_stop_aborts_and_regenerate_replaces(fake_ui_server, page):
    server = fake_ui_server(script=SCRIPT, delay=0.3, max_model_len=256)
    page.goto(server.url)
    ask(page, "Slowly please")
    wait_for(lambda: bool(chat_answer_texts(page)) and len(chat_answer_texts(page)[-1]) > 0)
    page.click("#chat-stop")
    engine = server.pool.built[("fake/base", None)]
    wait_for(lambda: engine.aborted and not engine.running)
    wait_for(lambda: "cancelled" in page.locator("#chat-stats").inner_text())
    partial = chat_answer_texts(page)[-1]
    assert partial and partial != SCRIPT

    page.click("#chat-regenerate")
    wait_for(
        lambda: (
            len(engine.requests) == 2
            and len(chat_answer_texts(page)) == 1
            and chat_answer_texts(page)[0] not in ("", partial)
        )
    )
    page.click("#chat-stop")
    wait_for(lambda: len(engine.aborted) == 2)
    assert len(chat_answer_texts(page)) == 1  # the regenerated answer replaced the stopped one


def test_compare_streams_side_by_side_and_stores_a_preference(server, page, artifacts):
    page.goto(server.url)
    open_tab(page, "Compare")
    growth = run_compare(page, "Capital of Kenya?")
    wait_for(
        lambda: (
            "Athi River." in page.locator("#compare-answer-A").inner_text()
            and "Athi River." in page.locator("#compare-answer-B").inner_text()
        )
    )
    states = growth()
    both_partial = [s for s in states if 0 < len(s["A"]) < len(SCRIPT) and 0 < len(s["B"]) < len(SCRIPT)]
    assert both_partial, states  # A and B were mid-stream at the same time
    give_verdict(page, "#compare-b")
    [pref] = [server.store.prefer] and _preferences(server.store)
    assert pref["choice"] in ("a", "b") and {pref["stage_a"], pref["stage_b"]} == {"base", "sft"}
    page.screenshot(path=str(artifacts / "compare-fake.png"), full_page=True)


def _preferences(store):
    import sqlalchemy as sa

    with store.engine.connect() as conn:
        rows = (
            conn.execute(
                sa.text(
                    "select p.choice, a.stage as stage_a, b.stage as stage_b from preferences p "
                    "join generations a on a.id = p.response_a "
                    "join generations b on b.id = p.response_b"
                )
            )
            .mappings()
            .all()
        )
    return [dict(r) for r in rows]


def test_token_view_shows_probabilities_and_temperature_reshaping(server, page, artifacts):
    page.goto(server.url)
    ask(page, "Capital of Kenya?")
    wait_for(lambda: "Athi River." in (chat_answer_texts(page) or [""])[-1])
    open_tab(page, "Token view")
    wait_for(lambda: page.locator("#tokens-html span.tok").count() > 5)
    first = page.locator("#tokens-html span.tok").first
    assert "p=0.500" in first.get_attribute("title")
    wait_for(lambda: page.locator("#tokens-plot-reshaped canvas, #tokens-plot-reshaped svg").count() > 0)
    assert page.locator("#tokens-table").inner_text().count("0.5") >= 3
    # the same answer, scored by every stage (prompt logprobs)
    page.click("#same-use-picked")
    wait_for(lambda: "Athi River." in page.locator("#same-answer textarea").input_value())
    assert page.locator("#same-conversation textarea").input_value() == "Capital of Kenya?"
    page.click("#same-score")
    wait_for(lambda: page.locator('#same-html [data-stage="sft"] span.tok').count() > 5)
    summary = page.locator("#same-summary").inner_text()
    assert "base" in summary and "sft" in summary and "-0.693" in summary  # the script's p = 1/2 per token
    assert "p(sft)" in page.locator("#same-table").inner_text()
    page.screenshot(path=str(artifacts / "tokens-fake.png"), full_page=True)
