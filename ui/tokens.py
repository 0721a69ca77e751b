"""The Token view: for one answer, every generated token with its probability and the top
alternatives (from the logprobs the UI always asks for), and how another temperature would reshape
the next-token distribution at a chosen position: softmax(logprob / T) over the alternatives. With
speculation, each token is underlined by what speculation did there (`server.spec_marks`) and a plot
shows acceptance by draft position; the sampler lab (`ui.sampler_view`) walks the chosen position
through vLLM's sampler steps.

The logprobs are vLLM's raw ones (before temperature, top_p), so T = 1 is the model's own
distribution, renormalised over the alternatives shown.

"Same text, every stage": one conversation and one answer (typed, or the picked answer), scored by
every stage with prompt logprobs (`server.scoring`, the API's completions echo): each token's
probability under each stage side by side, and each stage's mean log-likelihood — where SFT and
RLHF moved probability mass, and which tokens each stage finds surprising. Pure functions first,
the tab last; the tab calls the shared service, nothing else.
"""

from __future__ import annotations

import html
import math
from typing import Any

import gradio as gr

from server.scoring import StageScore, score_everywhere
from ui.sampler_view import lab_for, lab_markdown, lab_rows
from ui.stream import Answer, shown


def alternatives(entry: dict[str, Any]) -> list[tuple[str, float]]:
    """The top alternatives at one position, with the sampled token added when it was not among them."""
    top = [(t, lp) for t, lp in entry["top"]]
    if entry["token"] not in {t for t, _ in top}:
        top.append((entry["token"], entry["logprob"]))
    return sorted(top, key=lambda item: -item[1])


def softmax(logprobs: list[float], temperature: float) -> list[float]:
    """softmax(logprob / T); T -> 0 tends to the argmax, large T to uniform."""
    t = max(temperature, 1e-6)
    scaled = [lp / t for lp in logprobs]
    peak = max(scaled)
    weights = [math.exp(s - peak) for s in scaled]
    total = sum(weights)
    return [w / total for w in weights]


def distribution(entry: dict[str, Any], temperature: float) -> list[dict[str, Any]]:
    top = alternatives(entry)
    probs = softmax([lp for _, lp in top], temperature)
    return [
        {"token": f"{rank}. {shown(t)}", "probability": p, "kind": "sampled" if t == entry["token"] else "alternative"}
        for rank, ((t, _), p) in enumerate(zip(top, probs), start=1)
    ]


def _color(p: float) -> str:
    # red (unlikely) to green (certain), light enough to read black text on
    return f"hsl({int(120 * p)}, 75%, 82%)"


# How each speculation mark underlines its token (`server.spec_marks`), and what it means.
MARK_STYLES = {
    "accepted": ("border-bottom:3px solid #2a9d8f", "a draft token the target accepted"),
    "replaced": ("border-bottom:3px solid #e76f51", "the target's token in place of a rejected draft"),
    "bonus": ("border-bottom:3px dotted #264653", "the target's bonus token after a fully accepted draft"),
    "target": ("", "the target's token at a step without draft"),
}


def token_html(tokens: list[dict[str, Any]], marks: dict[str, Any] | None = None) -> str:
    """The answer, one span per token, shaded by probability; hover shows the alternatives. With
    speculation `marks`, each token is underlined by what speculation did there, and a legend says how."""
    kinds = (marks or {}).get("tokens") or []
    spans = []
    for i, entry in enumerate(tokens):
        p = math.exp(entry["logprob"])
        alts = ", ".join(f"{shown(t)} {math.exp(lp):.2f}" for t, lp in alternatives(entry))
        kind = kinds[i] if i < len(kinds) else None
        title = html.escape(f"#{i} p={p:.3f}{f' [{kind}]' if kind else ''} | {alts}", quote=True)
        style = f"background:{_color(p)}"
        if kind and MARK_STYLES.get(kind, ("",))[0]:
            style += ";" + MARK_STYLES[kind][0]
        mark = f' data-mark="{kind}"' if kind else ""
        spans.append(
            f'<span class="tok" data-pos="{i}"{mark} title="{title}" style="{style}">'
            f"{html.escape(entry['token'])}</span>"
        )
    legend = ""
    if kinds:
        counts = {k: kinds.count(k) for k in MARK_STYLES}
        legend = (
            '<div class="spec-legend">'
            + " · ".join(
                f'<span style="{style}">{k}</span> {counts[k]} ({html.escape(why)})'
                for k, (style, why) in MARK_STYLES.items()
            )
            + "</div>"
        )
    return f'<div class="token-view">{"".join(spans)}</div>{legend}'


