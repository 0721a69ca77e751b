"""The Notebook tab: raw text continuation with any stage, where a base model is at home.

Two modes. *Text*: the stage continues the text as it is (`POST /v1/completions`: no chat template,
no turns). *Chat prefill*: a user message and the start of the assistant's answer, which the stage
goes on from (`continue_final_message`, vLLM's field; refused by a stage without a chat template).
Tokens stream as they come (`ui.stream.stream_answer`, the same service as the API), "keep" appends
the continuation to the text to go on from there, and every finished continuation joins the token
view's answers. The decoding controls (temperature, sampler, speculation) apply here too; the
system prompt does not (raw text has no turns). Knows Gradio and the service; nothing about HTTP.
"""

from __future__ import annotations

import html
from contextlib import aclosing

import gradio as gr
from pydantic import ValidationError

from server.protocol import ChatCompletionRequest, CompletionRequest
from server.serving import StageService
from ui import controls
from ui.controls import Decoding
from ui.login import Login
from ui.stream import Answer, stream_answer

TEXT, PREFILL = "text (completions)", "chat prefill (continue the answer)"
TEXT_LOGPROBS = 5  # the completions API's most alternatives per token


def text_request(stage: str, text: str, fields: dict) -> CompletionRequest:
    """Raw continuation of `text` (raises `ValidationError` on bad values)."""
    return CompletionRequest(model=stage, prompt=text, logprobs=TEXT_LOGPROBS, **fields)


def prefill_request(stage: str, user: str, prefix: str, fields: dict) -> ChatCompletionRequest:
    """The user's message and the start of the answer, which the stage continues."""
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": prefix}]
    from ui.stream import TOP_LOGPROBS

    return ChatCompletionRequest(
        model=stage, messages=messages, continue_final_message=True, logprobs=True, top_logprobs=TOP_LOGPROBS, **fields
    )


def page_html(before: str, continuation: str, streaming: bool = False) -> str:
    """The given text in grey, the stage's continuation after it in bold (a caret while streaming)."""
    caret = "▍" if streaming else ""
    return (
        f'<div class="notebook-page" style="white-space:pre-wrap"><span style="color:#777">{html.escape(before)}'
        f'</span><b class="notebook-continuation">{html.escape(continuation)}</b>{caret}</div>'
    )


def kept(mode: str, text: str, prefix: str, answer: Answer | None) -> tuple[str, str]:
    """The text (and prefix) with the last continuation appended: go on from there."""
    if answer is None or not answer.text:
        return text, prefix
    return (text + answer.text, prefix) if mode == TEXT else (text, prefix + answer.text)


def build(service: StageService, decoding: Decoding, history: gr.State, login: Login) -> gr.Dropdown:
    """Lay out the tab; returns its stage picker (refreshed on page load, like the others)."""
    choices = controls.stage_choices(service)
    with gr.Row():
        stage = gr.Dropdown(
            choices, value=choices[0][1] if choices else None, label="stage", elem_id="notebook-stage", scale=2
        )
        mode = gr.Radio([TEXT, PREFILL], value=TEXT, label="mode", elem_id="notebook-mode", scale=2)
    text = gr.Textbox(
        label="text to continue (or, in chat prefill, the user's message)", lines=6, elem_id="notebook-text"
    )
    prefix = gr.Textbox(label="the answer starts with", lines=2, visible=False, elem_id="notebook-prefix")
    with gr.Row():
        go = gr.Button("Continue", variant="primary", elem_id="notebook-go")
        stop = gr.Button("Stop", variant="stop", elem_id="notebook-stop")
        keep = gr.Button("Keep (append and go on from there)", elem_id="notebook-keep")
    page = gr.HTML(elem_id="notebook-page")
    stats = gr.Markdown(elem_id="notebook-stats")
    last = gr.State(None)

    async def run(
        request: gr.Request,
        stage_: str,
        mode_: str,
        text_: str,
        prefix_: str,
        history_: list[Answer],
        temperature,
        top_p,
        max_tokens,
        seed,
        speculative,
        _system,
        *sampler,
    ):
        fields = controls.decoding_fields(service, stage_, temperature, top_p, max_tokens, seed, speculative, *sampler)
        try:
            req = (
                text_request(stage_, text_, fields)
                if mode_ == TEXT
                else prefill_request(stage_, text_, prefix_, fields)
            )
        except ValidationError as exc:
            err = exc.errors()[0]
            gr.Warning(f"Invalid setting: {'.'.join(str(p) for p in err.get('loc', ()))}: {err['msg']}")
            yield gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return
        before = text_ if mode_ == TEXT else f"User: {text_}\nAssistant: {prefix_}"
        async with aclosing(stream_answer(service, req, login.rater(request))) as answers:
            async for answer in answers:
                if answer.error:
                    gr.Warning(answer.error)
                    yield page_html(before, ""), f"error: {answer.error}", None, gr.skip()
                    return
                done = answer.done
                yield (
                    page_html(before, answer.text, streaming=not done),
                    f"**{answer.stage}** · {answer.stats()}",
                    answer,
                    [*history_, answer] if done else gr.skip(),
                )

    mode.change(lambda m: gr.update(visible=m == PREFILL), mode, prefix, queue=False)
    started = go.click(run, [stage, mode, text, prefix, history, *decoding.inputs], [page, stats, last, history])
    stop.click(None, None, None, cancels=[started])
    keep.click(kept, [mode, text, prefix, last], [text, prefix], queue=False)
    return stage
