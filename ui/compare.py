"""The Compare tab: one conversation sent to K = 2..4 columns at once — different stages, or several
samples of one stage — turn by turn, each column with its own history, answers streaming side by
side. The user ranks the answers (ties allowed), gives a quick A/B verdict, rates any answer (thumbs
with reasons and a comment) and corrects any answer into what it should have been.

Every write is anchored to the exact conversation the answer was generated for: the server logged
that column's messages with the response id, and the store checks a ranking's answers share them.
Columns diverge after the first turn (each continues its own answers), so a later ranking compares
answers to one conversation only when the columns still share it: with "continue from the best
answer" on (the default; the way multi-turn preference data is usually collected), a stored ranking
makes its best answer every column's reply, and the next turn is again one conversation.

Answers stream through the shared `stream_answers`; writes go through `ui.rating`, which calls the
store exactly as the HTTP routes do. Knows Gradio and the service; nothing about HTTP.
"""

from __future__ import annotations

from contextlib import aclosing
from dataclasses import dataclass, field

import gradio as gr
from pydantic import ValidationError

from server.serving import StageService
from ui import controls, rating
from ui.controls import Decoding
from ui.login import Login
from ui.stream import Answer, stream_answers

SLOTS = "ABCD"
PAIRS = [f"{SLOTS[i]} vs {SLOTS[j]}" for i in range(len(SLOTS)) for j in range(i + 1, len(SLOTS))]
VERDICTS = {"A better": "a", "B better": "b", "tie": "tie", "both bad": "both_bad"}
RANKS = ["1", "2", "3", "4"]


@dataclass
class Column:
    """One column's conversation: `history` holds every finished turn, the pending answer apart."""

    stage: str
    history: list[dict[str, str]] = field(default_factory=list)
    answer: Answer | None = None


def column_stages(picked: list[str], samples: int, order: list[str]) -> list[str]:
    """Several stages: one column each (in the stage list's order). One stage: `samples` columns of it."""
    picked = [s for s in order if s in picked]
    if len(picked) == 1:
        return picked * int(samples)
    return picked  # more than four: `send` refuses, rather than drop some silently


def slot_markdown(answer: Answer | None) -> str:
    if answer is None:
        return ""
    return answer.text if not answer.error else f"**error:** {answer.error}"


def history_markdown(slot: str, column: Column | None, question: str | None = None) -> str:
    """The column's conversation before its current answer."""
    if column is None:
        return ""
    messages = [*column.history, *([{"role": "user", "content": question}] if question else [])]
    who = {"user": "you", "assistant": f"{slot} ({column.stage})", "system": "system"}
    return "\n\n".join(f"**{who.get(m['role'], m['role'])}:** {m['content']}" for m in messages)


