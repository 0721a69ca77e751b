"""The UI in a real headless Chromium on the real app and real vLLM (tiny random checkpoint + LoRA):
chat streams token by token and a thumbs-up lands in the store; compare streams two stages and
stores a preference; and the delay from the engine's first token to the browser painting it is
measured (printed, and saved to test-artifacts/first-token-delay.txt; never asserted on timing)."""

import statistics

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
    watch,
)

pytestmark = [pytest.mark.browser, pytest.mark.integration]


def set_slider(page, elem_id: str, value: float) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")  # the number box beside the slider
    box.fill(str(value))
    box.press("Enter")


def settle(page) -> None:
    wait_for(lambda: "streaming" not in page.locator("#chat-stats").inner_text())


def test_chat_streams_from_vllm_and_a_thumbs_up_is_stored(vllm_ui_server, page, artifacts):
    server = vllm_ui_server
    page.goto(server.url)
    pick_stage(page, "sft")
    set_slider(page, "decoding-max-tokens", 48)
    growth = record_growth(page, "#chat-log")
    ask(page, "What is the capital of Kenya?")
    wait_for(
        lambda: (
            bool(chat_answer_texts(page))
            and any(reason in page.locator("#chat-stats").inner_text() for reason in ("· stop", "· length"))
        ),
        timeout=60,
    )
    final = chat_answer_texts(page)[-1]
    states = [s for s in growth() if s]
    assert len(states) >= 3 and states[-1] == final, states  # grew through intermediate paints
    assert all(final.startswith(s) for s in states[:-1])
    stats = page.locator("#chat-stats").inner_text()
    assert "sft" in stats and "tok/s" in stats and "TTFT" in stats

    click_thumb(page, answer=0, up=True)
    wait_for(lambda: "Rated" in page.locator("#chat-rating").inner_text())
    [fb] = server.store.list_feedback()[0]
    assert (fb.rating, fb.stage, fb.rater) == ("up", "sft", "ui")
    assert server.store.get_generation(fb.response_id).completion.strip() == final.strip()
    page.screenshot(path=str(artifacts / "chat.png"), full_page=True)


def test_first_token_delay_from_engine_to_browser_paint(vllm_ui_server, page, artifacts):
    """Engine's first token (wall clock, logged in the server) to the browser frame that paints it."""
    server = vllm_ui_server
    page.goto(server.url)
    set_slider(page, "decoding-max-tokens", 8)
    delays = []
    for n in range(5):
        page.click("#chat-clear")  # one answer on the page: the watched text is the new one's
        wait_for(lambda: not chat_answer_texts(page))
        before = set(server.first_token_times())
        read = watch(page, f"__first{n}", {"bot": "#chat-log [data-testid=bot]"})
        ask(page, f"Question {n}?")

        def answered(read=read, before=before) -> bool:
            return any(e["text"]["bot"] for e in read()) and len(server.first_token_times()) > len(before)

        wait_for(answered, timeout=60)
        painted = next(e["t"] for e in read() if e["text"]["bot"])
        [engine_t] = [t for rid, t in server.first_token_times().items() if rid not in before]
        delays.append(painted - engine_t * 1000)
        settle(page)
    report = (
        f"first token, engine -> browser paint over {len(delays)} answers: median {statistics.median(delays):.1f} ms, "
        f"min {min(delays):.1f} ms, max {max(delays):.1f} ms"
    )
    print(report)
    (artifacts / "first-token-delay.txt").write_text(report + "\n")
    assert all(d > 0 for d in delays)  # the paint follows the token: the clocks agree (same machine)


def test_compare_streams_two_stages_and_stores_a_preference(vllm_ui_server, page, artifacts):
    server = vllm_ui_server
    page.goto(server.url)
    set_slider(page, "decoding-max-tokens", 48)
    open_tab(page, "Compare")
    growth = run_compare(page, "What is the capital of Kenya?")
    wait_for(
        lambda: (
            page.locator("#compare-stats-A").inner_text().count("tokens")
            and page.locator("#compare-stats-B").inner_text().count("tokens")
            and "streaming"
            not in page.locator("#compare-stats-A").inner_text() + page.locator("#compare-stats-B").inner_text()
        ),
        timeout=60,
    )
    states = growth()
    assert len({s["A"] for s in states}) >= 3 and len({s["B"] for s in states}) >= 3, states
    assert page.locator("#compare-answer-A").inner_text() != page.locator("#compare-answer-B").inner_text()
    try:
        give_verdict(page, "#compare-tie")
    except AssertionError:
        page.screenshot(path=str(artifacts / "compare-failed.png"), full_page=True)
        raise
    import sqlalchemy as sa

    with server.store.engine.connect() as conn:
        [row] = conn.execute(sa.text("select choice from preferences")).all()
    assert row.choice == "tie"
    page.screenshot(path=str(artifacts / "compare.png"), full_page=True)
    open_tab(page, "Token view")
    wait_for(lambda: page.locator("#tokens-html span.tok").count() > 3)
    page.screenshot(path=str(artifacts / "tokens.png"), full_page=True)


def test_sampler_lab_and_a_branch_from_an_alternative_token(vllm_ui_server, page, artifacts):
    """docs/decoding.md: the token view walks a position through vLLM's sampler steps, and a branch
    continues from an alternative token (token ids from real logprobs)."""
    page.goto(vllm_ui_server.url)
    set_slider(page, "decoding-max-tokens", 12)
    ask(page, "What is the capital of Kenya?")
    wait_for(
        lambda: (
            bool(chat_answer_texts(page))
            and any(reason in page.locator("#chat-stats").inner_text() for reason in ("· stop", "· length"))
        ),
        timeout=60,
    )
    open_tab(page, "Token view")
    wait_for(lambda: page.locator("#tokens-html span.tok").count() > 3)
    wait_for(lambda: "raw (the model)" in page.locator("#lab-summary").inner_text())
    assert "temperature" in page.locator("#lab-summary").inner_text()  # the UI's default T = 0.8 step
    page.get_by_text("Branch: continue from an alternative token").click()
    page.click("#branch-go")
    wait_for(
        lambda: (
            page.locator("#branch-view .branch").count() == 1 and "▍" not in page.locator("#branch-view").inner_text()
        ),
        timeout=60,
    )
    assert page.locator("#branch-view mark").count() == 1
    page.screenshot(path=str(artifacts / "lab-and-branch.png"), full_page=True)
