"""The Compare tab: one prompt to two or three stages at once, answers streaming side by side, and
the user's verdict ("A better / B better / tie / both bad") stored as a preference.

The answers stream through the shared `stream_answers`; the preference goes to `Store.prefer`, as
`POST /v1/preferences` stores it. Knows Gradio and the service; nothing about HTTP.
"""

from __future__ import annotations

import asyncio
from contextlib import aclosing

import gradio as gr
from pydantic import ValidationError

from server.serving import StageService
from ui import controls
from ui.controls import Decoding
from ui.stream import Answer, stream_answers

SLOTS = "ABC"
PAIRS = ["A vs B", "A vs C", "B vs C"]
VERDICTS = {"A better": "a", "B better": "b", "tie": "tie", "both bad": "both_bad"}


def slot_markdown(answer: Answer | None) -> str:
    if answer is None:
        return ""
    return answer.text if not answer.error else f"**error:** {answer.error}"


def build(service: StageService, decoding: Decoding, history: gr.State) -> gr.CheckboxGroup:
    """Lay out the tab and wire its events; returns the stage checkboxes (refreshed on page load)."""
    choices = controls.stage_choices(service)
    stage_ids = [value for _, value in choices]
    with gr.Row():
        prompt = gr.Textbox(label="prompt", placeholder="One prompt for every stage", scale=4,
                            elem_id="compare-prompt")
        stages = gr.CheckboxGroup(choices, value=stage_ids[:2], label="stages (two or three)",
                                  elem_id="compare-stages", scale=2)
    with gr.Row():
        run = gr.Button("Compare", variant="primary", elem_id="compare-run")
        stop = gr.Button("Stop", variant="stop", elem_id="compare-stop")
    answers = gr.State([])
    titles, texts, figures, columns = [], [], [], []
    with gr.Row():
        for i, slot in enumerate(SLOTS):
            with gr.Column(visible=i < 2) as column:
                first = f"### {slot}: {stage_ids[i]}" if i < min(2, len(stage_ids)) else f"### {slot}"
                titles.append(gr.Markdown(first, elem_id=f"compare-title-{slot}"))
                texts.append(gr.Markdown(elem_id=f"compare-answer-{slot}", min_height=120,
                                         container=True))
                figures.append(gr.Markdown(elem_id=f"compare-stats-{slot}"))
            columns.append(column)
    with gr.Row():
        pair = gr.Radio(PAIRS, value=PAIRS[0], label="which two", visible=False, elem_id="compare-pair")
        verdict_buttons = [gr.Button(label, elem_id=f"compare-{code}") for label, code in VERDICTS.items()]
    verdict = gr.Markdown(elem_id="compare-verdict")

    def layout(picked: list[str]):
        shown = [gr.update(visible=i < max(2, len(picked))) for i in range(len(SLOTS))]
        titles_ = [f"### {slot}: {picked[i]}" if i < len(picked) else f"### {slot}" for i, slot in enumerate(SLOTS)]
        return [*shown, *titles_, gr.update(visible=len(picked) == 3, value=PAIRS[0])]

    async def compare(prompt_: str, picked: list[str], history_: list[Answer], *values):
        blank = [gr.skip()] * (len(SLOTS) * 2 + 2)
        if not prompt_ or not prompt_.strip():
            gr.Warning("Type a prompt first.")
            yield blank
            return
        if not 2 <= len(picked) <= 3:
            gr.Warning("Pick two or three stages.")
            yield blank
            return
        conversation = [{"role": "user", "content": prompt_}]
        # The order of the checkbox list, not the click order: A, B, C follow the stage list.
        picked = [s for s in [value for _, value in controls.stage_choices(service)] if s in picked]
        try:
            requests = [controls.request_for(service, s, conversation, *values) for s in picked]
        except ValidationError as exc:
            gr.Warning(f"Invalid setting: {exc.errors()[0]['msg']}")
            yield blank
            return
        async with aclosing(stream_answers(service, requests, controls.UI_CLIENT_ID)) as snapshots:
            async for latest in snapshots:
                padded = [*latest, *[None] * (len(SLOTS) - len(latest))]
                done = all(a.done for a in latest)
                yield [*[slot_markdown(a) for a in padded],
                       *[a.stats() if a else "" for a in padded],
                       latest, [*history_, *latest] if done else gr.skip()]

    async def prefer(answers_: list[Answer], pair_: str, label: str):
        if len(answers_) < 2:
            gr.Warning("Compare first, then say which answer is better.")
            return gr.skip()
        i, j = (SLOTS.index(pair_[0]), SLOTS.index(pair_[-1])) if len(answers_) == 3 else (0, 1)
        a, b = answers_[i], answers_[j]
        if not (a.done and b.done and a.response_id and b.response_id) or "cancelled" in (a.finish_reason, b.finish_reason):
            gr.Warning("Both answers must have finished to be compared.")
            return gr.skip()
        return await store_preference(service, a, b, VERDICTS[label], (SLOTS[i], SLOTS[j]))

    stages.change(layout, stages, [*columns, *titles, pair], queue=False)
    started = run.click(compare, [prompt, stages, history, *decoding.inputs], [*texts, *figures, answers, history])
    submitted = prompt.submit(compare, [prompt, stages, history, *decoding.inputs], [*texts, *figures, answers, history])
    stop.click(None, None, None, cancels=[started, submitted])
    for button, label in zip(verdict_buttons, VERDICTS):
        button.click(prefer, [answers, pair, gr.State(label)], verdict)
    return stages


async def store_preference(service: StageService, a: Answer, b: Answer, choice: str, slots: tuple[str, str]) -> str:
    """Store a verdict with `Store.prefer`, exactly as `POST /v1/preferences` does."""
    store = service.store
    if store is None:
        gr.Warning("This server keeps no feedback store; the preference was not saved.")
        return gr.skip()
    from server.store import StoreError

    text = {} if service.log_prompts else {"prompt": a.messages, "completions": [a.text, b.text]}
    try:
        pref = await asyncio.to_thread(store.prefer, [a.response_id, b.response_id], choice,
                                       rater=controls.UI_CLIENT_ID, **text)
    except StoreError as exc:
        gr.Warning(exc.message)
        return gr.skip()
    said = {"a": f"{slots[0]} ({a.stage}) better", "b": f"{slots[1]} ({b.stage}) better", "tie": "a tie",
            "both_bad": "both bad"}[choice]
    return f"Stored: {said} — `{pref.id}`."
