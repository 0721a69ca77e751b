"""Style-controlled strengths: Bradley–Terry with the answers' length and formatting as covariates,
as LMSYS's Chatbot Arena does ("Does style matter?", 2024), and the position-bias figure.

The model: P(answer i beats answer j) = σ(θ_stage(i) − θ_stage(j) + γ · s(i, j)), where s holds, per
style feature f, the normalised difference (fᵢ − fⱼ)/(fᵢ + fⱼ) (0 when both are 0), each feature's
column then divided by its standard deviation over the data. Fitted by weighted logistic regression
(L-BFGS) with the leaderboard's weak prior on θ and γ; a tie counts as half a win each way. θ then
says how strong a stage is *at equal style*: a stage that wins only by writing longer or with more
markdown loses that edge to γ. Intervals: percentile bootstrap over whole judgements, as the raw fit.

Features (LMSYS's four): words in the answer, markdown headers, list items, bold spans.

What it does not know: SQL or HTTP. A judgement whose answers' texts are unknown (prompt logging
off) takes no part in the style fit. CPU work: callers run it off the event loop.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, log_expit

from server.store.records import Judgement

FEATURES = ("length", "headers", "list_items", "bold")
PRIOR = 0.01
Z95 = 1.959964

_HEADER = re.compile(r"^#{1,6}\s", re.MULTILINE)
_LIST = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s", re.MULTILINE)
_BOLD = re.compile(r"\*\*[^*\n]+\*\*|__[^_\n]+__")


def style_features(text: str) -> np.ndarray:
    return np.array(
        [len(text.split()), len(_HEADER.findall(text)), len(_LIST.findall(text)), len(_BOLD.findall(text))], dtype=float
    )


def _normalised_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    total = a + b
    return np.divide(a - b, total, out=np.zeros_like(total), where=total > 0)


def fit_logistic(
    x: np.ndarray, y: np.ndarray, w: np.ndarray, prior: float = PRIOR, start: np.ndarray | None = None
) -> np.ndarray:
    """β maximising Σ w·[y log σ(xβ) + (1−y) log σ(−xβ)] − prior·‖β‖²."""

    def loss(beta: np.ndarray) -> tuple[float, np.ndarray]:
        z = x @ beta
        value = -(w * (y * log_expit(z) + (1 - y) * log_expit(-z))).sum() + prior * beta @ beta
        grad = -x.T @ (w * (y - expit(z))) + 2 * prior * beta
        return value, grad

    x0 = np.zeros(x.shape[1]) if start is None else start
    return minimize(loss, x0, jac=True, method="L-BFGS-B").x


@dataclass
class StyleControlled:
    stages: list[dict[str, Any]]  # {"stage", "strength", "ci95"}, strongest first
    coefficients: dict[str, dict[str, Any]]  # feature -> {"coef", "ci95"}: its pull on the odds, per std
    judgements: int  # judgements with both texts known
    skipped: int  # judgements left out: a text unknown

    def strength(self, stage: str) -> float:
        return next(r["strength"] for r in self.stages if r["stage"] == stage)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": "bradley-terry + style (length, headers, list items, bold)",
            "data": self.stages,
            "coefficients": self.coefficients,
            "judgements": self.judgements,
            "skipped": self.skipped,
        }


def style_controlled(
    judgements: Iterable[Judgement], texts: dict[str, str], *, bootstrap: int = 200, seed: int = 0
) -> StyleControlled:
    """Fit the style-controlled model on the judgements whose answers' texts are in `texts`."""
    rows: list[tuple[int, str, str, np.ndarray, float]] = []  # (judgement, stage i, stage j, style diff, score)
    used = skipped = 0
    for j in judgements:
        pairs = _pairs(j)
        if not pairs:
            continue
        if any(rid not in texts for rid in j.response_ids):
            skipped += 1
            continue
        feats = {rid: style_features(texts[rid]) for rid in j.response_ids}
        for x, y, score in pairs:
            rows.append(
                (
                    used,
                    j.stages[x],
                    j.stages[y],
                    _normalised_difference(feats[j.response_ids[x]], feats[j.response_ids[y]]),
                    score,
                )
            )
        used += 1
    names = sorted({s for r in rows for s in (r[1], r[2])})
    if not rows:
        return StyleControlled([], {}, 0, skipped)
    k, f, index = len(names), len(FEATURES), {s: i for i, s in enumerate(names)}
    x = np.zeros((len(rows), k + f))
    score = np.empty(len(rows))
    owner = np.empty(len(rows), dtype=int)
    for n, (judgement, si, sj, diff, s) in enumerate(rows):
        x[n, index[si]] += 1
        x[n, index[sj]] -= 1
        x[n, k:] = diff
        score[n], owner[n] = s, judgement
    spread = x[:, k:].std(axis=0)
    x[:, k:] /= np.where(spread > 0, spread, 1.0)  # a feature that never differs stays 0
    # Each row twice, a win (y = 1) weighted by its score and a loss weighted by the rest: ties count half.
    xx, yy = np.vstack([x, x]), np.concatenate([np.ones(len(rows)), np.zeros(len(rows))])
    base_w, own = np.concatenate([score, 1 - score]), np.concatenate([owner, owner])

    def fit(weights: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
        beta = fit_logistic(xx, yy, weights, start=start)
        beta[:k] -= beta[:k].mean()
        return beta

    beta = fit(base_w)
    if bootstrap > 0:
        rng = np.random.default_rng(seed)
        samples = np.empty((bootstrap, k + f))
        for b in range(bootstrap):
            counts = rng.multinomial(used, np.full(used, 1 / used))
            samples[b] = fit(base_w * counts[own], start=beta)  # a resample's optimum lies near the full one
        lo, hi = np.percentile(samples, [2.5, 97.5], axis=0)
    else:
        lo = hi = beta
    stages = sorted(
        (
            {"stage": s, "strength": round(float(beta[i]), 4), "ci95": [round(float(lo[i]), 4), round(float(hi[i]), 4)]}
            for s, i in index.items()
        ),
        key=lambda r: -r["strength"],
    )
    coefficients = {
        name: {"coef": round(float(beta[k + n]), 4), "ci95": [round(float(lo[k + n]), 4), round(float(hi[k + n]), 4)]}
        for n, name in enumerate(FEATURES)
    }
    return StyleControlled(stages, coefficients, used, skipped)


def _pairs(j: Judgement) -> list[tuple[int, int, float]]:
    """(index i, index j, score of i over j) for answers of different stages (as `leaderboard.outcomes`)."""
    rank_of = {index: g for g, group in enumerate(j.groups) for index in group}
    out = []
    for x in range(len(j.response_ids)):
        for y in range(x + 1, len(j.response_ids)):
            if j.stages[x] != j.stages[y]:
                gx, gy = rank_of[x], rank_of[y]
                out.append((x, y, 1.0 if gx < gy else 0.0 if gx > gy else 0.5))
    return out


def position_bias(judgements: Sequence[Judgement]) -> dict[str, Any]:
    """How often side a won among the decisive blind votes (ties and "both bad" left out), with a 95%
    Wilson interval: 0.5 is no bias; a rater who always clicks a gives 1.0."""
    decisive = [j for j in judgements if j.blind and len(j.groups) == 2 and len(j.response_ids) == 2]
    n = len(decisive)
    wins = sum(j.groups[0] == [0] for j in decisive)
    if n == 0:
        return {"side_a_wins": None, "decisive_votes": 0, "ci95": None, "votes": sum(j.blind for j in judgements)}
    p = wins / n
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / (1 + Z95**2 / n)
    return {
        "side_a_wins": round(p, 4),
        "decisive_votes": n,
        "ci95": [round(centre - half, 4), round(centre + half, 4)],
        "votes": sum(j.blind for j in judgements),
    }
