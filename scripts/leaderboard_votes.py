"""How many votes the leaderboard needs before the 95% intervals of base, sft and rlhf separate.

A statistically faithful simulation, not a live run: each stage's answer to a capital question is
drawn with the rates `stagechat eval` measured on the demo family (docs/measurements.md: base answers correctly
0.2% of the time, sft 98.8% tersely, rlhf 99.8% with the preferred full sentence 98.6% of the
time). A scripted rater scores an answer 2 for the right capital + 1 for the preferred style and
prefers the higher score (equal: tie); with probability `--noise` the rater instead answers at
random (a, b or tie), as careless human raters do. Votes are A/B preferences between a random pair
of stages (Chatbot Arena style) or, with `--k 3`, rankings of all three. After every `--step` votes
the real leaderboard code (`server.leaderboard`) fits Bradley–Terry with bootstrap intervals; the
figure is the first vote count at which no two stages' intervals overlap, over `--runs` runs.

    python scripts/leaderboard_votes.py [--noise 0.2] [--k 2] [--runs 10] [--json [FILE]]
"""

from __future__ import annotations

import argparse
import random
import statistics
from datetime import datetime, timezone

from bench_common import add_json_argument, output

STAGES = ("base", "sft", "rlhf")
CORRECT = {"base": 0.002, "sft": 0.988, "rlhf": 0.998}
PREFERRED_STYLE = {"base": 0.0, "sft": 0.0, "rlhf": 0.986}


def answer_score(stage: str, rng: random.Random) -> int:
    return 2 * (rng.random() < CORRECT[stage]) + (rng.random() < PREFERRED_STYLE[stage])


def vote(n: int, k: int, noise: float, rng: random.Random):
    from server.store import Judgement

    stages = list(STAGES) if k == 3 else rng.sample(STAGES, 2)
    rng.shuffle(stages)
    if rng.random() < noise:  # a careless rater: any order, ties included
        scores = [rng.randrange(3) for _ in stages]
    else:
        scores = [answer_score(s, rng) for s in stages]
    groups: dict[int, list[int]] = {}
    for i, score in enumerate(scores):
        groups.setdefault(score, []).append(i)
    return Judgement(
        f"v{n}",
        f"rater{n % 7}",
        [f"r{n}-{i}" for i in range(len(stages))],
        stages,
        [groups[s] for s in sorted(groups, reverse=True)],
        datetime.now(timezone.utc),
    )


def votes_to_separate(k: int, noise: float, step: int, limit: int, bootstrap: int, seed: int) -> int | None:
    from server.leaderboard import leaderboard

    rng = random.Random(seed)
    votes = []
    while len(votes) < limit:
        votes += [vote(len(votes) + i, k, noise, rng) for i in range(step)]
        if leaderboard(votes, bootstrap=bootstrap, seed=seed).separated(STAGES):
            return len(votes)
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--noise", type=float, default=0.2)
    p.add_argument("--k", type=int, choices=[2, 3], default=2)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--step", type=int, default=5)
    p.add_argument("--limit", type=int, default=2000)
    p.add_argument("--bootstrap", type=int, default=200)
    add_json_argument(p)
    args = p.parse_args()
    with output(args) as figures:
        needed = [
            votes_to_separate(args.k, args.noise, args.step, args.limit, args.bootstrap, seed)
            for seed in range(args.runs)
        ]
        found = sorted(n for n in needed if n is not None)
        kind = "A/B preferences" if args.k == 2 else "rankings of all three"
        figures.update(
            votes=kind,
            noise=args.noise,
            runs=args.runs,
            bootstrap=args.bootstrap,
            limit=args.limit,
            votes_to_separate=needed,
            median=statistics.median(found) if found else None,
            min=found[0] if found else None,
            max=found[-1] if found else None,
            not_separated_runs=len(needed) - len(found),
        )
        print(
            f"{kind}, rater noise {args.noise:.0%}, {args.runs} runs, bootstrap {args.bootstrap}: votes until the "
            f"95% intervals of base, sft and rlhf separate: median {statistics.median(found) if found else '-'}, "
            f"min {found[0] if found else '-'}, max {found[-1] if found else '-'}"
            f"{f', not within {args.limit} in {len(needed) - len(found)} runs' if len(found) < len(needed) else ''}"
        )


if __name__ == "__main__":
    main()
