"""The token view's speculation timing: the picked answer's prompt run again, once with the answer's
speculative method and once with speculation off, same settings, same length, one after the other:
wall time, decode speed, and whether the text came out the same (it must at temperature 0).

The prompt is the answer's token ids (a token-exact completion), so chat and notebook answers
alike replay exactly. Pure helpers first; `build` wires the section and runs through the service.
"""

from __future__ import annotations

from contextlib import aclosing

import gradio as gr

from server.protocol import CompletionRequest
from server.serving import StageService
from ui.stream import Answer, stream_answer


def replay_request(answer: Answer, speculative: str) -> CompletionRequest:
    """The answer's prompt and settings again, `speculative` ("off" or a method), its exact length."""
    s = dict(answer.sampling or {})
    s.pop("logit_bias", None)
    return CompletionRequest(
        model=answer.stage,
        prompt=answer.prompt_ids,
        max_tokens=max(answer.completion_tokens, 1),
        ignore_eos=True,
        speculative=speculative,
        **{k: v for k, v in s.items() if k != "top_k" or v > 0},
    )


def timing_markdown(method: str, on: Answer, off: Answer) -> str:
    def line(label: str, a: Answer) -> str:
        if a.error:
            return f"| {label} | error: {a.error} | | |"
        speed = f"{a.tokens_per_s:.0f}" if a.tokens_per_s is not None else "–"
        return f"| {label} | {a.duration_ms or 0:.0f} ms | {speed} tok/s | {a.completion_tokens} |"

    rows = [
        "| run | wall time | decode | tokens |",
        "|---|---|---|---|",
        line(f"speculative {method}", on),
        line("speculation off", off),
    ]
    if on.duration_ms and off.duration_ms and not (on.error or off.error):
        rows.append(
            f"\nSpeed-up: **{off.duration_ms / on.duration_ms:.2f}×**; same text: "
            f"**{'yes' if on.text == off.text else 'no'}**"
        )
    return "\n".join(rows)


def build(service: StageService, history: gr.State, pick: gr.Dropdown) -> None:
    with gr.Accordion("Speculation: the same answer with speculation off", open=False):
        go = gr.Button("Time it with and without speculation", elem_id="spec-time")
        result = gr.Markdown(elem_id="spec-timing")

    async def run(history_: list[Answer], n):
        if n is None or n >= len(history_):
            yield "*Pick an answer.*"
            return
        answer = history_[n]
        if not answer.speculative or not answer.prompt_ids:
            yield "*This answer ran without speculation.*"
            return
        method = answer.speculative["method"]
        runs = []
        for spec in (method, "off"):
            yield f"running with speculative {spec}…"
            async with aclosing(stream_answer(service, replay_request(answer, spec))) as answers:
                async for last in answers:  # noqa: B007 - the finished answer is the last one
                    pass
            runs.append(last)
        yield timing_markdown(method, *runs)

    go.click(run, [history, pick], result)
