"""The Chat tab: talk to one stage at a time, switch stage mid-conversation, stop, regenerate, rate.

The conversation is plain `{"role", "content"}` messages held in a `gr.State` (the Chatbot shows the
same list); each assistant message's `Answer` (response id, figures, logprobs) is kept by message
index, so a thumbs up/down on the Chatbot is stored against the response id the server logged, with
the reasons and comment set under the chat (a re-rating replaces both).

A message sent while an answer still streams is queued, not lost: the conversation list is shared
in place by the send and answer handlers (Gradio hands a `gr.State` object to every event of the
session), and the answering loop goes on until no user message is left unanswered.
Knows Gradio and the service's `stream_answer`; knows nothing about HTTP.
"""

from __future__ import annotations

from contextlib import aclosing

import gradio as gr
from pydantic import ValidationError

from server.serving import StageService
from ui import controls, rating
from ui import conversations as saved_conversations
from ui.controls import Decoding
from ui.login import Login
from ui.stream import Answer, stream_answer

Conversation = list[dict[str, str]]
Turns = dict[int, Answer]  # chatbot message index -> the answer shown there


def render_stats(turns: Turns) -> str:
    """Per answer: stage and figures, newest last."""
    lines = [f"{n}. **{a.stage}** · {a.stats()}" for n, (_, a) in enumerate(sorted(turns.items()), start=1)]
    return "\n".join(lines)


def add_user_message(message: str, conversation: Conversation):
    """Append in place: an answer streaming right now sees the message and answers it next."""
    if not message or not message.strip():
        return gr.skip(), gr.skip(), gr.skip()
    conversation.append({"role": "user", "content": message})
    return "", conversation, list(conversation)


def drop_last_answer(conversation: Conversation, turns: Turns):
    """Regenerate: forget the last answer, keep the question it answered."""
    if conversation and conversation[-1]["role"] == "assistant":
        turns = {i: a for i, a in turns.items() if i != len(conversation) - 1}
        conversation = conversation[:-1]
    return conversation, turns, conversation


def mark_stopped(turns: Turns):
    """Stop: the cancelled handler cannot yield again, so say here that its answer was stopped."""
    for answer in turns.values():
        if not answer.done:
            answer.finish_reason = "cancelled"
    return turns, render_stats(turns)


def edit_message(edit: gr.EditData, conversation: Conversation, turns: Turns):
    """An edited question: the chat goes on from it (the answering that follows saves it as a branch)."""
    index = edit.index[0] if isinstance(edit.index, (list, tuple)) else edit.index
    text = edit.value if isinstance(edit.value, str) else str((edit.value or {}).get("content", edit.value))
    conversation = conversation[:index] + [{"role": "user", "content": text}]
    return conversation, {i: a for i, a in turns.items() if i < index}, conversation


