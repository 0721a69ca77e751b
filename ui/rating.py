"""What the browser writes to the store: thumbs (with reasons and a comment), A/B verdicts,
rankings and corrections — each through the very `Store` method the HTTP route calls, in a worker
thread, under the rater id of the browser session (`ui.login`).

Also the reason widgets both tabs share. Knows Gradio and the store's methods; nothing about
layout beyond the widgets it builds, nothing about HTTP.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import gradio as gr

from server.serving import StageService
from ui.stream import Answer

# Reasons a rater can tick; free text goes in the comment.
TAGS = ["correct", "wrong facts", "helpful", "unhelpful", "well written", "too terse", "rambling", "rude", "unsafe"]


@dataclass
class Reasons:
    tags: gr.CheckboxGroup
    comment: gr.Textbox


def build_reasons(prefix: str) -> Reasons:
    """Reason tags and a comment, sent with the next thumbs (a re-rating replaces both entirely)."""
    with gr.Row():
        tags = gr.CheckboxGroup(
            TAGS, value=[], label="reasons (sent with your next rating)", elem_id=f"{prefix}-tags", scale=3
        )
        comment = gr.Textbox(label="comment", placeholder="optional", lines=1, elem_id=f"{prefix}-comment", scale=2)
    return Reasons(tags, comment)


def finished(answer: Answer | None) -> bool:
    return bool(answer and answer.done and answer.response_id and answer.finish_reason not in ("cancelled", "error"))


def _store(service: StageService):
    if service.store is None:
        gr.Warning("This server keeps no feedback store; nothing was saved.")
    return service.store


async def _call(fn, *args, **kwargs):
    from server.store.records import StoreError

    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except StoreError as exc:
        gr.Warning(exc.message)
        return None


async def rate(
    service: StageService, answer: Answer, rating: str, rater: str, tags: Sequence[str] = (), comment: str | None = None
) -> str | None:
    """`Store.rate`, as `POST /v1/feedback` does; None (after a warning) when refused."""
    store = _store(service)
    if store is None:
        return None
    # With prompt logging off the store needs the rated text; with it on, the log is the truth.
    text = {} if service.log_prompts else {"prompt": answer.messages, "completion": answer.text}
    fb = await _call(
        store.rate,
        answer.response_id,
        rating,
        rater=rater,
        tags=list(tags or []),
        comment=(comment or "").strip() or None,
        **text,
    )
    if fb is None:
        return None
    why = f" — {', '.join(fb.tags)}" if fb.tags else ""
    return (
        f"Rated {answer.stage}'s answer {'👍' if rating == 'up' else '👎'}{why} "
        f"(stored as `{fb.id}` for `{fb.response_id}`)."
    )


async def prefer(
    service: StageService, a: Answer, b: Answer, choice: str, rater: str, comment: str | None = None
) -> str | None:
    """`Store.prefer`, as `POST /v1/preferences` does."""
    store = _store(service)
    if store is None:
        return None
    text = {} if service.log_prompts else {"prompt": a.messages, "completions": [a.text, b.text]}
    pref = await _call(
        store.prefer,
        [a.response_id, b.response_id],
        choice,
        rater=rater,
        comment=(comment or "").strip() or None,
        **text,
    )
    return None if pref is None else pref.id


async def rank(
    service: StageService, answers: Sequence[Answer], groups: list[list[int]], rater: str, comment: str | None = None
) -> str | None:
    """`Store.rank`, as `POST /v1/rankings` does: `groups` are indices into `answers`, best first."""
    store = _store(service)
    if store is None:
        return None
    ids = [a.response_id for a in answers]
    text = {} if service.log_prompts else {"prompt": answers[0].messages, "completions": [a.text for a in answers]}
    ranking = await _call(
        store.rank,
        ids,
        [[ids[i] for i in group] for group in groups],
        rater=rater,
        comment=(comment or "").strip() or None,
        **text,
    )
    return None if ranking is None else ranking.id


async def correct(
    service: StageService, answer: Answer, completion: str, rater: str, comment: str | None = None
) -> str | None:
    """`Store.correct`, as `POST /v1/corrections` does."""
    store = _store(service)
    if store is None:
        return None
    text = {} if service.log_prompts else {"prompt": answer.messages, "original": answer.text}
    corr = await _call(
        store.correct,
        answer.response_id,
        completion or "",
        rater=rater,
        comment=(comment or "").strip() or None,
        **text,
    )
    return None if corr is None else corr.id
