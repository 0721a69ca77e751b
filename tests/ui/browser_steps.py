"""What a user does on the page, as Playwright steps, and how the tests watch text grow.

Selectors lean on the `elem_id`s the UI sets and on Gradio's accessible names (tabs, Like/Dislike),
not on its generated CSS classes.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

TIMEOUT = 30.0

# Records every distinct text of the watched elements, each with the wall-clock time (ms since the
# epoch, comparable with the server's time.time()) of the animation frame that painted it.
WATCH_JS = """
([name, selectors]) => {
  const seen = window[name] = [];
  let last = null;
  const read = () => Object.fromEntries(Object.entries(selectors).map(([key, sel]) => {
    const nodes = document.querySelectorAll(sel);
    return [key, nodes.length ? nodes[nodes.length - 1].innerText.trim() : ""];
  }));
  const note = () => requestAnimationFrame(() => {
    const now = read();
    const key = JSON.stringify(now);
    if (key !== last) { last = key; seen.push({t: performance.timeOrigin + performance.now(), text: now}); }
  });
  new MutationObserver(note).observe(document.body, {subtree: true, childList: true, characterData: true});
}
"""


def wait_for(predicate: Callable[[], bool], timeout: float = TIMEOUT, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except Exception:
            if time.monotonic() >= deadline:
                raise
        if time.monotonic() >= deadline:
            raise AssertionError("condition not met in time")
        time.sleep(step)


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def pick_stage(page, stage: str) -> None:
    page.wait_for_selector("#chat-stage input")
    page.locator("#chat-stage input").click()
    page.get_by_role("option", name=re.compile(rf"^{re.escape(stage)}\b")).first.click()
    wait_for(lambda: page.locator("#chat-stage-about").inner_text().startswith(stage))


def ask(page, text: str) -> None:
    box = page.locator("#chat-input textarea")
    box.wait_for()
    box.fill(text)
    box.press("Enter")


def chat_answer_texts(page) -> list[str]:
    return [t.strip() for t in page.locator("#chat-log [data-testid=bot]").all_inner_texts()]


def click_thumb(page, *, answer: int, up: bool) -> None:
    """Like or dislike the `answer`-th assistant message (0 = first)."""
    # Gradio puts the buttons beside the message, not in it: one Like/Dislike pair per answer.
    page.locator(f"#chat-log button[aria-label={'Like' if up else 'Dislike'}]").nth(answer).click()


def watch(page, name: str, selectors: dict[str, str]) -> Callable[[], list[dict]]:
    """Start recording the texts of `selectors` (last match of each); returns a reader of the record."""
    page.evaluate(WATCH_JS, [name, selectors])
    return lambda: page.evaluate(f"window[{name!r}]")


def record_growth(page, log_selector: str) -> Callable[[], list[str]]:
    """Every distinct text the last assistant message showed, in order."""
    read = watch(page, "__chatGrowth", {"bot": f"{log_selector} [data-testid=bot]"})
    return lambda: [entry["text"]["bot"] for entry in read()]


def run_compare(page, prompt: str) -> Callable[[], list[dict[str, str]]]:
    read = watch(page, "__compareGrowth", {"A": "#compare-answer-A", "B": "#compare-answer-B"})
    page.locator("#compare-prompt textarea").fill(prompt)
    page.click("#compare-run")
    return lambda: [entry["text"] for entry in read()]


def give_verdict(page, button: str) -> None:
    """Click a compare verdict until the page says it is stored.

    The answers can finish painting a moment before the compare event hands their response ids to
    the verdict buttons; a user whose click came too early clicks again, and a restated verdict
    replaces the first (one row per pair)."""

    def stored() -> bool:
        page.click(button)
        try:
            wait_for(lambda: "Stored" in page.locator("#compare-verdict").inner_text(), timeout=5)
            return True
        except AssertionError:
            return False

    wait_for(stored, timeout=40, step=0.5)