def build(service: StageService, decoding: Decoding, history: gr.State, login: Login) -> gr.CheckboxGroup:
    """Lay out the tab and wire its events; returns the stage checkboxes (refreshed on page load)."""
    choices = controls.stage_choices(service)
    stage_ids = [value for _, value in choices]
    with gr.Row():
        prompt = gr.Textbox(
            label="message", placeholder="One message for every column (Enter sends)", scale=4, elem_id="compare-prompt"
        )
        stages = gr.CheckboxGroup(
            choices,
            value=stage_ids[:2],
            label="stages (two to four, or one and samples)",
            elem_id="compare-stages",
            scale=2,
        )
        samples = gr.Slider(
            2, len(SLOTS), value=2, step=1, label="samples when one stage is picked", elem_id="compare-samples", scale=1
        )
    with gr.Row():
        run = gr.Button("Send", variant="primary", elem_id="compare-run")
        stop = gr.Button("Stop", variant="stop", elem_id="compare-stop")
        new = gr.Button("New conversation", elem_id="compare-new")
        follow = gr.Checkbox(
            value=True, label="after a ranking, continue every column from the best answer", elem_id="compare-follow"
        )
    cols = gr.State([])  # list[Column]
    answers = gr.State([])  # the columns' latest answers, in slot order
    titles, histories, texts, figures, columns, ups, downs, fixes, fix_buttons, ranks = ([] for _ in range(10))
    first = column_stages(stage_ids[:2], 2, stage_ids)
    with gr.Row():
        for i, slot in enumerate(SLOTS):
            with gr.Column(visible=i < max(2, len(first)), min_width=220) as column:
                titles.append(
                    gr.Markdown(
                        f"### {slot}: {first[i]}" if i < len(first) else f"### {slot}", elem_id=f"compare-title-{slot}"
                    )
                )
                histories.append(gr.Markdown(elem_id=f"compare-history-{slot}"))
                texts.append(gr.Markdown(elem_id=f"compare-answer-{slot}", min_height=120, container=True))
                figures.append(gr.Markdown(elem_id=f"compare-stats-{slot}"))
                with gr.Row():
                    ups.append(gr.Button("👍", elem_id=f"compare-up-{slot}", size="sm", min_width=40))
                    downs.append(gr.Button("👎", elem_id=f"compare-down-{slot}", size="sm", min_width=40))
                ranks.append(
                    gr.Radio(
                        RANKS[: max(2, len(first))],
                        label=f"rank of {slot} (1 = best; equal = tie)",
                        elem_id=f"compare-rank-{slot}",
                    )
                )
                fixes.append(gr.Textbox(label=f"correct {slot}'s answer", lines=2, elem_id=f"compare-fix-{slot}"))
                fix_buttons.append(gr.Button("Save correction", size="sm", elem_id=f"compare-fix-save-{slot}"))
            columns.append(column)
    reasons = rating.build_reasons("compare")
    with gr.Row():
        submit_rank = gr.Button("Submit ranking", variant="primary", elem_id="compare-rank")
        pair = gr.Radio(PAIRS[:1], value=PAIRS[0], label="which two", visible=False, elem_id="compare-pair")
        verdict_buttons = [gr.Button(label, elem_id=f"compare-{code}") for label, code in VERDICTS.items()]
    verdict = gr.Markdown(elem_id="compare-verdict")

    def layout(picked: list[str], samples_: float):
        targets = column_stages(picked, int(samples_), [value for _, value in controls.stage_choices(service)])
        k = max(2, len(targets))
        shown = [gr.update(visible=i < k) for i in range(len(SLOTS))]
        titles_ = [f"### {slot}: {targets[i]}" if i < len(targets) else f"### {slot}" for i, slot in enumerate(SLOTS)]
        pairs = [p for p in PAIRS if SLOTS.index(p[-1]) < k]
        rank_choices = [gr.update(choices=RANKS[:k], value=None) for _ in SLOTS]
        # A new set of columns is a new conversation.
        return [
            *shown,
            *titles_,
            gr.update(visible=len(targets) > 2, choices=pairs, value=pairs[0]),
            *rank_choices,
            [],
            [],
            *[""] * (3 * len(SLOTS)),
        ]

    async def send(
        request: gr.Request,
        message: str,
        picked: list[str],
        samples_: float,
        cols_: list[Column],
        history_: list[Answer],
        *values,
    ):
        blank = [gr.skip()] * (len(SLOTS) * 4 + 4)
        if not message or not message.strip():
            gr.Warning("Type a message first.")
            yield blank
            return
        order = [value for _, value in controls.stage_choices(service)]
        targets = column_stages(picked, int(samples_), order)
        if not 2 <= len(targets) <= len(SLOTS):
            gr.Warning("Pick two to four stages, or one stage and a number of samples.")
            yield blank
            return
        if [c.stage for c in cols_] != targets:  # other columns than the conversation had: start afresh
            cols_[:] = [Column(stage) for stage in targets]
        for column in cols_:  # an answer that was stopped or failed is not part of the history
            column.answer = None
        user = {"role": "user", "content": message}
        rater = login.rater(request)
        requests = []
        try:
            for i, column in enumerate(cols_):
                settings = list(values)
                seed_at = decoding.inputs.index(decoding.seed)
                if targets.count(column.stage) > 1 and settings[seed_at] is not None and settings[seed_at] >= 0:
                    settings[seed_at] = settings[seed_at] + i  # samples of one stage: different seeds
                requests.append(controls.request_for(service, column.stage, [*column.history, user], *settings))
        except ValidationError as exc:
            gr.Warning(f"Invalid setting: {exc.errors()[0]['msg']}")
            yield blank
            return
        pads = [None] * (len(SLOTS) - len(cols_))
        histories_ = [history_markdown(s, c, message) for s, c in zip(SLOTS, [*cols_, *pads])]
        cleared = ""  # empty the message box once: text typed while answers stream stays
        async with aclosing(stream_answers(service, requests, rater)) as snaps:
            async for latest in snaps:
                for column, answer in zip(cols_, latest):
                    column.answer = answer
                done = all(a.done for a in latest)
                if done:
                    for column, answer in zip(cols_, latest):
                        if rating.finished(answer):
                            column.history = [*answer_prompt(answer), {"role": "assistant", "content": answer.text}]
                padded = [*latest, *pads]
                # The correction boxes: emptied when the turn starts, filled with each answer once it is done.
                fixes_ = [
                    a.text if done and rating.finished(a) else ("" if done or cleared == "" else gr.skip())
                    for a in latest
                ]
                yield [
                    *[slot_markdown(a) for a in padded],
                    *[a.stats() if a else "" for a in padded],
                    *histories_,
                    *fixes_,
                    *[""] * len(pads),
                    latest,
                    [*history_, *latest] if done else gr.skip(),
                    cleared,
                    gr.skip(),
                ]
                cleared = gr.skip()

    def current(answers_: list[Answer], slot: int) -> Answer | None:
        answer = answers_[slot] if slot < len(answers_) else None
        if not rating.finished(answer):
            gr.Warning("That answer has not finished; only finished answers can be rated, ranked or corrected.")
            return None
        return answer

    async def thumb(answers_: list[Answer], tags: list[str], comment: str, slot: int, value: str, request: gr.Request):
        answer = current(answers_, slot)
        if answer is None:
            return gr.skip()
        said = await rating.rate(service, answer, value, login.rater(request), tags, comment)
        return gr.skip() if said is None else f"Stored: {SLOTS[slot]} — {said}"

    async def fix(answers_: list[Answer], text: str, comment: str, slot: int, request: gr.Request):
        answer = current(answers_, slot)
        if answer is None:
            return gr.skip()
        stored = await rating.correct(service, answer, text, login.rater(request), comment)
        return (
            gr.skip() if stored is None else f"Stored: the correction of {SLOTS[slot]} ({answer.stage}) — `{stored}`."
        )

    async def submit_ranking(
        answers_: list[Answer],
        cols_: list[Column],
        follow_: bool,
        comment: str,
        request: gr.Request,
        *places: str | None,
    ):
        k = len(answers_)
        if k < 2 or any(not rating.finished(a) for a in answers_):
            gr.Warning("Every column's answer must have finished before they can be ranked.")
            return gr.skip()
        places = places[:k]
        if any(p is None for p in places):
            gr.Warning("Give every column a rank (1 = best; the same number for a tie).")
            return gr.skip()
        by_place: dict[int, list[int]] = {}
        for i, p in enumerate(places):
            by_place.setdefault(int(p), []).append(i)
        groups = [by_place[p] for p in sorted(by_place)]
        stored = await rating.rank(service, answers_, groups, login.rater(request), comment)
        if stored is None:
            return gr.skip()
        said = " > ".join(" = ".join(f"{SLOTS[i]} ({answers_[i].stage})" for i in g) for g in groups)
        note = ""
        if follow_ and len(cols_) == k:
            best = answers_[groups[0][0]]
            for column in cols_:
                if column.history and column.history[-1]["role"] == "assistant":
                    column.history[-1] = {"role": "assistant", "content": best.text}
            note = f" Every column continues from {SLOTS[groups[0][0]]}'s answer."
        return f"Stored ranking: {said} — `{stored}`.{note}"

    async def prefer(answers_: list[Answer], pair_: str, comment: str, label: str, request: gr.Request):
        if len(answers_) < 2:
            gr.Warning("Compare first, then say which answer is better.")
            return gr.skip()
        i, j = (SLOTS.index(pair_[0]), SLOTS.index(pair_[-1])) if len(answers_) > 2 else (0, 1)
        if j >= len(answers_):
            gr.Warning("Pick two of the columns shown.")
            return gr.skip()
        a, b = answers_[i], answers_[j]
        if not (rating.finished(a) and rating.finished(b)):
            gr.Warning("Both answers must have finished to be compared.")
            return gr.skip()
        choice = VERDICTS[label]
        stored = await rating.prefer(service, a, b, choice, login.rater(request), comment)
        if stored is None:
            return gr.skip()
        said = {
            "a": f"{SLOTS[i]} ({a.stage}) better",
            "b": f"{SLOTS[j]} ({b.stage}) better",
            "tie": "a tie",
            "both_bad": "both bad",
        }[choice]
        return f"Stored: {said} — `{stored}`."

    def new_conversation():
        return [[], [], *[""] * (4 * len(SLOTS)), *[gr.update(value=None) for _ in SLOTS], ""]

    layout_out = [*columns, *titles, pair, *ranks, cols, answers, *texts, *figures, *histories]
    stages.change(layout, [stages, samples], layout_out, queue=False)
    samples.change(layout, [stages, samples], layout_out, queue=False)
    send_io = dict(
        fn=send,
        inputs=[prompt, stages, samples, cols, history, *decoding.inputs],
        outputs=[*texts, *figures, *histories, *fixes, answers, history, prompt, verdict],
    )
    started = run.click(**send_io)
    submitted = prompt.submit(**send_io)
    stop.click(None, None, None, cancels=[started, submitted])
    new.click(
        new_conversation,
        None,
        [cols, answers, *texts, *figures, *histories, *fixes, *ranks, verdict],
        cancels=[started, submitted],
        queue=False,
    )
    for i in range(len(SLOTS)):
        ups[i].click(thumb, [answers, reasons.tags, reasons.comment, gr.State(i), gr.State("up")], verdict)
        downs[i].click(thumb, [answers, reasons.tags, reasons.comment, gr.State(i), gr.State("down")], verdict)
        fix_buttons[i].click(fix, [answers, fixes[i], reasons.comment, gr.State(i)], verdict)
    submit_rank.click(submit_ranking, [answers, cols, follow, reasons.comment, *ranks], verdict)
    for button, label in zip(verdict_buttons, VERDICTS):
        button.click(prefer, [answers, pair, reasons.comment, gr.State(label)], verdict)
    return stages


def answer_prompt(answer: Answer) -> list[dict[str, str]]:
    """The column's conversation as sent, without the system prompt the decoding controls add."""
    return [m for m in answer.messages if m["role"] != "system"]
