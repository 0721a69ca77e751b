"""The Chat tab: talk to one stage at a time, switch stage mid-conversation, stop, regenerate, rate.

The conversation is plain `{"role", "content"}` messages held in a `gr.State` (the Chatbot shows the
same list); each assistant message's `Answer` (response id, figures, logprobs) is kept by message
index, so a thumbs up/down on the Chatbot is stored against the response id the server logged.
Knows Gradio and the service's `stream_answer`; knows nothing about HTTP.
"""

from __future__ import annotations

import asyncio
from contextlib import aclosing

import gradio as gr
from pydantic import ValidationError

from server.serving import StageService
from ui import controls
from ui.controls import Decoding
from ui.stream import Answer, stream_answer

Conversation = list[dict[str, str]]
Turns = dict[int, Answer]  # chatbot message index -> the answer shown there


def render_stats(turns: Turns) -> str:
    """Per answer: stage and figures, newest last."""
    lines = [f"{n}. **{a.stage}** · {a.stats()}" for n, (_, a) in enumerate(sorted(turns.items()), start=1)]
    return "\n".join(lines)


def add_user_message(message: str, conversation: Conversation):
    if not message or not message.strip():
        return gr.skip(), gr.skip(), gr.skip()
    conversation = [*conversation, {"role": "user", "content": message}]
    return "", conversation, conversation


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


def build(service: StageService, decoding: Decoding, history: gr.State) -> gr.Dropdown:
    """Lay out the tab and wire its events. `history` collects every finished answer (token view).
    Returns the stage picker, whose choices the page refreshes on load (stages can be added live)."""
    choices = controls.stage_choices(service)
    first = choices[0][1] if choices else None
    with gr.Row():
        stage = gr.Dropdown(choices, value=first, label="stage", elem_id="chat-stage", scale=1)
        about = gr.Markdown(controls.describe_stage(service, first), elem_id="chat-stage-about")
    chatbot = gr.Chatbot(label="conversation", elem_id="chat-log", height=420)
    conversation = gr.State([])
    turns = gr.State({})
    with gr.Row():
        message = gr.Textbox(placeholder="Message (Enter sends)", show_label=False, scale=6,
                             elem_id="chat-input")
        send = gr.Button("Send", variant="primary", elem_id="chat-send", scale=1)
        stop = gr.Button("Stop", variant="stop", elem_id="chat-stop", scale=1)
        regenerate = gr.Button("Regenerate", elem_id="chat-regenerate", scale=1)
        clear = gr.Button("Clear", elem_id="chat-clear", scale=1)
    stats = gr.Markdown(elem_id="chat-stats")
    rated = gr.Markdown(elem_id="chat-rating")

    async def respond(conv: Conversation, turns_: Turns, history_: list[Answer], stage_: str, *values):
        if not conv or conv[-1]["role"] != "user":
            yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return
        try:
            request = controls.request_for(service, stage_, conv, *values)
        except ValidationError as exc:
            gr.Warning(f"Invalid setting: {exc.errors()[0]['msg']}")
            yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return
        index = len(conv)
        shown = [*conv, {"role": "assistant", "content": ""}]
        async with aclosing(stream_answer(service, request, controls.UI_CLIENT_ID)) as answers:
            async for answer in answers:
                if answer.error:
                    gr.Warning(answer.error)
                    yield conv, conv, turns_, gr.skip(), render_stats(turns_)
                    return
                shown[-1] = {"role": "assistant", "content": answer.text}
                turns_[index] = answer
                finished = [*history_, answer] if answer.done else gr.skip()
                yield shown, shown, turns_, finished, render_stats(turns_)

    async def rate(turns_: Turns, like: gr.LikeData):
        index = like.index[0] if isinstance(like.index, (list, tuple)) else like.index
        answer = turns_.get(index)
        rating = {True: "up", False: "down"}.get(like.liked) if isinstance(like.liked, bool) else None
        if answer is None or rating is None:
            return gr.skip()
        if answer.finish_reason in ("cancelled", "error") or not answer.response_id:
            gr.Warning("This answer did not finish, so the server did not log it; only finished answers can be rated.")
            return gr.skip()
        return await store_rating(service, answer, rating)

    stage.change(lambda s: (controls.describe_stage(service, s),
                            gr.update(choices=controls.speculative_choices(service, s), value=controls.SPEC_DEFAULT)),
                 stage, [about, decoding.speculative])

    respond_io = dict(fn=respond, inputs=[conversation, turns, history, stage, *decoding.inputs],
                      outputs=[chatbot, conversation, turns, history, stats])
    submitted = message.submit(add_user_message, [message, conversation], [message, conversation, chatbot],
                               queue=False).then(**respond_io)
    clicked = send.click(add_user_message, [message, conversation], [message, conversation, chatbot],
                         queue=False).then(**respond_io)
    regenerated = regenerate.click(drop_last_answer, [conversation, turns], [conversation, turns, chatbot],
                                   queue=False).then(**respond_io)
    retried = chatbot.retry(drop_last_answer, [conversation, turns], [conversation, turns, chatbot],
                            queue=False).then(**respond_io)
    stop.click(mark_stopped, turns, [turns, stats], cancels=[submitted, clicked, regenerated, retried])
    clear.click(lambda: ([], {}, [], "", ""), None, [conversation, turns, chatbot, stats, rated], queue=False)
    chatbot.like(rate, turns, rated)
    return stage


async def store_rating(service: StageService, answer: Answer, rating: str) -> str:
    """Store a thumbs up/down with `Store.rate`, exactly as `POST /v1/feedback` does."""
    store = service.store
    if store is None:
        gr.Warning("This server keeps no feedback store; the rating was not saved.")
        return gr.skip()
    from server.store import StoreError

    # With prompt logging off the store needs the rated text; with it on, the log is the truth.
    text = {} if service.log_prompts else {"prompt": answer.messages, "completion": answer.text}
    try:
        fb = await asyncio.to_thread(store.rate, answer.response_id, rating, rater=controls.UI_CLIENT_ID, **text)
    except StoreError as exc:
        gr.Warning(exc.message)
        return gr.skip()
    return f"Rated {answer.stage}'s answer {'👍' if rating == 'up' else '👎'} (stored as `{fb.id}` for `{fb.response_id}`)."
