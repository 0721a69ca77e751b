"""Saved conversations in a real browser (Chromium through Playwright, the app on scripted engines):

- editing an earlier question in the chat makes a branch; ‹ n/m › beside the question moves between the
  old and the new branch, and both are still reachable after a reload;
- a share link opens in a second browser context (no login, no key) and shows the conversation without
  rater ids or ratings, and nothing can be written through it: the page has no controls and runs no script,
  and the API refuses writes without a key.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from server.auth import client_id_for
from server.settings import Settings

pytestmark = pytest.mark.browser

SCRIPT = "Nairobi is the capital of Kenya."


def user_texts(page) -> list[str]:
    # The aria-label holds the message's own text (the inner text also has the drawn ‹ n/m ›).
    labels = page.locator("#chat-log [data-testid=user]").evaluate_all(
        "nodes => nodes.map(n => n.getAttribute('aria-label') || '')"
    )
    return [re.sub(r"^user's message: ", "", label).strip() for label in labels]


def branch_of(page, n: int = 0) -> str:
    """The ‹ n/m › drawn beside the `n`-th user message ('' when none)."""
    nav = page.locator("#chat-log [data-testid=user]").nth(n).locator(".branch-nav .branch-pos")
    return nav.inner_text().strip() if nav.count() else ""


def test_editing_an_earlier_question_makes_a_branch_and_both_stay_reachable(fake_ui_server, page, artifacts):
    from browser_steps import ask, chat_answer_texts, wait_for

    server = fake_ui_server(script=SCRIPT, delay=0.005, max_model_len=256)
    kenya, peru = "What is the capital of Kenya?", "What is the capital of Peru?"
    page.goto(server.url)
    ask(page, kenya)
    wait_for(lambda: chat_answer_texts(page) == [SCRIPT])
    wait_for(lambda: kenya in page.locator("#history-list").inner_text())  # saved
    assert branch_of(page) == ""  # one branch: no arrows

    # Gradio's pencil on the user message, then its Submit: the chat goes on from the edited question.
    page.locator("#chat-log button[aria-label=Edit]").first.click()
    page.locator("#chat-log textarea.edit-textarea").fill(peru)
    page.locator("#chat-log button[aria-label=Submit]").click()
    wait_for(lambda: user_texts(page) == [peru] and chat_answer_texts(page) == [SCRIPT])
    wait_for(lambda: branch_of(page) == "2/2")

    first_user = page.locator("#chat-log [data-testid=user]").first
    first_user.get_by_role("button", name="Previous branch").click()
    wait_for(lambda: user_texts(page) == [kenya] and branch_of(page) == "1/2")
    assert first_user.get_by_role("button", name="Previous branch").is_disabled()
    first_user.get_by_role("button", name="Next branch").click()
    wait_for(lambda: user_texts(page) == [peru] and branch_of(page) == "2/2")

    [conversation] = server.store.list_conversations(viewer=None)[0]
    tree = server.store.conversation_messages(conversation.id, viewer=None)
    roots = [m.content for m in tree if m.parent_id is None]
    assert roots == [kenya, peru] and len(tree) == 4  # two questions, each with its answer

    page.reload()  # a new session: the conversation opens on its newest branch, and the old one is there
    page.locator("#history-list label", has_text=kenya).click()
    wait_for(lambda: user_texts(page) == [peru] and branch_of(page) == "2/2")
    page.locator("#chat-log [data-testid=user]").first.get_by_role("button", name="Previous branch").click()
    wait_for(lambda: user_texts(page) == [kenya] and chat_answer_texts(page) == [SCRIPT] and branch_of(page) == "1/2")
    page.screenshot(path=str(artifacts / "chat-branches.png"), full_page=True)


def test_a_share_link_opens_in_another_context_without_a_key_shows_no_ratings_and_cannot_write(
    fake_ui_server, page, browser, tmp_path: Path
):
    from browser_steps import ask, chat_answer_texts, click_thumb, wait_for

    settings = Settings(data_dir=tmp_path, api_keys=frozenset({"alice-key"}), admin_key="admin-key")
    server = fake_ui_server(settings=settings, script=SCRIPT, delay=0.005, max_model_len=256)
    alice = client_id_for("alice-key")
    page.goto(server.url)
    page.locator("input[type=password]").wait_for()
    page.locator("textarea, input[type=text]").first.fill("alice")
    page.locator("input[type=password]").fill("alice-key")
    page.get_by_role("button", name=re.compile("login", re.I)).click()
    ask(page, "What is the capital of Kenya?")
    wait_for(lambda: chat_answer_texts(page) == [SCRIPT])
    wait_for(lambda: "What is the capital of Kenya?" in page.locator("#history-list").inner_text())
    click_thumb(page, answer=0, up=True)
    wait_for(lambda: "Rated" in page.locator("#chat-rating").inner_text())
    page.click("#history-share")
    link = page.locator("#history-note a")
    link.wait_for()
    url = link.get_attribute("href")
    share_id = url.rsplit("/", 1)[-1]
    assert re.fullmatch(r"shr_[\w-]{22}", share_id)
    [conversation] = server.store.list_conversations(viewer=None)[0]
    before = server.store.conversation_messages(conversation.id, viewer=None)
    assert len(server.store.list_feedback()[0]) == 1

    other = browser.new_context(viewport={"width": 1000, "height": 800})  # no login, no cookie, no key
    try:
        reader = other.new_page()
        response = reader.goto(url)
        assert response.status == 200
        assert "script-src" not in response.headers["content-security-policy"]  # default-src 'none': no script
        assert "default-src 'none'" in response.headers["content-security-policy"]
        text = reader.locator("body").inner_text()
        assert "What is the capital of Kenya?" in text and SCRIPT in text
        assert alice not in text and "alice" not in text.lower() and "rating" not in text.lower()
        html = reader.content()
        assert alice not in html and "chatcmpl" not in html  # no rater id, no generation id to rate
        assert reader.locator("form, input, textarea, button, select, script").count() == 0  # nothing to write with

        shown = other.request.get(f"{server.url}/v1/shared/{share_id}")  # what the page's data is
        assert shown.ok
        body = shown.json()
        assert [m["content"] for m in body["messages"]] == [m.content for m in before]
        assert alice not in shown.text() and "generation_id" not in shown.text() and "rating" not in shown.text()

        # Writes from the reader's context: refused, and nothing changed.
        attempts = [
            other.request.post(
                f"{server.url}/v1/conversations/{conversation.id}/messages",
                data={"parent_id": before[-1].id, "messages": [{"role": "user", "content": "hijack"}]},
            ),
            other.request.patch(f"{server.url}/v1/conversations/{conversation.id}", data={"title": "mine"}),
            other.request.delete(f"{server.url}/v1/shared/{share_id}"),
            other.request.post(f"{server.url}/v1/feedback", data={"response_id": "x", "rating": "down"}),
            other.request.post(f"{server.url}/v1/shared/{share_id}", data={"title": "mine"}),
        ]
        assert [a.status for a in attempts] == [401, 401, 401, 401, 405]
        assert reader.goto(url).status == 200  # the link still works
    finally:
        other.close()
    assert server.store.conversation_messages(conversation.id, viewer=None) == before
    assert server.store.get_conversation(conversation.id, viewer=None).title == conversation.title
    assert len(server.store.list_feedback()[0]) == 1
