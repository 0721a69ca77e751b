"""The token view's branches: at the chosen position of an answer, put one of the alternative tokens
there and let one or more stages go on from that point, side by side (`server.branches`: the
prompt's ids, the answer's ids before the position, the alternative; a token-exact completion, so
the same branch over the API is `POST /v1/branches` or a token-id `/v1/completions` with `echo`).

Pure helpers first; `build` wires the section into the token view and streams the branches through
the shared service (`ui.stream.stream_answers`).
"""

from __future__ import annotations

import html
from contextlib import aclosing
from typing import Any

import gradio as gr
from pydantic import ValidationError

from server.branches import BranchRequest
from server.errors import APIError
from server.serving import StageService
from ui import controls
from ui.stream import Answer, shown, stream_answers

MAX_COLUMNS = 4


def alternatives_at(answer: Answer, position: int) -> list[tuple[str, int]]:
    """(label, token id) of the alternatives at `position` (the sampled token marked), for a dropdown."""
    if not answer.tokens or not 0 <= position < len(answer.tokens):
        return []
    entry = answer.tokens[position]
    ids = entry.get("top_ids") or []
    if len(ids) != len(entry["top"]):
        return []
    return [(f"{shown(t)}{' (sampled)' if i == entry.get('id') else ''}", i) for i, (t, _) in zip(ids, entry["top"])]


def branch_request(
    answer: Answer, position: int, token: int, stages: list[str], fields: dict[str, Any]
) -> BranchRequest:
    """The branch as the API takes it (raises `ValidationError` on bad values)."""
    ids = [t["id"] for t in answer.tokens]
    return BranchRequest.model_validate(
        {
            "model": stages,
            "prompt": answer.prompt_ids or [0],
            "completion": ids,
            "position": position,
            "token": token,
            "logprobs": 5,
            **{k: v for k, v in fields.items() if v is not None},
        }
    )


def columns_html(before: str, token: str, answers: list[Answer]) -> str:
    """One column per stage: the answer before the branch point (grey), the alternative (marked),
    the stage's continuation."""
    cols = []
    for a in answers:
        body = a.error or a.text
        cols.append(
            f'<div class="branch" data-stage="{html.escape(a.stage, quote=True)}" style="flex:1;'
            f'white-space:pre-wrap;border:1px solid #ccc;padding:6px"><b>{html.escape(a.stage)}</b>'
            f'{" ▍" if not a.done else ""}<br><span style="color:#777">{html.escape(before)}</span>'
            f"<mark>{html.escape(token)}</mark>{html.escape(body)}</div>"
        )
    return f'<div class="branches" style="display:flex;gap:8px">{"".join(cols)}</div>'


def build(
    service: StageService,
    history: gr.State,
    pick: gr.Dropdown,
    position: gr.Slider,
    decoding: controls.Decoding | None = None,
) -> None:
    stages = list(service.pool.registry.stages)
    with gr.Accordion("Branch: continue from an alternative token", open=False):
        with gr.Row():
            alternative = gr.Dropdown(choices=[], label="token at this position", elem_id="branch-token")
            chosen = gr.CheckboxGroup(stages, value=stages[:1], label="stages (side by side)", elem_id="branch-stages")
            go = gr.Button("Branch", variant="primary", elem_id="branch-go")
        view = gr.HTML(elem_id="branch-view")

    def offer(history_: list[Answer], n, pos):
        if n is None or n >= len(history_):
            return gr.update(choices=[], value=None)
        choices = alternatives_at(history_[n], int(pos))
        return gr.update(choices=choices, value=choices[1][1] if len(choices) > 1 else None)

    async def run(history_: list[Answer], n, pos, token, stages_: list[str], *values):
        if n is None or n >= len(history_) or token is None or not stages_:
            yield "<p>Pick an answer, a position, a token and at least one stage.</p>"
            return
        answer, pos = history_[n], int(pos)
        fields = controls.decoding_fields(service, stages_[0], *values[:5], *values[6:]) if values else {}
        fields.pop("speculative", None)  # each stage's own default
        try:
            branch = branch_request(answer, pos, int(token), list(stages_)[:MAX_COLUMNS], fields)
            prefix = branch.prefix()
        except (ValidationError, APIError) as exc:
            yield f"<p>{html.escape(str(getattr(exc, 'message', exc)))}</p>"
            return
        requests = [
            branch.completion_for(stage, prefix).model_copy(update={"echo": False}) for stage in branch.stages()
        ]
        before = "".join(t["token"] for t in answer.tokens[:pos])
        entry = answer.tokens[pos]
        alternative = next((t for i, (t, _) in zip(entry["top_ids"], entry["top"]) if i == int(token)), str(token))
        async with aclosing(stream_answers(service, requests)) as snapshots:
            async for answers in snapshots:
                yield columns_html(before, alternative, answers)

    pick.change(offer, [history, pick, position], alternative)
    position.change(offer, [history, pick, position], alternative)
    go.click(run, [history, pick, position, alternative, chosen, *(decoding.inputs if decoding else [])], view)
