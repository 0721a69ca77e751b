"""The Leaderboard tab: Bradley–Terry strengths per stage with 95% intervals, votes, a win-rate
matrix plot and rater agreement, filtered by time, rater and kind of vote (blind arena votes, or all),
beside the style-controlled strengths and the arena's position bias — what `GET /v1/leaderboard`
returns — and below them the reward model against people (its agreement with voters per stage, the
reward-hacking flag) and the lineage plot (`GET /v1/leaderboard/lineage`; drawn by `ui/lineage.py`).
A button scores the judged answers not scored yet (`POST /v1/leaderboard/reward_scores`'s code).

Reads through `server.leaderboard.read_judgements` and `fits`, the code behind the route, in a
worker thread (the statistics are CPU work and must not block the event loop). Knows Gradio and
matplotlib; nothing about HTTP.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import gradio as gr

from server.errors import APIError
from server.leaderboard import ELO_SCALE, Leaderboard, fits, read_judgements
from server.lineage import lineage
from server.reward_agreement import read_agreement, score_judged
from server.routes import params
from server.serving import StageService
from ui.lineage import AGREEMENT_COLUMNS, agreement_rows, agreement_summary, lineage_figure, lineage_notes

COLUMNS = ["rank", "stage", "strength", "95% interval", "Elo", "Elo 95% interval", "votes", "win rate"]


def parse_time(value: str | None, name: str) -> datetime | None:
    """The API's time filter (`server.routes.params.parse_time`), empty meaning no bound; a bad value
    is the same message as a Gradio error."""
    if not value or not value.strip():
        return None
    try:
        return params.parse_time(value.strip(), name)
    except APIError as exc:
        raise gr.Error(exc.message) from None


def table(board: Leaderboard) -> list[list[Any]]:
    return [
        [
            n,
            r.stage,
            round(r.strength, 3),
            f"[{r.ci[0]:.2f}, {r.ci[1]:.2f}]",
            round(r.elo),
            f"[{1000 + ELO_SCALE * r.ci[0]:.0f}, {1000 + ELO_SCALE * r.ci[1]:.0f}]",
            r.votes,
            "–" if r.win_rate is None else f"{r.win_rate:.0%}",
        ]
        for n, r in enumerate(board.stages, start=1)
    ]


def win_rate_figure(board: Leaderboard):
    """A heatmap: row stage's share of points against column stage (ties count half)."""
    import numpy as np
    from matplotlib.figure import Figure  # no pyplot: this runs in a worker thread

    names = [r.stage for r in board.stages]
    k = len(names)
    grid = np.full((k, k), np.nan)
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            value = board.win_rates.get(a, {}).get(b)
            if value is not None:
                grid[i, j] = value
    fig = Figure(figsize=(1.6 + 1.1 * max(k, 1), 1.2 + 1.0 * max(k, 1)))
    ax = fig.subplots()
    image = ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1)
    ax.set_xticks(range(k), names)
    ax.set_yticks(range(k), names)
    ax.set_xlabel("against")
    ax.set_ylabel("stage")
    ax.set_title("win rate (ties count ½)")
    for i in range(k):
        for j in range(k):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.0%}", ha="center", va="center", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def summary(board: Leaderboard) -> str:
    if not board.stages:
        return "No preferences or rankings between different stages yet (for these filters)."
    agree = board.agreement
    if agree.units:
        alpha = (
            "undefined (one verdict only)" if agree.krippendorff_alpha is None else f"{agree.krippendorff_alpha:.2f}"
        )
        agreement = (
            f"Raters agree: Krippendorff's α = **{alpha}** (ordinal) over {agree.units} answer pairs judged "
            f"by {agree.raters} raters; unanimous on {agree.percent_agreement:.0%} of them."
        )
    else:
        agreement = "No answer pair was judged by two raters yet, so there is no agreement figure."
    separated = "do not overlap" if board.separated() else "overlap — more votes needed"
    return (
        f"**{board.judgements}** judgements (arena votes, A/B preferences, rankings), Bradley–Terry with "
        f"{board.bootstrap} bootstrap resamples: the 95% intervals {separated}.\n\n{agreement}"
    )


STYLE_COLUMNS = ["stage", "strength at equal style", "95% interval"]