def build(
    service: StageService,
    decoding: Decoding,
    history: gr.State,
    login: Login,
    sidebar: saved_conversations.Sidebar | None = None,
) -> gr.Dropdown:
    """Lay out the tab and wire its events. `history` collects every finished answer (token view);
    `sidebar` (ui/conversations.py) saves the chat after each answer and resumes saved ones.
    Returns the stage picker, whose choices the page refreshes on load (stages can be added live)."""
    choices = controls.stage_choices(service)
    first = choices[0][1] if choices else None
    with gr.Row():
        stage = gr.Dropdown(choices, value=first, label="stage", elem_id="chat-stage", scale=1)
        about = gr.Markdown(controls.describe_stage(service, first), elem_id="chat-stage-about")
    chatbot = gr.Chatbot(label="conversation", elem_id="chat-log", height=420, editable="user")
    conversation = gr.State([])
    turns = gr.State({})
    saved = gr.State(saved_conversations.empty())  # where this chat is saved (ui/conversations.py)
    with gr.Row():
        message = gr.Textbox(placeholder="Message (Enter sends)", show_label=False, scale=6, elem_id="chat-input")
        send = gr.Button("Send", variant="primary", elem_id="chat-send", scale=1)
        stop = gr.Button("Stop", variant="stop", elem_id="chat-stop", scale=1)
        regenerate = gr.Button("Regenerate", elem_id="chat-regenerate", scale=1)
        clear = gr.Button("Clear", elem_id="chat-clear", scale=1)
    stats = gr.Markdown(elem_id="chat-stats")
    reasons = rating.build_reasons("chat")
    rated = gr.Markdown(elem_id="chat-rating")
    busy = gr.State({"answering": False})  # one answering loop per session at a time

    async def respond(
        request: gr.Request,
        conv: Conversation,
        turns_: Turns,
        history_: list[Answer],
        busy_: dict,
        stage_: str,
        *values,
    ):
        if busy_["answering"] or not conv or conv[-1]["role"] != "user":
            # Nothing to answer, or the loop already running answers the queued message after its answer.
            yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return
        busy_["answering"] = True
        try:
            finished_: list[Answer] = list(history_)
            while conv and conv[-1]["role"] == "user":
                try:
                    req = controls.request_for(service, stage_, list(conv), *values)
                except ValidationError as exc:
                    gr.Warning(f"Invalid setting: {exc.errors()[0]['msg']}")
                    yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
                    return
                index = len(conv)
                conv.append({"role": "assistant", "content": ""})
                async with aclosing(stream_answer(service, req, login.rater(request))) as answers:
                    async for answer in answers:
                        if answer.error:
                            gr.Warning(answer.error)
                            del conv[index]
                            yield list(conv), conv, turns_, gr.skip(), render_stats(turns_)
                            return
                        conv[index] = {"role": "assistant", "content": answer.text}
                        turns_[index] = answer
                        if answer.done:
                            finished_ = [*finished_, answer]
                        yield list(conv), conv, turns_, finished_ if answer.done else gr.skip(), render_stats(turns_)
        finally:
            busy_["answering"] = False

    async def rate(turns_: Turns, tags: list[str], comment: str, like: gr.LikeData, request: gr.Request):
        index = like.index[0] if isinstance(like.index, (list, tuple)) else like.index
        answer = turns_.get(index)
        value = {True: "up", False: "down"}.get(like.liked) if isinstance(like.liked, bool) else None
        if answer is None or value is None:
            return gr.skip()
        if not rating.finished(answer):
            gr.Warning("This answer did not finish, so the server did not log it; only finished answers can be rated.")
            return gr.skip()
        said = await rating.rate(service, answer, value, login.rater(request), tags, comment)
        return gr.skip() if said is None else said

    stage.change(
        lambda s: (
            controls.describe_stage(service, s),
            gr.update(choices=controls.speculative_choices(service, s), value=controls.SPEC_DEFAULT),
        ),
        stage,
        [about, decoding.speculative],
    )

    respond_io = dict(
        fn=respond,
        inputs=[conversation, turns, history, busy, stage, *decoding.inputs],
        outputs=[chatbot, conversation, turns, history, stats],
    )
    submitted = message.submit(
        add_user_message, [message, conversation], [message, conversation, chatbot], queue=False
    ).then(**respond_io)
    clicked = send.click(add_user_message, [message, conversation], [message, conversation, chatbot], queue=False).then(
        **respond_io
    )
    regenerated = regenerate.click(
        drop_last_answer, [conversation, turns], [conversation, turns, chatbot], queue=False
    ).then(**respond_io)
    retried = chatbot.retry(drop_last_answer, [conversation, turns], [conversation, turns, chatbot], queue=False).then(
        **respond_io
    )
    edited = chatbot.edit(edit_message, [conversation, turns], [conversation, turns, chatbot], queue=False).then(
        **respond_io
    )
    answering = [submitted, clicked, regenerated, retried, edited]
    stop.click(mark_stopped, turns, [turns, stats], cancels=answering)
    clear.click(
        lambda: ([], {}, [], "", "", saved_conversations.empty()),
        None,
        [conversation, turns, chatbot, stats, rated, saved],
        queue=False,
        cancels=answering,
    )
    if sidebar is not None:
        saved_conversations.wire(
            sidebar,
            saved_conversations.History(service, login),
            chatbot=chatbot,
            conversation=conversation,
            turns=turns,
            saved=saved,
            answered=answering,
        )
    chatbot.like(rate, [turns, reasons.tags, reasons.comment], rated)
    return stage
