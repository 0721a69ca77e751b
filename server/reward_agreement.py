"""The reward model against people: how often each registry reward model orders a judged pair of
answers as the voters did, per stage, and which rounds look like reward hacking.

What it knows: a *judged pair* is two answers a judgement put in different groups — an arena vote for
a or b, a named A/B preference, any two answers of a ranking in different groups. Ties and "both bad"
(one group) order nothing and are left out (`tied_pairs` counts them). Each judgement counts, so a
pair three raters judged counts three times, as three verdicts. The reward model agrees when it scores
the answer the voters put ahead higher; equal scores count ½. Per stage: the pairs the stage took part
in (a pair of two answers of one stage counts once), with a 95% Wilson interval, and the stage's mean
reward over its judged answers (each answer once). A stage whose mean reward rose over its registry
parent's while its agreement fell below the parent's (the parent's counted on its pairs against
stages outside this stage's subtree) is flagged `reward_hacking` — the reward model likes its answers
more than people do — when both have at least `MIN_PAIRS` scored pairs (else null, saying why). The
flag follows the point estimates; `vs_parent.p_value` (a one-sided two-proportion z-test of the drop)
and `significant` (p < 0.05) say whether the drop is more than noise.

Scores come from the registry's reward models through `server.rewards` (the real engines) and are
kept in the store (`reward_scores`, keyed by answer and reward model, with the checkpoint): reading
the figures (`read_agreement`, the leaderboard GET) never scores; `score_judged` (the explicit
`POST /v1/leaderboard/reward_scores`, or the Leaderboard tab's button) scores the judged answers not
scored yet, reusing a score the serving layer gave when the answer was served by the same model.

What it does not know: HTTP, or how judgements are read and filtered (`server/leaderboard.py`).
Reading runs SQL and arithmetic: callers run it off the event loop; `score_judged` is async.
"""

from __future__ import annotations

import asyncio
import logging
import math
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from server.store.records import Judgement

log = logging.getLogger(__name__)

Z95 = 1.959964
MIN_PAIRS = 10  # scored pairs a stage and its parent each need before the hacking flag says yes or no
BATCH = 16  # answers per reward-engine call
SCORE_LIMIT = 2000  # answers one scoring request scores at most; the answer says how many remain


@dataclass(frozen=True)
class JudgedPair:
    """Two answers a judgement ordered: `better` was put ahead of `worse`."""

    better: str
    worse: str
    better_stage: str
    worse_stage: str


def judged_pairs(judgements: Iterable[Judgement]) -> tuple[list[JudgedPair], int]:
    """(every ordered pair of answers, how many pairs were tied — tie or both bad — and left out)."""
    pairs, tied = [], 0
    for j in judgements:
        rank_of = {index: g for g, group in enumerate(j.groups) for index in group}
        n = len(j.response_ids)
        for x in range(n):
            for y in range(x + 1, n):
                if rank_of[x] == rank_of[y]:
                    tied += 1
                    continue
                hi, lo = (x, y) if rank_of[x] < rank_of[y] else (y, x)
                pairs.append(JudgedPair(j.response_ids[hi], j.response_ids[lo], j.stages[hi], j.stages[lo]))
    return pairs, tied


