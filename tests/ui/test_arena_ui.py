"""The Arena tab in a real headless Chromium on scripted engines: one battle played — a prompt, two
anonymous answers side by side, a vote, the stages revealed — and the vote stored blind."""

import pytest
from browser_steps import open_tab, wait_for

pytestmark = pytest.mark.browser

SCRIPT = "Nairobi is the capital and largest city of Kenya."


def test_one_battle_is_played_and_revealed(fake_ui_server, page, artifacts):
    server = fake_ui_server(script=SCRIPT, delay=0.02, max_model_len=256)
    page.goto(server.url)
    open_tab(page, "Arena")
    box = page.locator("#arena-input textarea")
    box.wait_for()
    box.fill("What is the capital of Kenya?")
    box.press("Enter")
    wait_for(lambda: page.locator("#arena-vote-a").is_enabled())  # both answers complete
    for side in ("a", "b"):  # (sft's default max_tokens cuts its answer short: compare a prefix)
        assert "Nairobi is the capital" in page.locator(f"#arena-{side} [data-testid=bot]").last.inner_text()
    page_text = page.locator("#arena-a").inner_text() + page.locator("#arena-b").inner_text()
    assert "base" not in page_text and "sft" not in page_text  # anonymous until the vote
    assert page.locator("#arena-reveal").inner_text().strip() == ""
    page.locator("#arena-vote-b").click()
    wait_for(lambda: "A was" in page.locator("#arena-reveal").inner_text())
    revealed = page.locator("#arena-reveal").inner_text()
    page.screenshot(path=str(artifacts / "arena-revealed.png"))
    (vote,) = server.store.iter_arena_judgements()
    assert vote.blind and vote.groups == [[1], [0]] and sorted(vote.stages) == ["base", "sft"]
    assert f"A was {vote.stages[0]}, B was {vote.stages[1]}" in revealed
    assert page.locator("#arena-vote-a").is_disabled()  # one vote per battle
