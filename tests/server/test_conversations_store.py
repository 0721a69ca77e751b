"""Saved conversations in the store, on a SQLite file and a PostgreSQL server (`store` is parametrized):
trees and branches, owners, search, import of a tree, share links, and refusals that write nothing."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from server.store import InvalidConversation, NewMessage, Store, UnknownConversation
from server.store.schema import ConversationRow, MessageRow, ShareRow


def count(store: Store, table) -> int:
    with store.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


def chat(*pairs: str) -> list[NewMessage]:
    roles = ["user", "assistant"]
    return [NewMessage(roles[i % 2], text, stage="sft" if i % 2 else None) for i, text in enumerate(pairs)]


def test_a_conversation_is_a_tree_with_branches(store: Store):
    conv, [q, a] = store.create_conversation(owner=None, messages=chat("Capital of Kenya?", "Nairobi."))
    assert conv.title == "Capital of Kenya?" and conv.id.startswith("conv_") and len(conv.id) > 20
    assert (q.parent_id, a.parent_id, a.stage) == (None, q.id, "sft")
    # A regeneration: a second answer to the same question is a branch beside the first.
    [a2] = store.add_messages(
        conv.id,
        q.id,
        [
            NewMessage(
                "assistant",
                "Nairobi, Kenya.",
                stage="base",
                sampling={"temperature": 0.7},
                reward_score=0.5,
                speculative={"method": "ngram"},
                generation_id="chatcmpl-1",
            )
        ],
        viewer=None,
    )
    # An edit of the first question: a second root.
    [q2, a3] = store.add_messages(conv.id, None, chat("Capital of Peru?", "Lima."), viewer=None)
    tree = store.conversation_messages(conv.id, viewer=None)
    assert [m.id for m in tree] == [q.id, a.id, a2.id, q2.id, a3.id]
    assert [m.content for m in store.message_path(a2.id, viewer=None)] == ["Capital of Kenya?", "Nairobi, Kenya."]
    got = store.get_message(a2.id, viewer=None)
    assert (got.sampling, got.reward_score, got.speculative, got.generation_id) == (
        {"temperature": 0.7},
        0.5,
        {"method": "ngram"},
        "chatcmpl-1",
    )
    assert store.get_conversation(conv.id, viewer=None).updated_at >= conv.updated_at


def test_owners_see_only_their_own_and_a_viewer_of_none_sees_all(store: Store):
    mine, _ = store.create_conversation(owner="alice", messages=chat("Hello there"))
    theirs, [m] = store.create_conversation(owner="bob", messages=chat("Bonjour"))
    assert [c.id for c in store.list_conversations(viewer="alice")[0]] == [mine.id]
    assert {c.id for c in store.list_conversations(viewer=None)[0]} == {mine.id, theirs.id}
    for call in (
        lambda: store.get_conversation(theirs.id, viewer="alice"),
        lambda: store.conversation_messages(theirs.id, viewer="alice"),
        lambda: store.get_message(m.id, viewer="alice"),
        lambda: store.rename_conversation(theirs.id, "mine now", viewer="alice"),
        lambda: store.add_messages(theirs.id, m.id, chat("hi"), viewer="alice"),
        lambda: store.delete_conversation(theirs.id, viewer="alice"),
        lambda: store.share_conversation(theirs.id, viewer="alice"),
    ):
        with pytest.raises(UnknownConversation):
            call()
    assert store.get_conversation(theirs.id, viewer=None).title == "Bonjour"
    assert count(store, MessageRow) == 2 and count(store, ShareRow) == 0


def test_search_rename_and_delete(store: Store):
    a, _ = store.create_conversation(owner=None, messages=chat("Tell me about 100% cotton", "It is soft."))
    b, _ = store.create_conversation(owner=None, title="Llamas", messages=chat("hi", "hello"))
    assert [c.id for c in store.list_conversations(viewer=None, query="SOFT")[0]] == [a.id]
    assert [c.id for c in store.list_conversations(viewer=None, query="llama")[0]] == [b.id]
    assert [c.id for c in store.list_conversations(viewer=None, query="100%")[0]] == [a.id]  # % is literal
    assert store.list_conversations(viewer=None, query="_")[0] == []
    page, more = store.list_conversations(viewer=None, limit=1)
    assert len(page) == 1 and more
    assert store.rename_conversation(a.id, "  Cotton  ", viewer=None).title == "Cotton"
    with pytest.raises(InvalidConversation) as e:
        store.rename_conversation(a.id, " ", viewer=None)
    assert e.value.param == "title"
    store.share_conversation(a.id, viewer=None)
    store.delete_conversation(a.id, viewer=None)
    with pytest.raises(UnknownConversation):
        store.get_conversation(a.id, viewer=None)
    assert (count(store, ConversationRow), count(store, MessageRow), count(store, ShareRow)) == (1, 2, 0)


def test_a_deleted_message_breaks_the_chains_through_it(store: Store):
    conv, [q, a, _, a2] = store.create_conversation(owner=None, messages=chat("one", "two", "three", "four"))
    store.delete_message(a.id, viewer=None)
    assert store.get_message(a.id, viewer=None).deleted
    with pytest.raises(UnknownConversation):
        store.message_path(a.id, viewer=None)
    with pytest.raises(InvalidConversation, match="passes through deleted message") as e:
        store.message_path(a2.id, viewer=None, param="previous_response_id")
    assert e.value.param == "previous_response_id"
    with pytest.raises(InvalidConversation):
        store.add_messages(conv.id, a.id, chat("five"), viewer=None)
    with pytest.raises(UnknownConversation):
        store.delete_message(a.id, viewer=None)
    assert [m.content for m in store.message_path(q.id, viewer=None)] == ["one"]


def test_bad_writes_change_nothing(store: Store):
    conv, [q] = store.create_conversation(owner=None, messages=chat("one"))
    _, [o] = store.create_conversation(owner=None, messages=chat("other"))
    with pytest.raises(InvalidConversation):  # a parent from another conversation
        store.add_messages(conv.id, o.id, chat("x"), viewer=None)
    with pytest.raises(InvalidConversation):  # the second message is bad: the first is not written either
        store.add_messages(conv.id, q.id, [NewMessage("user", "fine"), NewMessage("wizard", "no")], viewer=None)
    with pytest.raises(InvalidConversation):
        store.create_conversation(owner=None, messages=[NewMessage("user", 42)])  # type: ignore[arg-type]
    with pytest.raises(InvalidConversation):
        store.share_conversation(conv.id, o.id, viewer=None)
    assert (count(store, ConversationRow), count(store, MessageRow)) == (2, 2)


def test_import_takes_a_tree_and_refuses_anything_else(store: Store):
    tree = [
        NewMessage("user", "q", id="1"),
        NewMessage("assistant", "a", id="2", parent_id="1", stage="sft"),
        NewMessage("assistant", "b", id="3", parent_id="1", reward_score=1.5),
    ]
    conv, written = store.import_conversation(owner="alice", title=None, messages=tree[::-1])  # any order
    assert conv.owner == "alice" and conv.title == "q"
    assert [m.content for m in written] == ["q", "b", "a"] or [m.content for m in written] == ["q", "a", "b"]
    root = written[0]
    assert all(m.parent_id == root.id for m in written[1:]) and "1" not in {m.id for m in written}
    bad = {
        "empty": [],
        "dangling parent": [NewMessage("user", "q", id="1", parent_id="nope")],
        "cycle": [
            NewMessage("user", "q", id="1"),
            NewMessage("user", "x", id="2", parent_id="3"),
            NewMessage("user", "y", id="3", parent_id="2"),
        ],
        "duplicate id": [NewMessage("user", "q", id="1"), NewMessage("user", "q", id="1")],
        "no id": [NewMessage("user", "q")],
        "bad role": [NewMessage("robot", "q", id="1")],
        "bad score": [NewMessage("user", "q", id="1", reward_score="high")],  # type: ignore[arg-type]
    }
    for why, messages in bad.items():
        with pytest.raises(InvalidConversation):
            store.import_conversation(owner=None, title=None, messages=messages)
        assert (count(store, ConversationRow), count(store, MessageRow)) == (1, 3), why


def test_share_links_show_a_tree_or_a_branch_until_revoked(store: Store):
    conv, [q, _] = store.create_conversation(owner="alice", messages=chat("q", "a"))
    [b] = store.add_messages(conv.id, q.id, [NewMessage("assistant", "b")], viewer="alice")
    whole = store.share_conversation(conv.id, viewer="alice")
    branch = store.share_conversation(conv.id, b.id, viewer="alice")
    assert whole.id != branch.id and whole.id.startswith("shr_")
    assert [m.content for m in store.shared(whole.id)[2]] == ["q", "a", "b"]
    _, shown, messages = store.shared(branch.id)
    assert shown.id == conv.id and [m.content for m in messages] == ["q", "b"]
    assert [s.id for s in store.list_shares(conv.id, viewer="alice")] == [whole.id, branch.id]
    with pytest.raises(UnknownConversation):
        store.revoke_share(whole.id, viewer="bob")
    store.revoke_share(whole.id, viewer="alice")
    with pytest.raises(UnknownConversation):
        store.shared(whole.id)