def style_summary(styled: dict[str, Any], bias: dict[str, Any]) -> str:
    """The style-controlled fit's coefficients and the position bias, in a sentence each."""
    lines = []
    if styled["judgements"]:
        coefs = ", ".join(f"{name} {c['coef']:+.2f}" for name, c in styled["coefficients"].items())
        lines.append(
            f"**Style-controlled** (LMSYS: length and markdown as covariates), {styled['judgements']} "
            f"judgements: style coefficients {coefs} (per standard deviation of the normalised difference)."
        )
    if bias["decisive_votes"]:
        lo, hi = bias["ci95"]
        lines.append(
            f"**Position bias**: side A won {bias['side_a_wins']:.0%} of {bias['decisive_votes']} decisive "
            f"blind votes (95% interval {lo:.0%}–{hi:.0%}; 50% is none)."
        )
    return "\n\n".join(lines)


def build(service: StageService) -> tuple[gr.Button, Any]:
    """Lay out the tab; returns (refresh button, the refresh event's kwargs) for the app to also run on select."""
    with gr.Row():
        since = gr.Textbox(
            label="since (ISO 8601 or Unix s)",
            placeholder="e.g. 2026-11-24T09:00",
            elem_id="leaderboard-since",
            scale=2,
        )
        until = gr.Textbox(label="until", placeholder="(now)", elem_id="leaderboard-until", scale=2)
        rater = gr.Textbox(label="rater (client id)", placeholder="(everyone)", elem_id="leaderboard-rater", scale=2)
        votes = gr.Radio(
            [("default", ""), ("blind (arena)", "blind"), ("all", "all")],
            value="",
            label="votes",
            elem_id="leaderboard-votes",
            scale=2,
        )
        refresh = gr.Button("Refresh", variant="primary", elem_id="leaderboard-refresh", scale=1)
    summary_md = gr.Markdown(elem_id="leaderboard-summary")
    board_table = gr.Dataframe(headers=COLUMNS, value=[], interactive=False, elem_id="leaderboard-table")
    styled_md = gr.Markdown(elem_id="leaderboard-style")
    styled_table = gr.Dataframe(headers=STYLE_COLUMNS, value=[], interactive=False, elem_id="leaderboard-style-table")
    plot = gr.Plot(label="win-rate matrix", elem_id="leaderboard-plot")
    with gr.Row():
        agreement_md = gr.Markdown(elem_id="leaderboard-rm-summary")
        score = gr.Button("Score judged answers", elem_id="leaderboard-rm-score", scale=0)
    agreement_table = gr.Dataframe(
        headers=AGREEMENT_COLUMNS, value=[], interactive=False, elem_id="leaderboard-rm-table"
    )
    lineage_plot = gr.Plot(label="lineage: strength, mean reward, KL to the parent", elem_id="leaderboard-lineage")
    lineage_md = gr.Markdown(elem_id="leaderboard-lineage-notes")

    async def compute(since_: str, until_: str, rater_: str, votes_: str):
        store = service.store
        if store is None:
            return "This server keeps no feedback store.", [], "", [], None, "", [], None, ""
        low, high = parse_time(since_, "since"), parse_time(until_, "until")
        who = rater_.strip() or None
        registry = service.pool.registry

        def work():
            chosen, judgements, _ = read_judgements(store, votes_ or None, since=low, until=high, rater=who)
            board, styled, bias = fits(store, judgements)
            agreement = read_agreement(store, registry, judgements)
            family = lineage(registry, {**board.to_dict(), "votes": chosen}, agreement)
            return chosen, board, styled, bias, agreement, family

        chosen, board, styled, bias, agreement, family = await asyncio.to_thread(work)
        figure = await asyncio.to_thread(win_rate_figure, board) if board.stages else None
        tree = await asyncio.to_thread(lineage_figure, family) if family["families"] else None
        head = f"Votes: **{chosen}**" + (" (arena only)" if chosen == "blind" else " (arena + named)") + ". "
        return (
            head + summary(board),
            table(board),
            style_summary(styled.to_dict(), bias),
            [[r["stage"], r["strength"], f"[{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]"] for r in styled.stages],
            figure,
            agreement_summary(agreement),
            agreement_rows(agreement),
            tree,
            lineage_notes(family),
        )

    async def score_then(*filters: str):
        """Score every judged answer not scored yet (as the API's POST does), then refresh."""
        if service.store is not None and service.rewards is not None and service.rewards.names():
            _, judgements, _ = await asyncio.to_thread(read_judgements, service.store, "all")
            await score_judged(service.rewards, service.store, judgements)
        return await compute(*filters)

    outputs = [
        summary_md,
        board_table,
        styled_md,
        styled_table,
        plot,
        agreement_md,
        agreement_table,
        lineage_plot,
        lineage_md,
    ]
    event = dict(fn=compute, inputs=[since, until, rater, votes], outputs=outputs)
    refresh.click(**event)
    score.click(fn=score_then, inputs=[since, until, rater, votes], outputs=outputs)
    return refresh, event
