"""The token view's sampler lab: at a chosen position of an answer, the distribution after each step
of vLLM's sampler (`server.sampler_lab`), as a summary table (what each step cut, the mass left,
where the sampled token stood) and a token × step table of probabilities.

Fed from what the UI's answer kept: the raw top-20 logprobs at each position with their token ids,
the settings the engine sampled with, the prompt's ids (for the penalties). Pure functions; the
Gradio wiring is in `ui.tokens`.
"""

from __future__ import annotations

from typing import Any

from server.sampler_lab import TAIL, Lab, LabSettings, run
from ui.stream import Answer, shown


def lab_for(answer: Answer, position: int) -> Lab | None:
    """The lab at `position` of `answer`, with the settings it was sampled with; None without logprobs."""
    if not answer.tokens or position < 0 or position >= len(answer.tokens):
        return None
    entry = answer.tokens[position]
    ids = entry.get("top_ids") or []
    if entry.get("id") is None or len(ids) != len(entry["top"]):
        return None  # an answer kept without token ids (an older session): nothing to key the tokens by
    window = [(i, t, lp) for i, (t, lp) in zip(ids, entry["top"])]
    window.append((entry["id"], entry["token"], entry["logprob"]))
    s = answer.sampling or {}
    settings = LabSettings(
        temperature=s.get("temperature", 1.0),
        top_k=s.get("top_k", 0),
        top_p=s.get("top_p", 1.0),
        min_p=s.get("min_p", 0.0),
        repetition_penalty=s.get("repetition_penalty", 1.0),
        presence_penalty=s.get("presence_penalty", 0.0),
        frequency_penalty=s.get("frequency_penalty", 0.0),
        logit_bias=tuple((int(t), float(b)) for t, b in s.get("logit_bias", [])),
    )
    output = [t["id"] for t in answer.tokens[:position] if t.get("id") is not None]
    return run(
        window,
        settings,
        sampled_id=entry["id"],
        vocab_size=answer.vocab_size or len(window),
        prompt_ids=answer.prompt_ids,
        output_ids=output,
    )


def _shown(token: str) -> str:
    """`stream.shown`, safe inside a Markdown table cell."""
    return shown(token).replace("|", "\\|")


def lab_markdown(lab: Lab | None, sampled: str = "") -> str:
    """One row per step: survivors, mass kept, what it cut, where the sampled token stood."""
    if lab is None:
        return "*No logprobs with token ids at this position.*"
    lines = [
        f"Sampled token: **{_shown(sampled)}** · raw mass outside the top 20: {lab.tail_mass:.3f}",
        "",
        "| step | tokens left | mass kept | cut | sampled token |",
        "|---|---|---|---|---|",
    ]
    for step in lab.steps:
        left = sum(r.count for r in step.rows)
        cut = ", ".join(_shown(c) for c in step.cut[:6]) + (f" … (+{len(step.cut) - 6})" if len(step.cut) > 6 else "")
        where = f"#{step.sampled_rank}, p={step.sampled_probability:.3f}" if step.sampled_rank else "**cut**"
        lines.append(f"| {step.name} | {left} | {step.mass_kept:.1%} | {cut or '–'} | {where} |")
    lines += [f"\n*{note}*" for note in lab.notes]
    return "\n".join(lines)


def lab_rows(lab: Lab | None) -> tuple[list[str], list[list[Any]]]:
    """Headers and rows: each window token's probability after each step (blank once cut)."""
    if lab is None:
        return ["token"], []
    headers = ["token", *(s.name for s in lab.steps)]
    first = lab.steps[0].rows
    after = [{r.token_id: r.probability for r in s.rows} for s in lab.steps]
    rows = []
    for r in first:
        label = r.token if r.token_id == TAIL else _shown(r.token)
        rows.append([label, *(round(a[r.token_id], 4) if r.token_id in a else None for a in after)])
    return headers, rows