def acceptance_rows(marks: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Acceptance by draft position, for a stacked bar plot: accepted and rejected draft tokens."""
    rows = []
    for p in (marks or {}).get("by_position", []):
        rows.append({"position": f"draft #{p['position']}", "tokens": p["accepted"], "kind": "accepted"})
        rows.append({"position": f"draft #{p['position']}", "tokens": p["drafted"] - p["accepted"], "kind": "rejected"})
    return rows


def token_rows(tokens: list[dict[str, Any]]) -> list[list[Any]]:
    return [
        [
            i,
            shown(e["token"]),
            round(math.exp(e["logprob"]), 4),
            ", ".join(f"{shown(t)} {math.exp(lp):.3f}" for t, lp in alternatives(e) if t != e["token"]),
        ]
        for i, e in enumerate(tokens)
    ]


def parse_conversation(text: str) -> list[dict[str, str]]:
    """A JSON list of {"role", "content"} messages, or else the text as one user message."""
    import json

    text = (text or "").strip()
    if text.startswith("["):
        try:
            messages = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"the conversation is not valid JSON: {exc}") from None
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and {"role", "content"} <= set(m) for m in messages
        ):
            raise ValueError('the conversation must be a list of {"role": ..., "content": ...} messages')
        return [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]
    if not text:
        raise ValueError("the conversation is empty")
    return [{"role": "user", "content": text}]


def score_summary(scores: list[StageScore]) -> str:
    """A Markdown table: each stage's mean log-likelihood, perplexity and most surprising token."""
    lines = [
        "| stage | mean log-likelihood / token | perplexity | tokens | most surprising token |",
        "|---|---|---|---|---|",
    ]
    for s in scores:
        if s.error:
            lines.append(f"| {s.stage} | error: {s.error} | | | |")
            continue
        worst = min(range(len(s.logprobs)), key=lambda i: s.logprobs[i])
        lines.append(
            f"| {s.stage} | {s.mean_logprob:.3f} | {s.perplexity:.2f} | {len(s.tokens)} | "
            f"#{worst} {shown(s.tokens[worst])} (p={math.exp(s.logprobs[worst]):.3f}) |"
        )
    return "\n".join(lines)


def comparison_rows(scores: list[StageScore]) -> tuple[list[str], list[list[Any]]]:
    """Headers and rows: one row per answer token, each stage's probability of it side by side.
    Stages that tokenise the answer differently (another family) get their own rows."""
    ok = [s for s in scores if not s.error]
    if not ok:
        return ["#", "token"], []
    reference = ok[0].tokens
    same = [s for s in ok if s.tokens == reference]
    headers = ["#", "token", *(f"p({s.stage})" for s in same)]
    rows = [[i, shown(t), *(round(math.exp(s.logprobs[i]), 4) for s in same)] for i, t in enumerate(reference)]
    for s in ok:
        if s.tokens != reference:
            rows += [
                [i, f"{shown(t)} [{s.stage}]", *([None] * (len(same) - 1)), round(math.exp(lp), 4)]
                for i, (t, lp) in enumerate(zip(s.tokens, s.logprobs))
            ]
    return headers, rows


def comparison_html(scores: list[StageScore]) -> str:
    """The answer once per stage, each token shaded by that stage's probability of it."""
    blocks = []
    for s in scores:
        if s.error:
            blocks.append(f'<div class="token-view"><b>{html.escape(s.stage)}</b>: {html.escape(s.error)}</div>')
            continue
        spans = "".join(
            f'<span class="tok" title="{html.escape(f"#{i} p={math.exp(lp):.3f}", quote=True)}" '
            f'style="background:{_color(math.exp(lp))}">{html.escape(t)}</span>'
            for i, (t, lp) in enumerate(zip(s.tokens, s.logprobs))
        )
        blocks.append(
            f'<div class="token-view" data-stage="{html.escape(s.stage, quote=True)}">'
            f"<b>{html.escape(s.stage)}</b> (mean log-likelihood {s.mean_logprob:.3f}): {spans}</div>"
        )
    return "".join(blocks)


def answer_label(n: int, answer: Answer) -> str:
    preview = answer.text.strip().replace("\n", " ")
    return f"{n + 1}. {answer.stage}: {preview[:50]}{'…' if len(preview) > 50 else ''}"


def _frame(rows: list[dict[str, Any]], columns: list[str] | None = None):
    import pandas as pd  # gradio's plots take DataFrames; imported when a plot is drawn

    return pd.DataFrame(rows, columns=columns or ["token", "probability", "kind"])


def build(history: gr.State, service=None, decoding=None) -> None:
    pick = gr.Dropdown(choices=[], label="answer", elem_id="tokens-answer")
    summary = gr.Markdown(elem_id="tokens-summary")
    view = gr.HTML(elem_id="tokens-html")
    with gr.Row():
        position = gr.Slider(0, 1, value=0, step=1, label="position (token #)", elem_id="tokens-position")
        temperature = gr.Slider(
            0.05, 3, value=0.5, step=0.05, label="another temperature T", elem_id="tokens-temperature"
        )
    plot_args = dict(
        x="token",
        y="probability",
        color="kind",
        y_lim=[0, 1],
        sort=None,
        height=260,
        color_map={"sampled": "#e4572e", "alternative": "#4c78a8"},
        x_label_angle=-30,
    )
    with gr.Row():
        model_plot = gr.BarPlot(label="as the model gives it (T = 1)", elem_id="tokens-plot-model", **plot_args)
        reshaped_plot = gr.BarPlot(label="at temperature T", elem_id="tokens-plot-reshaped", **plot_args)
    acceptance = gr.BarPlot(
        x="position",
        y="tokens",
        color="kind",
        sort=None,
        height=220,
        color_map={"accepted": "#2a9d8f", "rejected": "#e76f51"},
        label="speculation: acceptance by draft position",
        elem_id="tokens-acceptance",
        visible=False,
    )
    with gr.Accordion("Sampler lab: this position through vLLM's sampler, step by step", open=True):
        lab_summary = gr.Markdown(elem_id="lab-summary")
        lab_table = gr.Dataframe(interactive=False, elem_id="lab-table", wrap=True)
    table = gr.Dataframe(
        headers=["#", "token", "p", "top alternatives"], interactive=False, elem_id="tokens-table", wrap=True
    )

    def refresh(history_: list[Answer], current):
        usable = [(answer_label(n, a), n) for n, a in enumerate(history_) if a.tokens]
        value = current if current in [v for _, v in usable] else (usable[-1][1] if usable else None)
        return gr.update(choices=usable, value=value)

    def show_answer(history_: list[Answer], n):
        if n is None or n >= len(history_):
            return "", "", gr.update(maximum=1, value=0), [], gr.update(visible=False)
        answer = history_[n]
        temperature = answer.temperature if answer.temperature is not None else "stage default"
        head = f"**{answer.stage}** (sampled at T = {temperature}) · {answer.stats()}"
        rows = acceptance_rows(answer.marks)
        acceptance_plot = gr.update(
            value=_frame(rows, ["position", "tokens", "kind"]) if rows else None, visible=bool(rows)
        )
        return (
            head,
            token_html(answer.tokens, answer.marks),
            gr.update(maximum=max(len(answer.tokens) - 1, 1), value=0),
            token_rows(answer.tokens),
            acceptance_plot,
        )

    def plots(history_: list[Answer], n, pos, t):
        if n is None or n >= len(history_) or not history_[n].tokens:
            return None, None
        tokens = history_[n].tokens
        entry = tokens[min(int(pos), len(tokens) - 1)]
        return _frame(distribution(entry, 1.0)), _frame(distribution(entry, t))

    def lab(history_: list[Answer], n, pos):
        if n is None or n >= len(history_) or not history_[n].tokens:
            return "", gr.update(value=None)
        answer = history_[n]
        pos = min(int(pos), len(answer.tokens) - 1)
        result = lab_for(answer, pos)
        headers, rows = lab_rows(result)
        return lab_markdown(result, answer.tokens[pos]["token"]), gr.update(value=rows, headers=headers)

    if service is not None:
        from ui import branch_view, spec_view

        branch_view.build(service, history, pick, position, decoding)
        spec_view.build(service, history, pick)
        _build_same_text(history, pick, service)

    history.change(refresh, [history, pick], pick)
    pick.change(show_answer, [history, pick], [summary, view, position, table, acceptance]).then(
        plots, [history, pick, position, temperature], [model_plot, reshaped_plot]
    )
    position.change(plots, [history, pick, position, temperature], [model_plot, reshaped_plot])
    position.change(lab, [history, pick, position], [lab_summary, lab_table])
    pick.change(lab, [history, pick, position], [lab_summary, lab_table])
    temperature.change(plots, [history, pick, position, temperature], [model_plot, reshaped_plot])


def _build_same_text(history: gr.State, pick: gr.Dropdown, service) -> None:
    """The "same text, every stage" section: the picked (or a typed) answer scored by every stage."""
    stages = list(service.pool.registry.stages)
    with gr.Accordion("Same text, every stage", open=True):
        gr.Markdown(
            "How likely does each stage find the *same* answer? Each token's probability under "
            "each stage (prompt logprobs), and each stage's mean log-likelihood."
        )
        with gr.Row():
            conversation = gr.Textbox(
                label="conversation: a user message, or JSON messages", lines=3, elem_id="same-conversation"
            )
            answer = gr.Textbox(label="answer", lines=3, elem_id="same-answer")
        with gr.Row():
            chosen = gr.CheckboxGroup(stages, value=stages, label="stages", elem_id="same-stages")
            use_picked = gr.Button("use the picked answer", elem_id="same-use-picked")
            run = gr.Button("score with every stage", variant="primary", elem_id="same-score")
        summary = gr.Markdown(elem_id="same-summary")
        view = gr.HTML(elem_id="same-html")
        table = gr.Dataframe(interactive=False, elem_id="same-table", wrap=True)

    def from_picked(history_: list[Answer], n):
        import json

        if n is None or n >= len(history_):
            return gr.update(), gr.update()
        a = history_[n]
        messages = [m for m in a.messages if m.get("role") != "system"] or a.messages
        text = (
            messages[0]["content"]
            if len(messages) == 1 and messages[0]["role"] == "user"
            else json.dumps(messages, ensure_ascii=False)
        )
        return text, a.text

    async def score(conversation_text: str, answer_text: str, stages_: list[str]):
        try:
            messages = parse_conversation(conversation_text)
        except ValueError as exc:
            return f"**{exc}**", "", gr.update(value=None)
        if not answer_text:
            return "**the answer is empty**", "", gr.update(value=None)
        if not stages_:
            return "**pick at least one stage**", "", gr.update(value=None)
        scores = await score_everywhere(service, list(stages_), messages, answer_text)
        headers, rows = comparison_rows(scores)
        return score_summary(scores), comparison_html(scores), gr.update(value=rows, headers=headers)

    use_picked.click(from_picked, [history, pick], [conversation, answer])
    run.click(score, [conversation, answer, chosen], [summary, view, table])
