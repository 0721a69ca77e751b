"""The Notebook tab in headless Chromium on scripted engines: a raw text continuation streams onto
the page token by token, "keep" appends it to the text, and it joins the token view's answers."""

import pytest
from browser_steps import open_tab, wait_for

pytestmark = pytest.mark.browser

SCRIPT = "Nairobi is the capital and largest city of Kenya, on the Athi River."


def test_notebook_streams_a_continuation_and_keeps_it(fake_ui_server, page, artifacts):
    server = fake_ui_server(script=SCRIPT, delay=0.04, max_model_len=256)
    page.goto(server.url)
    open_tab(page, "Notebook")
    box = page.locator("#notebook-text textarea")
    box.wait_for()
    box.fill("Once upon a time")
    page.evaluate("""() => { window.seenPages = new Set();
        new MutationObserver(() => { const el = document.querySelector('.notebook-continuation');
          if (el) window.seenPages.add(el.innerText); }).observe(document.body, {subtree: true, childList: true,
          characterData: true}); }""")
    page.click("#notebook-go")
    wait_for(
        lambda: (
            "Athi River." in page.locator("#notebook-page").inner_text()
            and "tok/s" in page.locator("#notebook-stats").inner_text()
        )
    )
    assert page.evaluate("() => window.seenPages.size") >= 3  # painted while streaming
    assert page.locator("#notebook-page").inner_text().startswith("Once upon a time")
    page.click("#notebook-keep")
    wait_for(lambda: box.input_value() == "Once upon a time" + SCRIPT)
    page.screenshot(path=str(artifacts / "notebook-fake.png"), full_page=True)
    open_tab(page, "Token view")
    wait_for(lambda: page.locator("#tokens-html span.tok").count() > 5)
