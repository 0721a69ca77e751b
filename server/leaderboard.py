"""Leaderboard statistics: Bradley–Terry strengths per stage from preferences and rankings, bootstrap
95% intervals, votes per stage, a win-rate matrix, and how well raters agree.

What it knows: the statistics. Every judgement (an A/B preference is a ranking of two) becomes
pairwise outcomes between the stages of its answers: an answer in a better group beats one in a
worse group (score 1), answers in one group tie (score ½, as Chatbot Arena counts ties and "both
bad"). Two answers of the same stage say nothing about stages and are skipped. The Bradley–Terry
model P(i beats j) = σ(θᵢ − θⱼ) is fitted by maximum likelihood with scipy (L-BFGS) under a weak
Gaussian prior (λ = 0.01) that keeps a stage that never lost finite; θ is centred (mean 0) and also
shown on the Elo scale (1000 + 400·θ/ln 10). Intervals are percentile bootstraps that resample whole
judgements (a ranking's pairs are not independent). Agreement is Krippendorff's alpha (the
`krippendorff` package, ordinal: b better < tie < a better) over the answer pairs two or more raters
judged. Per rater: how many judgements each gave (`raters`). Arena votes come in as blind judgements
(`Judgement.blind`); the style-controlled fit and the position-bias figure live in
`server/style_control.py`.

What it does not know: SQL or HTTP (it takes `Judgement`s from `Store.iter_judgements` and
`Store.iter_arena_judgements`; `read_judgements` and `board_body` at the end call those for the route
and the UI). It is
CPU work: callers run it off the event loop.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_expit

from server.store.records import Judgement
from server.style_control import StyleControlled, position_bias, style_controlled

PRIOR = 0.01  # L2 weight on θ: a weak prior, so a stage with only wins still has a finite strength
BOOTSTRAP = 200
ELO_SCALE = 400 / math.log(10)


def outcomes(judgement: Judgement) -> list[tuple[str, str, float]]:
    """(stage i, stage j, score of i over j) for every pair of answers of different stages."""
    rank_of = {index: g for g, group in enumerate(judgement.groups) for index in group}
    out = []
    n = len(judgement.response_ids)
    for i in range(n):
        for j in range(i + 1, n):
            si, sj = judgement.stages[i], judgement.stages[j]
            if si == sj:
                continue
            gi, gj = rank_of[i], rank_of[j]
            out.append((si, sj, 1.0 if gi < gj else 0.0 if gi > gj else 0.5))
    return out


def fit_bradley_terry(wins: np.ndarray, prior: float = PRIOR) -> np.ndarray:
    """θ (mean 0) maximising Σ wins[i, j]·log σ(θᵢ − θⱼ) − prior·‖θ‖²; wins[i, j] = score of i over j."""
    k = wins.shape[0]

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        diff = theta[:, None] - theta[None, :]
        value = -(wins * log_expit(diff)).sum() + prior * theta @ theta
        # d/dθ: Σ_j wins[i,j]·σ(−d_ij) flows to i (+) and j (−)
        g = wins * np.exp(log_expit(-diff))
        grad = -(g.sum(axis=1) - g.sum(axis=0)) + 2 * prior * theta
        return value, grad

    result = minimize(loss, np.zeros(k), jac=True, method="L-BFGS-B")
    theta = result.x
    return theta - theta.mean()


@dataclass
class Agreement:
    krippendorff_alpha: float | None  # None: fewer than two values or no unit with two raters
    units: int  # answer pairs judged by two or more raters
    raters: int
    percent_agreement: float | None  # share of those pairs on which every rater said the same

    def to_dict(self) -> dict[str, Any]:
        return {
            "krippendorff_alpha": self.krippendorff_alpha,
            "level": "ordinal",
            "units": self.units,
            "raters": self.raters,
            "percent_agreement": self.percent_agreement,
        }


def agreement(judgements: Iterable[Judgement]) -> Agreement:
    """Krippendorff's alpha over answer pairs judged by several raters (a rater's latest say counts)."""
    import krippendorff

    said: dict[tuple[str, str], dict[str, tuple[Any, int]]] = {}  # pair -> rater -> (when, value)
    for j in judgements:
        rank_of = {index: g for g, group in enumerate(j.groups) for index in group}
        n = len(j.response_ids)
        for x in range(n):
            for y in range(x + 1, n):
                (a, ga), (b, gb) = sorted([(j.response_ids[x], rank_of[x]), (j.response_ids[y], rank_of[y])])
                value = 2 if ga < gb else 0 if ga > gb else 1  # a better / b better / tie
                previous = said.setdefault((a, b), {}).get(j.rater)
                if previous is None or previous[0] <= j.at:
                    said[(a, b)][j.rater] = (j.at, value)
    units = {pair: raters for pair, raters in said.items() if len(raters) >= 2}
    raters = sorted({r for by in units.values() for r in by})
    if not units:
        return Agreement(None, 0, 0, None)
    data = np.full((len(raters), len(units)), np.nan)
    for u, by in enumerate(units.values()):
        for r, (_, value) in by.items():
            data[raters.index(r), u] = value
    unanimous = sum(len({v for _, v in by.values()}) == 1 for by in units.values()) / len(units)
    try:
        alpha = float(krippendorff.alpha(reliability_data=data, level_of_measurement="ordinal"))
    except (ValueError, ZeroDivisionError):  # one value only: alpha is undefined
        alpha = None
    if alpha is not None and not math.isfinite(alpha):
        alpha = None
    return Agreement(alpha, len(units), len(raters), round(unanimous, 4))


@dataclass
class StageRow:
    stage: str
    strength: float
    ci: tuple[float, float]
    votes: int  # judgements this stage took part in (against another stage)
    comparisons: int  # pairwise outcomes against other stages
    win_rate: float | None  # its score over all its comparisons

    @property
    def elo(self) -> float:
        return 1000 + ELO_SCALE * self.strength

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "strength": round(self.strength, 4),
            "ci95": [round(self.ci[0], 4), round(self.ci[1], 4)],
            "elo": round(self.elo, 1),
            "elo_ci95": [round(1000 + ELO_SCALE * c, 1) for c in self.ci],
            "votes": self.votes,
            "comparisons": self.comparisons,
            "win_rate": None if self.win_rate is None else round(self.win_rate, 4),
        }


@dataclass
class Leaderboard:
    stages: list[StageRow]  # strongest first
    win_rates: dict[str, dict[str, float | None]]  # row stage's score over column stage; None: never met
    judgements: int
    bootstrap: int
    agreement: Agreement
    extra: dict[str, Any] = field(default_factory=dict)

    def separated(self, stages: Iterable[str] | None = None) -> bool:
        """Whether the 95% intervals of these stages (default: all) overlap for no pair."""
        rows = [r for r in self.stages if stages is None or r.stage in set(stages)]
        rows.sort(key=lambda r: r.strength)
        return len(rows) >= 2 and all(lo.ci[1] < hi.ci[0] for lo, hi in zip(rows, rows[1:]))

    def to_dict(self) -> dict[str, Any]:
        return {
            "object": "leaderboard",
            "data": [r.to_dict() for r in self.stages],
            "win_rates": self.win_rates,
            "judgements": self.judgements,
            "bootstrap": self.bootstrap,
            "model": "bradley-terry",
            "agreement": self.agreement.to_dict(),
            **self.extra,
        }


def leaderboard(judgements: Iterable[Judgement], *, bootstrap: int = BOOTSTRAP, seed: int = 0) -> Leaderboard:
    """Fit, bootstrap and summarise. Deterministic for a given `seed`."""
    judgements = list(judgements)
    per_judgement = [outcomes(j) for j in judgements]
    used = [(j, o) for j, o in zip(judgements, per_judgement) if o]
    names = sorted({s for _, o in used for si, sj, _ in o for s in (si, sj)})
    k, index = len(names), {s: i for i, s in enumerate(names)}
    # One (k × k) score matrix and one count matrix per judgement: a bootstrap sample is a weighted sum.
    scores = np.zeros((len(used), k, k))
    counts = np.zeros((len(used), k, k))
    for n, (_, outs) in enumerate(used):
        for si, sj, score in outs:
            i, j = index[si], index[sj]
            scores[n, i, j] += score
            scores[n, j, i] += 1 - score
            counts[n, i, j] += 1
            counts[n, j, i] += 1
    wins, met = scores.sum(axis=0), counts.sum(axis=0)
    theta = fit_bradley_terry(wins) if k else np.zeros(0)
    if k and used and bootstrap > 0:
        rng = np.random.default_rng(seed)
        samples = np.empty((bootstrap, k))
        for b in range(bootstrap):
            weights = rng.multinomial(len(used), np.full(len(used), 1 / len(used)))
            samples[b] = fit_bradley_terry(np.tensordot(weights, scores, axes=1))
        lo, hi = np.percentile(samples, [2.5, 97.5], axis=0)
    else:
        lo = hi = theta
    votes = {s: 0 for s in names}
    for _, outs in used:
        for s in {x for si, sj, _ in outs for x in (si, sj)}:
            votes[s] += 1
    rows = [
        StageRow(
            s,
            float(theta[i]),
            (float(lo[i]), float(hi[i])),
            votes[s],
            int(met[i].sum()),
            float(wins[i].sum() / met[i].sum()) if met[i].sum() else None,
        )
        for s, i in index.items()
    ]
    rows.sort(key=lambda r: -r.strength)
    win_rates = {
        a: {
            b: (None if met[i, j] == 0 else round(float(wins[i, j] / met[i, j]), 4)) for b, j in index.items() if b != a
        }
        for a, i in index.items()
    }
    raters: dict[str, int] = {}
    for j, _ in used:
        raters[j.rater] = raters.get(j.rater, 0) + 1
    extra = {
        "raters": dict(sorted(raters.items(), key=lambda kv: (-kv[1], kv[0]))),
        "blind_judgements": sum(j.blind for j, _ in used),
    }
    return Leaderboard(rows, win_rates, len(used), bootstrap if used else 0, agreement(judgements), extra)


# -- what the route and the UI show (reads a `Store`; the statistics above know none) -------------


def read_judgements(
    store, votes: str | None, *, min_gold_accuracy: float | None = None, **filters
) -> tuple[str, list[Judgement], list[str]]:
    """(the votes read, the judgements, the raters left out) from a `Store`: blind = arena votes only;
    all = arena + named. No `votes`: blind as soon as one blind vote exists, else all. With
    `min_gold_accuracy`, every judgement of a rater whose accuracy on gold questions is below it is
    left out (raters who answered no gold question stay in)."""
    if votes is None:
        votes = "blind" if store.count_arena_votes() else "all"
    excluded = store.gold_excluded(min_gold_accuracy)
    judgements = list(store.iter_arena_judgements(**filters, exclude_raters=set(excluded)))
    if votes == "all":
        judgements = [j for j in store.iter_judgements(**filters) if j.rater not in excluded] + judgements
    return votes, judgements, excluded


def fits(store, judgements: list[Judgement], **fit) -> tuple[Leaderboard, StyleControlled, dict[str, Any]]:
    """What the route and the UI show: the raw fit, the style-controlled fit (answer texts from the
    store's log) and the position bias; `fit` (bootstrap, seed) goes to both fits. CPU work and SQL:
    callers run it off the event loop."""
    texts = store.completions_of(rid for j in judgements for rid in j.response_ids)
    return leaderboard(judgements, **fit), style_controlled(judgements, texts, **fit), position_bias(judgements)


def board_body(store, judgements: list[Judgement], **fit) -> dict[str, Any]:
    """`GET /v1/leaderboard`'s body: `fits` as plain data."""
    board, styled, bias = fits(store, judgements, **fit)
    return {**board.to_dict(), "style_controlled": styled.to_dict(), "position_bias": bias}