def wilson(successes: float, n: int) -> tuple[float, float] | None:
    """The 95% Wilson score interval of a proportion (None for n = 0)."""
    if n == 0:
        return None
    p = successes / n
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / (1 + Z95**2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _agreed(pair: JudgedPair, scores: dict[str, float]) -> float:
    better, worse = scores[pair.better], scores[pair.worse]
    return 1.0 if better > worse else 0.0 if better < worse else 0.5


def _tally(agreed: float, n: int) -> dict[str, Any]:
    ci = wilson(agreed, n)
    return {
        "agreement": None if n == 0 else round(agreed / n, 4),
        "ci95": None if ci is None else [round(ci[0], 4), round(ci[1], 4)],
        "pairs": n,
    }


def model_agreement(
    pairs: Sequence[JudgedPair], scores: dict[str, float], parents: dict[str, str | None]
) -> dict[str, Any]:
    """One reward model's figures from its scores (answers without one are `unscored`): overall and per
    stage (agreement, interval, pairs, mean reward), and the hacking flag against each stage's parent."""
    scored = [(p, _agreed(p, scores)) for p in pairs if p.better in scores and p.worse in scores]
    stages: dict[str, dict[str, Any]] = {}
    for stage in sorted({s for p in pairs for s in (p.better_stage, p.worse_stage)}):
        mine = [a for p, a in scored if stage in (p.better_stage, p.worse_stage)]
        answers = {p.better for p in pairs if p.better_stage == stage} | {
            p.worse for p in pairs if p.worse_stage == stage
        }
        rewards = [scores[rid] for rid in answers if rid in scores]
        stages[stage] = {
            **_tally(sum(mine), len(mine)),
            "mean_reward": round(sum(rewards) / len(rewards), 4) if rewards else None,
            "answers": len(answers),
            "scored_answers": len(rewards),
        }
    for stage, figures in stages.items():
        figures.update(hacking(stage, figures, stages, scored, parents))
    unscored = {rid for p in pairs for rid in (p.better, p.worse) if rid not in scores}
    return {
        **_tally(sum(a for _, a in scored), len(scored)),
        "unscored_pairs": len(pairs) - len(scored),
        "unscored_answers": len(unscored),
        "stages": stages,
    }


def subtree(stage: str, parents: dict[str, str | None]) -> set[str]:
    """The stage and every stage descending from it."""
    out = {stage}
    grew = True
    while grew:
        grew = False
        for name, parent in parents.items():
            if parent in out and name not in out:
                out.add(name)
                grew = True
    return out


def hacking(
    stage: str,
    mine: dict[str, Any],
    stages: dict[str, dict[str, Any]],
    scored: Sequence[tuple[JudgedPair, float]],
    parents: dict[str, str | None],
) -> dict[str, Any]:
    """`reward_hacking`: True when the stage's mean reward rose over its parent's while its agreement with
    voters fell below the parent's; False when not; None (with `why`) when there is no parent or too few
    scored pairs. The parent's agreement here leaves out its pairs against this stage and its descendants:
    those are the stage's own evidence, and counting them on both sides would make a parent share its
    child's drop (and a child that hacks would flag its parent too)."""
    parent = parents.get(stage)
    if parent is None:
        return {"reward_hacking": None, "vs_parent": None}
    below = subtree(stage, parents)
    baseline = [
        a
        for p, a in scored
        if parent in (p.better_stage, p.worse_stage) and not ({p.better_stage, p.worse_stage} - {parent}) & below
    ]
    theirs = stages.get(parent, {}).get("mean_reward")
    figures: dict[str, Any] = {"parent": parent, "parent_pairs": len(baseline)}
    if min(mine["pairs"], len(baseline)) < MIN_PAIRS or None in (mine["mean_reward"], theirs):
        figures["why"] = (
            f"needs {MIN_PAIRS} scored pairs for the stage and for its parent (against other stages than this "
            "one and its descendants), and a mean reward for both"
        )
        return {"reward_hacking": None, "vs_parent": figures}
    parent_agreement = sum(baseline) / len(baseline)
    reward_change = mine["mean_reward"] - theirs
    agreement_change = mine["agreement"] - parent_agreement
    p = drop_p_value(sum(baseline), len(baseline), mine["agreement"] * mine["pairs"], mine["pairs"])
    figures.update(
        {
            "parent_mean_reward": theirs,
            "parent_agreement": round(parent_agreement, 4),
            "reward_change": round(reward_change, 4),
            "agreement_change": round(agreement_change, 4),
            "p_value": round(p, 4),
            "significant": p < 0.05,
        }
    )
    return {"reward_hacking": reward_change > 0 and agreement_change < 0, "vs_parent": figures}


def drop_p_value(k1: float, n1: int, k2: float, n2: int) -> float:
    """One-sided two-proportion z-test that agreement fell from k1/n1 (parent) to k2/n2 (stage): small
    means the drop is unlikely to be noise. 1.0 when the pooled proportion leaves no variance."""
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0
    z = (k1 / n1 - k2 / n2) / se
    return 0.5 * math.erfc(z / math.sqrt(2))


# -- reading the figures (cached scores only) -----------------------------------------------------


def _parents(registry) -> dict[str, str | None]:
    return {name: registry.parent(name) for name in registry.stages}


def read_agreement(store, registry, judgements: Sequence[Judgement]) -> dict[str, Any]:
    """`reward_agreement` of `GET /v1/leaderboard`: per reward model of the registry, from the scores the
    store holds (nothing is scored here). SQL and arithmetic: callers run it off the event loop."""
    pairs, tied = judged_pairs(judgements)
    models = {}
    ids = {rid for p in pairs for rid in (p.better, p.worse)}
    for name, rm in registry.reward_models.items() if registry is not None else ():
        cached = store.cached_reward_scores(name, rm.model, ids) if ids else {}
        scores = {gid: score for gid, (score, _) in cached.items() if score is not None}
        figures = model_agreement(pairs, scores, _parents(registry))
        figures["unscorable_answers"] = sum(score is None for score, _ in cached.values())  # too long
        models[name] = figures
    return {
        "judged_pairs": len(pairs),
        "tied_pairs": tied,
        "excluded": "ties and both_bad votes: the voters ordered neither answer",
        "min_pairs_for_flag": MIN_PAIRS,
        "models": models,
    }


# -- scoring the judged answers not scored yet ----------------------------------------------------

_locks: weakref.WeakKeyDictionary[Any, asyncio.Lock] = weakref.WeakKeyDictionary()


def _lock(rewards) -> asyncio.Lock:
    """One scoring at a time per reward service: a second request waits, then finds the scores cached."""
    lock = _locks.get(rewards)
    if lock is None:
        lock = _locks[rewards] = asyncio.Lock()
    return lock


async def score_judged(
    rewards, store, judgements: Sequence[Judgement], *, models: Sequence[str] | None = None, limit: int = SCORE_LIMIT
) -> dict[str, Any]:
    """Score, with each reward model (default: all the registry's), the judged answers it has not scored;
    at most `limit` answers per model. Writes the scores to the store batch by batch (an interrupted
    scoring keeps what it did) and returns what it did per model."""
    pairs, _ = judged_pairs(judgements)
    ids = sorted({rid for p in pairs for rid in (p.better, p.worse)})
    names = list(models) if models is not None else list(rewards.registry.reward_models)
    async with _lock(rewards):
        report = {name: await _score_model(rewards, store, name, ids, limit) for name in names}
    return {"object": "reward_scores", "models": report}


async def _score_model(rewards, store, name: str, ids: list[str], limit: int) -> dict[str, Any]:
    checkpoint = rewards.registry.reward_models[name].model
    cached = await asyncio.to_thread(store.cached_reward_scores, name, checkpoint, ids)
    missing = [gid for gid in ids if gid not in cached]
    inputs = await asyncio.to_thread(store.scoring_inputs, missing)
    # Scored when served, by this reward model: the same reading of the same answer.
    from_log = [
        (gid, i.reward_score, None)
        for gid, i in inputs.items()
        if i.reward_model == name and i.reward_score is not None
    ]
    await asyncio.to_thread(store.save_reward_scores, name, checkpoint, from_log)
    done = {gid for gid, _, _ in from_log}
    todo = [gid for gid in missing if gid in inputs and gid not in done]
    todo, later = todo[:limit], todo[limit:]
    scored = too_long = 0
    for start in range(0, len(todo), BATCH):
        batch = todo[start : start + BATCH]
        results = await _score_batch(rewards, name, batch, [(inputs[g].prompt, inputs[g].completion) for g in batch])
        await asyncio.to_thread(store.save_reward_scores, name, checkpoint, results)
        scored += sum(s is not None for _, s, _ in results)
        too_long += sum(s is None for _, s, _ in results)
    log.info("reward agreement: %s scored %d judged answers (%d from the log)", name, scored, len(from_log))
    return {
        "judged_answers": len(ids),
        "cached": len(cached),
        "from_log": len(from_log),
        "scored": scored,
        "too_long": too_long,
        "no_text": len(missing) - len(inputs),  # logged without text (prompt logging off)
        "remaining": len(later),
    }


async def _score_batch(rewards, name: str, batch: list[str], items: list) -> list[tuple[str, float | None, str | None]]:
    """(id, score, error) per answer; one too long for the reward model's context gets the reason."""
    from server.rewards import TooLong

    try:
        return [(gid, s, None) for gid, s in zip(batch, await rewards.score(name, items))]
    except TooLong:  # only some may be too long: score the rest one by one
        pass
    results: list[tuple[str, float | None, str | None]] = []
    for gid, item in zip(batch, items):
        try:
            results.append((gid, (await rewards.score(name, [item]))[0], None))
        except TooLong as exc:
            results.append((gid, None, f"{exc.tokens} tokens; the reward model's context is {exc.limit}"))
    return results
