"""The Chat tab's saved history: a sidebar that lists, searches, resumes, renames and deletes saved
conversations, and moves between a conversation's branches — in the sidebar (‹ branch 2/3 ›, every leaf
in turn) and beside each edited question or regenerated answer in the chat (‹ 2/3 ›, its siblings).

What it knows: that the chat is saved after each answer, as a chain under the longest prefix already
saved (`save`): so a regenerated answer, or an edited question, is written beside the earlier one — a
branch — without the chat tab keeping any tree itself; that a branch is a leaf of the tree and its path
(`leaves`, `load_branch`); where each message of the branch shown stands among its siblings
(`sibling_map`), which a small script draws beside the chat's messages (`BRANCH_NAV_JS`: the Chatbot
has no per-message slot for it); and the owner rules of the API (with keys, a browser session sees the
conversations of its login's key; without keys, all). Store calls go through the very `Store` methods
the Conversations API calls, in a worker thread.

What it does not know: how answers are streamed (`ui/stream.py`) or laid out in the chat (`ui/chat.py`),
or HTTP.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import gradio as gr

from server.serving import StageService
from server.store.records import ConversationMessage, NewMessage, StoreError
from ui.login import Login
from ui.stream import Answer

Saved = dict[str, Any]  # {"id": conversation id | None, "ids": [message id per chat message], "keys": [...]}


def empty() -> Saved:
    return {"id": None, "ids": [], "keys": []}


def _key(i: int, message: dict[str, str], turns: dict[int, Answer]) -> list:
    """What makes chat message `i` the same saved message: role, text and (answers) the logged generation."""
    answer = turns.get(i)
    return [
        message["role"],
        message["content"],
        answer.response_id if answer and message["role"] == "assistant" else None,
    ]


@dataclass
class Sidebar:
    search: gr.Textbox
    conversations: gr.Radio
    title: gr.Textbox
    rename: gr.Button
    delete: gr.Button
    share: gr.Button
    new: gr.Button
    previous: gr.Button
    branch: gr.Markdown
    next: gr.Button
    note: gr.Markdown
    siblings: gr.Textbox  # hidden: the branch shown, as `sibling_map` JSON, which BRANCH_NAV_JS draws
    target: gr.Textbox  # hidden: "message index:step" of a ‹ › clicked in the chat
    go: gr.Button  # hidden: what that click presses


def build() -> Sidebar:
    """The widgets, laid out where they are called (a column beside the chat)."""
    gr.Markdown("**Saved conversations**")
    new = gr.Button("New chat", elem_id="history-new", size="sm")
    search = gr.Textbox(placeholder="Search", show_label=False, elem_id="history-search")
    conversations = gr.Radio([], label="history", elem_id="history-list")
    with gr.Row():
        previous = gr.Button("‹", elem_id="chat-branch-prev", size="sm", min_width=40)
        branch = gr.Markdown("", elem_id="chat-branch")
        nxt = gr.Button("›", elem_id="chat-branch-next", size="sm", min_width=40)
    title = gr.Textbox(label="title", elem_id="history-title")
    with gr.Row():
        rename = gr.Button("Rename", elem_id="history-rename", size="sm")
        delete = gr.Button("Delete", elem_id="history-delete", size="sm", variant="stop")
        share = gr.Button("Share", elem_id="history-share", size="sm")
    note = gr.Markdown(elem_id="history-note")
    siblings = gr.Textbox("{}", visible="hidden", elem_id="chat-branch-map", show_label=False)
    target = gr.Textbox("", visible="hidden", elem_id="chat-branch-target", show_label=False)
    go = gr.Button("go", visible="hidden", elem_id="chat-branch-go")
    return Sidebar(
        search, conversations, title, rename, delete, share, new, previous, branch, nxt, note, siblings, target, go
    )


class History:
    """The store behind the sidebar, for one app (its service and login)."""

    def __init__(self, service: StageService, login: Login):
        self.service, self.login = service, login

    @property
    def store(self):
        return self.service.store

    @property
    def enabled(self) -> bool:
        return self.store is not None and self.service.log_prompts  # prompt logging off: nothing is kept

    def scope(self, request: gr.Request | None) -> tuple[str | None, str | None]:
        """(owner, viewer), as the API's `server.conversations.scope` has them: with keys, the login's key
        (the admin's sees every conversation)."""
        if not self.login.enabled:
            return None, None
        rater = self.login.rater(request)
        return rater, (None if rater == getattr(self.login, "admin", None) else rater)

    async def _call(self, fn, *args, **kwargs):
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except StoreError as exc:
            gr.Warning(exc.message)
            return None

    # -- the list ------------------------------------------------------------------------------------

    async def choices(self, request: gr.Request | None, query: str | None) -> list[tuple[str, str]]:
        if not self.enabled:
            return []
        _, viewer = self.scope(request)
        page, _ = await asyncio.to_thread(self.store.list_conversations, viewer=viewer, query=query or None)
        return [(c.title, c.id) for c in page]

    async def refresh(self, request: gr.Request, query: str, saved: Saved):
        note = "" if self.enabled else "This server keeps no conversations (no store, or prompt logging off)."
        return gr.update(choices=await self.choices(request, query), value=saved["id"]), note

    # -- saving ------------------------------------------------------------------------------------------

    async def save(self, request: gr.Request, conv: list[dict[str, str]], turns: dict[int, Answer], saved: Saved):
        """Write what the chat holds beyond its longest saved prefix, under that prefix: after a regenerate
        or an edit, a branch. Only up to the last finished answer (a stopped one was not logged)."""
        end = max(
            (
                i + 1
                for i, a in turns.items()
                if i < len(conv) and a.done and a.finish_reason != "error" and a.finish_reason != "cancelled"
            ),
            default=0,
        )
        keys = [_key(i, m, turns) for i, m in enumerate(conv[:end])]
        same = 0
        while same < min(len(keys), len(saved["keys"])) and keys[same] == saved["keys"][same]:
            same += 1
        if not self.enabled or end == 0 or same == end:
            return saved, gr.skip(), gr.skip(), gr.skip()
        owner, viewer = self.scope(request)
        new = [_message(i, m, turns) for i, m in enumerate(conv[same:end], start=same)]
        if saved["id"] is None:
            made = await self._call(self.store.create_conversation, owner=owner, messages=new)
            if made is None:
                return saved, gr.skip(), gr.skip(), gr.skip()
            conversation_id, written = made[0].id, made[1]
        else:
            parent = saved["ids"][same - 1] if same else None
            written = await self._call(self.store.add_messages, saved["id"], parent, new, viewer=viewer)
            if written is None:
                return saved, gr.skip(), gr.skip(), gr.skip()
            conversation_id = saved["id"]
        saved = {"id": conversation_id, "ids": saved["ids"][:same] + [m.id for m in written], "keys": keys}
        tree = await asyncio.to_thread(self.store.conversation_messages, conversation_id, viewer=viewer)
        choices = await self.choices(request, None)
        leaf = saved["ids"][-1]
        listed = gr.update(choices=choices, value=conversation_id)
        return saved, listed, branch_label(tree, leaf), sibling_map(tree, load_branch(tree, leaf))

    # -- resuming and moving between branches -------------------------------------------------------

    async def open(self, request: gr.Request, conversation_id: str | None, leaf: str | None = None):
        """The chat for a saved conversation's branch (its newest, unless `leaf` names one):
        (chatbot, conversation, turns, saved, title, branch label, sibling map)."""
        if not conversation_id or not self.enabled:
            return [], [], {}, empty(), "", "", NO_SIBLINGS
        _, viewer = self.scope(request)
        try:
            conversation = await asyncio.to_thread(self.store.get_conversation, conversation_id, viewer=viewer)
            tree = await asyncio.to_thread(self.store.conversation_messages, conversation_id, viewer=viewer)
        except StoreError as exc:
            gr.Warning(exc.message)
            return [], [], {}, empty(), "", "", NO_SIBLINGS
        ends = leaves(tree)
        leaf = leaf if leaf in {m.id for m in ends} else (ends[-1].id if ends else None)
        path = load_branch(tree, leaf) if leaf else []
        conv = [{"role": m.role, "content": m.content} for m in path]
        turns = {i: _answer(m, conv[:i]) for i, m in enumerate(path) if m.role == "assistant"}
        saved = {
            "id": conversation_id,
            "ids": [m.id for m in path],
            "keys": [_key(i, c, turns) for i, c in enumerate(conv)],
        }
        return conv, list(conv), turns, saved, conversation.title, branch_label(tree, leaf), sibling_map(tree, path)

    async def step(self, request: gr.Request, saved: Saved, delta: int):
        """The branch before (-1) or after (+1) the one shown."""
        if not saved["id"] or not self.enabled:
            return (gr.skip(),) * 7
        _, viewer = self.scope(request)
        tree = await asyncio.to_thread(self.store.conversation_messages, saved["id"], viewer=viewer)
        ends = [m.id for m in leaves(tree)]
        here = _leaf_of(tree, saved["ids"][-1] if saved["ids"] else None)
        at = ends.index(here) if here in ends else 0
        return await self.open(request, saved["id"], ends[(at + delta) % len(ends)])

    async def sibling(self, request: gr.Request, target: str, saved: Saved):
        """A ‹ › beside a chat message: `target` is "index:step"; the chat moves to that message's sibling
        before (-1) or after (+1) it — to the newest branch below that sibling. Out of range: nothing."""
        index, _, step = (target or "").partition(":")
        if not saved["id"] or not self.enabled or not index.isdigit() or step not in ("-1", "1", "+1"):
            return (gr.skip(),) * 7
        i = int(index)
        if i >= len(saved["ids"]):
            return (gr.skip(),) * 7
        _, viewer = self.scope(request)
        try:
            tree = await asyncio.to_thread(self.store.conversation_messages, saved["id"], viewer=viewer)
        except StoreError as exc:
            gr.Warning(exc.message)
            return (gr.skip(),) * 7
        by_id = {m.id: m for m in tree}
        node = by_id.get(saved["ids"][i])
        if node is None:
            return (gr.skip(),) * 7
        siblings = _siblings(tree, node)
        at = siblings.index(node.id) + int(step)
        if not 0 <= at < len(siblings):
            return (gr.skip(),) * 7
        return await self.open(request, saved["id"], _leaf_of(tree, siblings[at]))

    # -- rename and delete ----------------------------------------------------------------------------

    async def rename(self, request: gr.Request, saved: Saved, title: str, query: str):
        if not saved["id"] or not self.enabled:
            return gr.skip()
        _, viewer = self.scope(request)
        await self._call(self.store.rename_conversation, saved["id"], title, viewer=viewer)
        return gr.update(choices=await self.choices(request, query), value=saved["id"])

    async def share(self, request: gr.Request, saved: Saved) -> str:
        """A read-only link to the branch shown (anyone with it may read it, without a key)."""
        if not saved["id"] or not self.enabled:
            return "Nothing saved to share yet."
        _, viewer = self.scope(request)
        link = await self._call(self.store.share_conversation, saved["id"], saved["ids"][-1], viewer=viewer)
        if link is None:
            return ""
        base = str(request.base_url).rstrip("/") if request is not None else ""
        return (
            f"Read-only link to this branch: [{base}/shared/{link.id}]({base}/shared/{link.id}) "
            f"(revoke: `DELETE /v1/shared/{link.id}`)"
        )

    async def delete(self, request: gr.Request, saved: Saved, query: str):
        if saved["id"] and self.enabled:
            _, viewer = self.scope(request)
            await self._call(self.store.delete_conversation, saved["id"], viewer=viewer)
        return (
            [],
            [],
            {},
            empty(),
            "",
            "",
            NO_SIBLINGS,
            gr.update(choices=await self.choices(request, query), value=None),
        )


def _message(i: int, message: dict[str, str], turns: dict[int, Answer]) -> NewMessage:
    answer = turns.get(i) if message["role"] == "assistant" else None
    if answer is None:
        return NewMessage(message["role"], message["content"])
    figures = {"temperature": answer.temperature} if answer.temperature is not None else None
    return NewMessage(
        "assistant",
        message["content"],
        stage=answer.stage,
        sampling=figures,
        speculative=answer.speculative,
        reward_score=(answer.reward or {}).get("score"),
        generation_id=answer.response_id,
    )


def _answer(m: ConversationMessage, before: list[dict[str, str]]) -> Answer:
    """A resumed answer, enough to show its stage and to rate it (its generation id)."""
    return Answer(
        stage=m.stage or "?",
        messages=before,
        response_id=m.generation_id,
        text=m.content,
        finish_reason="stop",
        speculative=m.speculative,
        reward={"model": "", "score": m.reward_score} if m.reward_score is not None else None,
    )


def leaves(tree: list[ConversationMessage]) -> list[ConversationMessage]:
    """The branches' ends, in the order they were written."""
    parents = {m.parent_id for m in tree}
    return [m for m in tree if m.id not in parents and not m.deleted]


def load_branch(tree: list[ConversationMessage], leaf: str) -> list[ConversationMessage]:
    by_id = {m.id: m for m in tree}
    path, node = [], by_id.get(leaf)
    while node is not None:
        path.append(node)
        node = by_id.get(node.parent_id) if node.parent_id else None
    return path[::-1]


def _leaf_of(tree: list[ConversationMessage], message_id: str | None) -> str | None:
    """The newest leaf below (or at) a message: where the chat is, in branch terms."""
    children: dict[str | None, list[str]] = {}
    for m in tree:
        if not m.deleted:  # a deleted response ends no branch one can show
            children.setdefault(m.parent_id, []).append(m.id)
    node = message_id
    while node in children:
        node = children[node][-1]
    return node


def _siblings(tree: list[ConversationMessage], node: ConversationMessage) -> list[str]:
    """The message and its siblings — children of its parent in the same role (edits of a question, or
    regenerations of an answer) — in the order they were written."""
    return [m.id for m in tree if m.parent_id == node.parent_id and m.role == node.role and not m.deleted]


NO_SIBLINGS = json.dumps({"at": {}})


def sibling_map(tree: list[ConversationMessage], path: list[ConversationMessage]) -> str:
    """Where each message of the branch shown stands among its siblings, for those that have some: JSON
    `{"at": {index: {"pos", "of", "role", "text"}}}` (`text`: the message's start, which the script
    matches against the message it draws beside, so a chat changed since — edited, regenerated, not yet
    saved — shows no stale ‹ ›)."""
    at = {}
    for i, m in enumerate(path):
        siblings = _siblings(tree, m)
        if len(siblings) > 1 and m.id in siblings:
            at[str(i)] = {"pos": siblings.index(m.id) + 1, "of": len(siblings), "role": m.role, "text": m.content[:60]}
    return json.dumps({"at": at}, ensure_ascii=False)


def branch_label(tree: list[ConversationMessage], message_id: str | None) -> str:
    ends = [m.id for m in leaves(tree)]
    here = _leaf_of(tree, message_id)
    if len(ends) < 2 or here not in ends:
        return ""
    return f"branch {ends.index(here) + 1}/{len(ends)}"


def wire(
    sidebar: Sidebar,
    history: History,
    *,
    chatbot: gr.Chatbot,
    conversation: gr.State,
    turns: gr.State,
    saved: gr.State,
    answered: list,
) -> None:
    """The sidebar's events, and a save after every answering event in `answered` (send, regenerate, edit)."""
    chat_out = [chatbot, conversation, turns, saved, sidebar.title, sidebar.branch, sidebar.siblings]
    gr.on(None, None, js=BRANCH_NAV_JS)  # on load: draw ‹ n/m › beside the chat's messages from here on
    # No triggers: on every page load (a reload lists what was saved), and as the search text changes.
    gr.on(
        None,
        history.refresh,
        [sidebar.search, saved],
        [sidebar.conversations, sidebar.note],
        trigger_mode="always_last",
    )
    sidebar.conversations.input(history.open, sidebar.conversations, chat_out)

    async def previous(request: gr.Request, saved_: Saved):
        return await history.step(request, saved_, -1)

    async def following(request: gr.Request, saved_: Saved):
        return await history.step(request, saved_, +1)

    sidebar.previous.click(previous, saved, chat_out)
    sidebar.next.click(following, saved, chat_out)
    # The script puts the clicked message's "index:step" in `target` as the click goes out.
    sidebar.go.click(
        history.sibling,
        [sidebar.target, saved],
        chat_out,
        js="(target, saved) => [window.__stagechatBranchTarget || '', saved]",
    )
    sidebar.new.click(
        lambda: ([], [], {}, empty(), "", "", NO_SIBLINGS, gr.update(value=None)),
        None,
        [*chat_out, sidebar.conversations],
        queue=False,
    )
    sidebar.rename.click(history.rename, [saved, sidebar.title, sidebar.search], sidebar.conversations)
    sidebar.share.click(history.share, saved, sidebar.note)
    sidebar.delete.click(history.delete, [saved, sidebar.search], [*chat_out, sidebar.conversations])
    for event in answered:
        event.then(
            history.save,
            [conversation, turns, saved],
            [saved, sidebar.conversations, sidebar.branch, sidebar.siblings],
        )


# Draws ‹ n/m › into each chat message that has siblings, from the hidden `#chat-branch-map` (`sibling_map`);
# a click puts "index:step" where the `#chat-branch-go` event reads it, and presses it. The Chatbot
# re-renders its messages at will, so the drawing is redone after each change of the page (idempotent:
# a drawn navigator that is still right is left alone). A message whose text no longer matches the map
# (the chat moved on since the last save) gets none.
BRANCH_NAV_JS = """
() => {
  if (window.__stagechatBranchNav) return;
  window.__stagechatBranchNav = true;
  const squash = (s) => (s || "").replace(/\\s+/g, " ").trim();
  const readMap = () => {
    const box = document.querySelector("#chat-branch-map textarea, #chat-branch-map input");
    try { return JSON.parse((box && box.value) || "{}").at || {}; } catch (e) { return {}; }
  };
  const press = (index, step) => {
    window.__stagechatBranchTarget = index + ":" + step;
    const go = document.querySelector("#chat-branch-go");
    if (go) go.click();
  };
  const button = (text, name, disabled, onclick) => {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = text;
    b.disabled = disabled;
    b.className = "branch-step";
    b.style.cssText = "padding:0 0.4em;font-size:1.15em;line-height:1;"
      + (disabled ? "cursor:default;opacity:0.35" : "cursor:pointer");
    b.setAttribute("aria-label", name);
    b.addEventListener("click", (ev) => { ev.preventDefault(); ev.stopPropagation(); onclick(); });
    return b;
  };
  const draw = () => {
    const log = document.querySelector("#chat-log");
    if (!log) return;
    const at = readMap();
    log.querySelectorAll("[data-testid=user], [data-testid=bot]").forEach((node, i) => {
      const entry = at[String(i)];
      const role = node.getAttribute("data-testid") === "user" ? "user" : "assistant";
      const label = squash(node.getAttribute("aria-label"));
      const fits = entry && entry.role === role && label.includes(squash(entry.text));
      const want = fits ? i + ":" + entry.pos + "/" + entry.of : "";
      let nav = node.querySelector(":scope > .branch-nav");
      if (!want) { if (nav) nav.remove(); return; }
      if (nav && nav.dataset.at === want) return;
      if (!nav) {
        nav = document.createElement("div");
        nav.className = "branch-nav";
        nav.style.cssText = "font-size:0.9em;opacity:0.85;user-select:none;margin-top:0.3em";
        node.appendChild(nav);
      }
      nav.dataset.at = want;
      const pos = document.createElement("span");
      pos.className = "branch-pos";
      pos.textContent = " " + entry.pos + "/" + entry.of + " ";
      nav.replaceChildren(
        button("\u2039", "Previous branch", entry.pos <= 1, () => press(i, -1)),
        pos,
        button("\u203a", "Next branch", entry.pos >= entry.of, () => press(i, 1)),
      );
    });
  };
  let queued = false;
  const soon = () => {
    if (queued) return;
    queued = true;
    requestAnimationFrame(() => { queued = false; draw(); });
  };
  new MutationObserver(soon).observe(document.body, {subtree: true, childList: true, characterData: true});
  setInterval(draw, 500);  // the map's value changes without a DOM mutation
}
"""
