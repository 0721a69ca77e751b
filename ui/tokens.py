"""The Token view: for one answer, every generated token with its probability and the top
alternatives (from the logprobs the UI always asks for), and how another temperature would reshape
the next-token distribution at a chosen position: softmax(logprob / T) over the alternatives.

The logprobs are vLLM's raw ones (before temperature, top_p), so T = 1 is the model's own
distribution, renormalised over the alternatives shown. Pure functions first, the tab last; knows
nothing about the service or the store.
"""

from __future__ import annotations

import html
import math
from typing import Any

import gradio as gr

from ui.stream import Answer


def shown(token: str) -> str:
    """A token made visible: spaces and newlines would otherwise vanish from a label."""
    return token.replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥") or "∅"


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
    return [{"token": f"{rank}. {shown(t)}", "probability": p, "kind": "sampled" if t == entry["token"] else "alternative"}
            for rank, ((t, _), p) in enumerate(zip(top, probs), start=1)]


def _color(p: float) -> str:
    # red (unlikely) to green (certain), light enough to read black text on
    return f"hsl({int(120 * p)}, 75%, 82%)"


def token_html(tokens: list[dict[str, Any]]) -> str:
    """The answer, one span per token, shaded by probability; hover shows the alternatives."""
    spans = []
    for i, entry in enumerate(tokens):
        p = math.exp(entry["logprob"])
        alts = ", ".join(f"{shown(t)} {math.exp(lp):.2f}" for t, lp in alternatives(entry))
        title = html.escape(f"#{i} p={p:.3f} | {alts}", quote=True)
        spans.append(f'<span class="tok" data-pos="{i}" title="{title}" style="background:{_color(p)}">'
                     f"{html.escape(entry['token'])}</span>")
    return f'<div class="token-view">{"".join(spans)}</div>'


def token_rows(tokens: list[dict[str, Any]]) -> list[list[Any]]:
    return [[i, shown(e["token"]), round(math.exp(e["logprob"]), 4),
             ", ".join(f"{shown(t)} {math.exp(lp):.3f}" for t, lp in alternatives(e) if t != e["token"])]
            for i, e in enumerate(tokens)]


def answer_label(n: int, answer: Answer) -> str:
    preview = answer.text.strip().replace("\n", " ")
    return f"{n + 1}. {answer.stage}: {preview[:50]}{'…' if len(preview) > 50 else ''}"


def _frame(rows: list[dict[str, Any]]):
    import pandas as pd  # gradio's plots take DataFrames; imported when a plot is drawn

    return pd.DataFrame(rows, columns=["token", "probability", "kind"])


def build(history: gr.State) -> None:
    pick = gr.Dropdown(choices=[], label="answer", elem_id="tokens-answer")
    summary = gr.Markdown(elem_id="tokens-summary")
    view = gr.HTML(elem_id="tokens-html")
    with gr.Row():
        position = gr.Slider(0, 1, value=0, step=1, label="position (token #)", elem_id="tokens-position")
        temperature = gr.Slider(0.05, 3, value=0.5, step=0.05, label="another temperature T",
                                elem_id="tokens-temperature")
    plot_args = dict(x="token", y="probability", color="kind", y_lim=[0, 1], sort=None, height=260,
                     color_map={"sampled": "#e4572e", "alternative": "#4c78a8"}, x_label_angle=-30)
    with gr.Row():
        model_plot = gr.BarPlot(label="as the model gives it (T = 1)", elem_id="tokens-plot-model", **plot_args)
        reshaped_plot = gr.BarPlot(label="at temperature T", elem_id="tokens-plot-reshaped", **plot_args)
    table = gr.Dataframe(headers=["#", "token", "p", "top alternatives"], interactive=False,
                         elem_id="tokens-table", wrap=True)

    def refresh(history_: list[Answer], current):
        usable = [(answer_label(n, a), n) for n, a in enumerate(history_) if a.tokens]
        value = current if current in [v for _, v in usable] else (usable[-1][1] if usable else None)
        return gr.update(choices=usable, value=value)

    def show_answer(history_: list[Answer], n):
        if n is None or n >= len(history_):
            return "", "", gr.update(maximum=1, value=0), []
        answer = history_[n]
        head = f"**{answer.stage}** (sampled at T = {answer.temperature if answer.temperature is not None else 'stage default'}) · {answer.stats()}"
        return head, token_html(answer.tokens), gr.update(maximum=max(len(answer.tokens) - 1, 1), value=0), \
            token_rows(answer.tokens)

    def plots(history_: list[Answer], n, pos, t):
        if n is None or n >= len(history_) or not history_[n].tokens:
            return None, None
        tokens = history_[n].tokens
        entry = tokens[min(int(pos), len(tokens) - 1)]
        return _frame(distribution(entry, 1.0)), _frame(distribution(entry, t))

    history.change(refresh, [history, pick], pick)
    pick.change(show_answer, [history, pick], [summary, view, position, table]).then(
        plots, [history, pick, position, temperature], [model_plot, reshaped_plot])
    position.change(plots, [history, pick, position, temperature], [model_plot, reshaped_plot])
    temperature.change(plots, [history, pick, position, temperature], [model_plot, reshaped_plot])
