"""The Chat tab's saved history. Unit tests (no browser) of `ui.conversations.History` on a SQLite store:
each answer is saved under the longest saved prefix, so a regeneration or an edit is a branch; resuming
loads the newest branch; ‹ › move between branches; owners as in the API. One browser test: a reload
keeps the history, and a saved conversation resumes and can be rated."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest

from server.settings import Settings
from server.store import Store
from ui.conversations import History, empty
from ui.login import Login
from ui.stream import Answer

SKIP = {"__type__": "update"}  # what gr.skip() is: leave the output as it is


@pytest.fixture
def store(tmp_path: Path):
    store = Store(f"sqlite:///{tmp_path / 'ui.db'}")
    yield store
    store.close()


def history(store: Store, *, log_prompts: bool = True, login: Login | None = None) -> History:
    service = SimpleNamespace(store=store, log_prompts=log_prompts)
    return History(service, login or Login(Settings()))  # type: ignore[arg-type]


def answer(text: str, generation: str) -> Answer:
    return Answer(stage="sft", messages=[], temperature=0.5, response_id=generation, text=text, finish_reason="stop")


def run(coro):
    # A loop of its own in another thread: the browser tests' Playwright (sync API) keeps a loop
    # running in this thread for the whole session, and asyncio.run() refuses to start beside it.
    with ThreadPoolExecutor(1) as worker:
        return worker.submit(asyncio.run, coro).result()


def test_each_answer_is_saved_and_regenerations_and_edits_branch(store: Store):
    h = history(store)
    conv = [{"role": "user", "content": "Capital of Kenya?"}, {"role": "assistant", "content": "Nairobi."}]
    turns = {1: answer("Nairobi.", "chatcmpl-1")}
    saved, _, _, siblings = run(h.save(None, conv, turns, empty()))
    assert json.loads(siblings) == {"at": {}}
    [c] = store.list_conversations(viewer=None)[0]
    assert saved["id"] == c.id and c.title == "Capital of Kenya?" and len(saved["ids"]) == 2
    assert run(h.save(None, conv, turns, saved))[0] == saved  # nothing new: nothing written
    # regenerate: the same question, another answer -> a branch beside the first
    regen = conv[:1] + [{"role": "assistant", "content": "Nairobi!"}]
    saved2, _, label, siblings = run(h.save(None, regen, {1: answer("Nairobi!", "chatcmpl-2")}, saved))
    assert saved2["ids"][0] == saved["ids"][0] and saved2["ids"][1] != saved["ids"][1]
    assert label == "branch 2/2"
    assert json.loads(siblings) == {"at": {"1": {"pos": 2, "of": 2, "role": "assistant", "text": "Nairobi!"}}}
    # edit the question -> a new root branch
    edit = [{"role": "user", "content": "Capital of Peru?"}, {"role": "assistant", "content": "Lima."}]
    saved3, _, label, siblings = run(h.save(None, edit, {1: answer("Lima.", "chatcmpl-3")}, saved2))
    assert label == "branch 3/3"
    assert json.loads(siblings)["at"] == {"0": {"pos": 2, "of": 2, "role": "user", "text": "Capital of Peru?"}}
    tree = store.conversation_messages(c.id, viewer=None)
    assert len(tree) == 5 and tree[-1].generation_id == "chatcmpl-3" and tree[-1].stage == "sft"
    assert tree[-1].sampling == {"temperature": 0.5}
    # a stopped answer is not saved (it was not finished)
    stopped = edit + [{"role": "user", "content": "More"}, {"role": "assistant", "content": "Li"}]
    cut = {
        1: answer("Lima.", "chatcmpl-3"),
        3: Answer(stage="sft", messages=[], text="Li", finish_reason="cancelled", response_id="chatcmpl-4"),
    }
    assert run(h.save(None, stopped, cut, saved3))[0] == saved3


def test_resume_opens_the_newest_branch_and_steps_between_branches(store: Store):
    h = history(store)
    conv = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    saved, *_ = run(h.save(None, conv, {1: answer("a", "g1")}, empty()))
    saved, *_ = run(h.save(None, conv[:1] + [{"role": "assistant", "content": "b"}], {1: answer("b", "g2")}, saved))
    chat, _, turns, opened, title, label, _ = run(h.open(None, saved["id"]))
    assert [m["content"] for m in chat] == ["q", "b"] and title == "q" and label == "branch 2/2"
    assert turns[1].response_id == "g2" and turns[1].done  # rateable after a reload
    chat, *_, label, _ = run(h.step(None, opened, -1))
    assert [m["content"] for m in chat] == ["q", "a"] and label == "branch 1/2"
    chat, *_, label, _ = run(h.step(None, opened, +1))  # wraps around
    assert [m["content"] for m in chat] == ["q", "a"] and label == "branch 1/2"


def test_the_arrows_beside_a_message_move_between_its_siblings(store: Store):
    """‹ › beside an edited question or a regenerated answer: to that message's sibling, and then to the
    newest branch below it; nothing past the first or last sibling."""
    h = history(store)
    q1 = [{"role": "user", "content": "Capital of Kenya?"}, {"role": "assistant", "content": "Nairobi."}]
    saved, *_ = run(h.save(None, q1, {1: answer("Nairobi.", "g1")}, empty()))
    more = q1 + [{"role": "user", "content": "And Peru?"}, {"role": "assistant", "content": "Lima."}]
    saved, *_ = run(h.save(None, more, {1: answer("Nairobi.", "g1"), 3: answer("Lima.", "g2")}, saved))
    q2 = [{"role": "user", "content": "Capital of Chad?"}, {"role": "assistant", "content": "N'Djamena."}]
    edited, *_, siblings = run(h.save(None, q2, {1: answer("N'Djamena.", "g3")}, saved))  # an edit of message 0
    assert json.loads(siblings)["at"]["0"]["pos"] == 2
    chat, _, _, back, _, _, siblings = run(h.sibling(None, "0:-1", edited))
    # the first question's sibling, and the newest branch under it: all four messages
    assert [m["content"] for m in chat] == [m["content"] for m in more]
    assert json.loads(siblings)["at"] == {"0": {"pos": 1, "of": 2, "role": "user", "text": "Capital of Kenya?"}}
    assert run(h.sibling(None, "0:-1", back)) == (SKIP,) * 7  # past the first: nothing moves
    chat, *_ = run(h.sibling(None, "0:1", back))
    assert [m["content"] for m in chat] == ["Capital of Chad?", "N'Djamena."]
    for bad in ("", "7:1", "0:2", "x:1", "1:1"):  # no such message, step, or a message without siblings
        assert run(h.sibling(None, bad, back)) == (SKIP,) * 7, bad
    # a reload (a new session) finds both branches again
    chat, _, _, opened, *_ = run(h.open(None, edited["id"]))
    assert chat[0]["content"] == "Capital of Chad?"
    assert run(h.sibling(None, "0:-1", opened))[0][2]["content"] == "And Peru?"


def test_rename_delete_search_and_owners(store: Store):
    login = Login(Settings(api_keys=frozenset({"alice-key", "bob-key"}), admin_key="admin-key"))
    assert login("alice", "alice-key") and login("bob", "bob-key") and login("root", "admin-key")
    h = history(store, login=login)
    alice, bob = SimpleNamespace(username="alice"), SimpleNamespace(username="bob")
    conv = [{"role": "user", "content": "Llamas?"}, {"role": "assistant", "content": "Yes."}]
    saved, *_ = run(h.save(alice, conv, {1: answer("Yes.", "g1")}, empty()))
    assert [t for t, _ in run(h.choices(alice, None))] == ["Llamas?"]
    assert run(h.choices(bob, None)) == []
    assert [t for t, _ in run(h.choices(SimpleNamespace(username="root"), None))] == ["Llamas?"]  # the admin
    assert run(h.open(bob, saved["id"]))[0] == []  # not theirs: nothing
    run(h.rename(alice, saved, "Camelids", ""))
    assert [t for t, _ in run(h.choices(alice, "camel"))] == ["Camelids"]
    assert run(h.choices(alice, "zebra")) == []
    assert run(h.share(bob, saved)) == ""  # not theirs: refused
    assert "/shared/shr_" in run(h.share(SimpleNamespace(username="alice", base_url="http://x/"), saved))
    run(h.delete(bob, saved, ""))  # not theirs: refused
    assert len(run(h.choices(alice, None))) == 1
    run(h.delete(alice, saved, ""))
    assert run(h.choices(alice, None)) == []


def test_nothing_is_kept_with_prompt_logging_off(store: Store):
    h = history(store, log_prompts=False)
    conv = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert run(h.save(None, conv, {1: answer("a", "g1")}, empty()))[0] == empty()
    assert store.list_conversations(viewer=None)[0] == []


def test_the_page_saves_after_answering_and_a_new_session_lists_and_resumes_it(fake_ui_server):
    """The wiring, through Gradio's own API (what the page calls, step by step; no browser): answer, save,
    then a second session (a reload) lists the conversation on load and opens it."""
    from gradio_client import Client

    server = fake_ui_server(script="Nairobi is the capital of Kenya.", max_model_len=256)
    first = Client(server.url + "/", verbose=False)
    respond = first.view_api(return_format="dict", print_info=False)["named_endpoints"]["/respond"]
    first.predict("What is the capital of Kenya?", api_name="/add_user_message")
    controls = {p["parameter_name"]: p.get("parameter_default") for p in respond["parameters"]}
    first.predict(**{**controls, "stage_": "sft"}, api_name="/respond")
    listed, _, siblings = first.predict(api_name="/save")
    assert json.loads(siblings) == {"at": {}}
    [conversation] = server.store.list_conversations(viewer=None)[0]
    assert listed["choices"] == [["What is the capital of Kenya?", conversation.id]]

    again = Client(server.url + "/", verbose=False)  # a new session, as after a reload
    listed, _ = again.predict("", api_name="/refresh")
    assert listed["choices"] == [["What is the capital of Kenya?", conversation.id]]
    chat, title, _, _ = again.predict(conversation.id, api_name="/open")
    assert [m["content"][0]["text"] for m in chat] == [
        "What is the capital of Kenya?",
        "Nairobi is the capital of Kenya.",
    ]
    assert title == "What is the capital of Kenya?"
    first.close()
    again.close()


@pytest.mark.browser
def test_a_reload_keeps_the_history_and_resumes_it(fake_ui_server, page):
    from browser_steps import ask, chat_answer_texts, click_thumb, wait_for

    server = fake_ui_server(script="Nairobi is the capital of Kenya.", delay=0.01, max_model_len=256)
    page.goto(server.url)
    ask(page, "What is the capital of Kenya?")
    wait_for(lambda: chat_answer_texts(page) == ["Nairobi is the capital of Kenya."])
    wait_for(lambda: "What is the capital of Kenya?" in page.locator("#history-list").inner_text())

    page.reload()
    item = page.locator("#history-list label", has_text="What is the capital of Kenya?")
    item.wait_for()
    assert chat_answer_texts(page) == []
    item.click()
    wait_for(lambda: chat_answer_texts(page) == ["Nairobi is the capital of Kenya."])
    click_thumb(page, answer=0, up=True)  # a resumed answer is rated against its logged generation
    wait_for(lambda: len(server.store.list_feedback()[0]) == 1)
    [conversation] = server.store.list_conversations(viewer=None)[0]
    answer_node = server.store.conversation_messages(conversation.id, viewer=None)[-1]
    assert server.store.list_feedback()[0][0].response_id == answer_node.generation_id
