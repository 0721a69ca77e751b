"""The Arena tab: a prompt box, two anonymous answers side by side (A and B) that stream as they are
written, four vote buttons, and the stages revealed after the vote.

Runs on the same `ArenaService` as `POST /v1/arena/battles` (`server.arena.arena_for`): the server
draws the pair and the sides, the rater (the login's API key, else anonymous) owns the battle, and
the vote is stored blind. More messages before the vote go on the same battle (both sides answer);
"New battle" starts over. Decoding is each stage's own default (the settings accordion is for the
other tabs: a battle uses the same settings on both sides and these would apply to both anyway).
Knows Gradio and the arena service; nothing about HTTP.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
from pydantic import ValidationError

from server.arena import BattleRequest, TurnRequest, VoteRequest, arena_for
from server.errors import APIError
from server.serving import StageService
from server.store.records import StoreError
from ui.login import Login

VOTES = (("A is better", "a"), ("B is better", "b"), ("Tie", "tie"), ("Both are bad", "both_bad"))
HINT = "Ask anything: two anonymous stages answer. Vote, and only then see which stage was which."


def _conversation(battle: dict[str, Any], side: str) -> list[dict[str, str]]:
    return [m for turn in battle["turns"] for m in (turn["user"], {"role": "assistant", "content": turn[side]})]


def build(service: StageService, login: Login) -> None:
    arena = arena_for(service)
    if arena is None:
        gr.Markdown("This server keeps no store, so it has no arena.")
        return
    gr.Markdown(HINT, elem_id="arena-hint")
    with gr.Row():
        side_a = gr.Chatbot(label="A", elem_id="arena-a", height=360)
        side_b = gr.Chatbot(label="B", elem_id="arena-b", height=360)
    with gr.Row():
        message = gr.Textbox(placeholder="Message (Enter sends)", show_label=False, scale=6, elem_id="arena-input")
        send = gr.Button("Send", variant="primary", scale=1, elem_id="arena-send")
        new = gr.Button("New battle", scale=1, elem_id="arena-new")
    with gr.Row():
        buttons = [gr.Button(label, elem_id=f"arena-vote-{winner}", interactive=False) for label, winner in VOTES]
    reveal = gr.Markdown(elem_id="arena-reveal")
    # {"id": battle id | None, "turns": [{"user", "a", "b"}], "voted": bool}
    state = gr.State({"id": None, "turns": [], "voted": False})

    def views(battle: dict[str, Any]) -> tuple[list, list]:
        return _conversation(battle, "a"), _conversation(battle, "b")

    async def ask(text: str, battle: dict[str, Any], request: gr.Request):
        locked = [gr.update(interactive=False)] * len(buttons)
        if not text or not text.strip() or battle["voted"]:
            if battle["voted"]:
                gr.Info("This battle has its vote: start a new battle.")
            yield (gr.skip(), gr.skip(), gr.skip(), battle, gr.skip(), *[gr.skip()] * len(buttons))
            return
        rater = login.rater(request)
        user = {"role": "user", "content": text}
        try:
            if battle["id"] is None:
                started = await arena.open(BattleRequest(messages=[user]), rater)
            else:
                started = await arena.turn(battle["id"], TurnRequest(content=text), rater)
        except (APIError, StoreError, ValidationError) as exc:
            gr.Warning(getattr(exc, "message", None) or str(exc))
            yield (gr.skip(), gr.skip(), gr.skip(), battle, gr.skip(), *[gr.skip()] * len(buttons))
            return
        opened = started[0]
        battle = {**battle, "id": opened.id, "turns": [*battle["turns"], {"user": user, "a": "", "b": ""}]}
        turn = battle["turns"][-1]
        try:
            async with arena.running(started) as stream:
                yield ("", *views(battle), battle, "", *locked)
                async for delta in stream:
                    turn[delta.side] += delta.text
                    yield (gr.skip(), *views(battle), battle, gr.skip(), *[gr.skip()] * len(buttons))
        except APIError as exc:
            gr.Warning(exc.message)
            battle["turns"].pop()
            if not battle["turns"]:
                battle["id"] = None
        ready = [gr.update(interactive=bool(battle["turns"]))] * len(buttons)
        yield (gr.skip(), *views(battle), battle, gr.skip(), *ready)

    async def vote(winner: str, battle: dict[str, Any], request: gr.Request):
        if battle["id"] is None or battle["voted"]:
            return battle, gr.skip(), *[gr.skip()] * len(buttons)
        try:
            revealed = await arena.vote(battle["id"], VoteRequest(winner=winner), login.rater(request))
        except StoreError as exc:
            gr.Warning(exc.message)
            return battle, gr.skip(), *[gr.skip()] * len(buttons)
        said = {w: label for label, w in VOTES}[winner]
        text = (
            f"You voted **{said}**. A was **{revealed['a']['stage']}**, B was **{revealed['b']['stage']}**. "
            "Start a new battle to vote again."
        )
        return {**battle, "voted": True}, text, *[gr.update(interactive=False)] * len(buttons)

    outputs = [message, side_a, side_b, state, reveal, *buttons]
    message.submit(ask, [message, state], outputs)
    send.click(ask, [message, state], outputs)
    for button, (_, winner) in zip(buttons, VOTES):
        button.click(_voter(vote, winner), [state], [state, reveal, *buttons])
    new.click(
        lambda: ({"id": None, "turns": [], "voted": False}, [], [], "", *[gr.update(interactive=False)] * 4),
        None,
        [state, side_a, side_b, reveal, *buttons],
        queue=False,
    )


def _voter(vote, winner: str):
    """A click handler voting `winner` (Gradio passes the request to a parameter annotated gr.Request)."""

    async def handler(battle: dict[str, Any], request: gr.Request):
        return await vote(winner, battle, request)

    return handler
