"""Which two stages meet next in the arena, and on which sides.

How: the leaderboard's Bradley–Terry fit on the blind votes so far gives each stage a 95% interval;
here its width comes from the fit's curvature along that stage's own axis (the diagonal of the
Fisher information of the same penalised likelihood, 2·1.96/√(Σⱼ nᵢⱼ pᵢⱼ(1−pᵢⱼ) + 2λ): cheap enough to
redo after every few votes, where the leaderboard bootstraps). A stage
nobody has judged yet has the widest interval the prior allows. Each pair (i, j) is drawn with
probability ½ · 1/P + ½ · (wᵢ + wⱼ) / Σ(w + w) over the P pairs: half the draws go to the pairs whose
intervals are widest together, so the leaderboard's widest interval narrows first, and half are
uniform, so every pair keeps meeting (a drawing that settled on one pair could never notice a stage
change). The sides are then a coin toss. Every random choice uses the operating system's generator
(`random.SystemRandom`), so a rater cannot predict the next pair or side from earlier ones.

What it does not know: the store, HTTP, or how answers are produced (`server/arena.py` asks here).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Sequence

import numpy as np

from server.leaderboard import PRIOR, fit_bradley_terry, outcomes
from server.store.records import Judgement

Z95 = 1.959964
UNIFORM_SHARE = 0.5  # share of the draws that ignore the intervals


def interval_widths(judgements: Iterable[Judgement], stages: Sequence[str], prior: float = PRIOR) -> dict[str, float]:
    """Width of each stage's 95% interval from the Bradley–Terry fit's Fisher information (θ centred)."""
    index = {s: i for i, s in enumerate(stages)}
    k = len(stages)
    wins, met = np.zeros((k, k)), np.zeros((k, k))
    for j in judgements:
        for si, sj, score in outcomes(j):
            if si in index and sj in index:
                i, jj = index[si], index[sj]
                wins[i, jj] += score
                wins[jj, i] += 1 - score
                met[i, jj] += 1
                met[jj, i] += 1
    theta = fit_bradley_terry(wins, prior) if k else np.zeros(0)
    p = 1 / (1 + np.exp(-(theta[:, None] - theta[None, :])))
    # The curvature along each stage's own axis (the others held at their fit): Σⱼ nᵢⱼ pᵢⱼ (1 − pᵢⱼ) + 2λ.
    # The full inverse would smear one unjudged stage's uncertainty over every stage once θ is centred.
    information = (met * p * (1 - p)).sum(axis=1) + 2 * prior
    return {s: float(2 * Z95 / np.sqrt(information[i])) for s, i in index.items()}


def pair_probabilities(stages: Sequence[str], widths: dict[str, float]) -> dict[tuple[str, str], float]:
    """The chance of each unordered pair (sorted names) being drawn next."""
    pairs = list(itertools.combinations(sorted(set(stages)), 2))
    if not pairs:
        return {}
    top = max(widths.values(), default=1.0) or 1.0
    score = {pair: widths.get(pair[0], top) + widths.get(pair[1], top) for pair in pairs}
    total = sum(score.values()) or 1.0
    return {pair: UNIFORM_SHARE / len(pairs) + (1 - UNIFORM_SHARE) * score[pair] / total for pair in pairs}


_system = random.SystemRandom()


def draw_pair(stages: Sequence[str], widths: dict[str, float], rng: random.Random = _system) -> tuple[str, str]:
    """(stage on side a, stage on side b): a pair by `pair_probabilities`, then the sides at random."""
    probabilities = pair_probabilities(stages, widths)
    if not probabilities:
        raise ValueError("the arena needs at least two stages")
    pairs = list(probabilities)
    pair = rng.choices(pairs, weights=[probabilities[p] for p in pairs])[0]
    return pair if rng.random() < 0.5 else (pair[1], pair[0])
