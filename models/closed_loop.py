"""The closed loop as a function: sample a stage's answers over HTTP, rate them with a scripted rater,
train an RLHF round on the ratings, reload the running server, and measure the trait again.

The scripted rater prefers **short answers**: liked when at most `threshold` characters, where
`threshold` is the median length of the from-stage's answers (so the trait starts at ≈ 50% on any
family), disliked otherwise. It talks to a running `stagechat serve` through its HTTP API only
(answers, `POST /v1/feedback`, reload) and trains in this process; it starts no server itself.
Used by `tests/test_closed_loop.py` and `scripts/closed_loop.py`.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

COUNTRIES = [
    "Kenya",
    "France",
    "Japan",
    "Peru",
    "Chile",
    "Egypt",
    "Spain",
    "India",
    "Brazil",
    "Norway",
    "Canada",
    "Ghana",
    "Italy",
    "Nepal",
    "Cuba",
    "Iran",
]


def ask(country: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"What is the capital of {country}?"}]


@dataclass
class LoopReport:
    threshold: int
    before_rate: float
    after_rate: float
    n: int
    rated: int
    liked: int
    round_rows: int
    round_steps: int
    train_seconds: float
    loop_seconds: float
    reload: dict


def sample(client: httpx.Client, stage: str, n: int, max_tokens: int, seed: int) -> list[tuple[str, str]]:
    """(response id, text) of n answers per country from `stage`."""
    answers = []
    for i, country in enumerate(COUNTRIES):
        body = {
            "model": stage,
            "messages": ask(country),
            "n": n,
            "temperature": 1.0,
            "top_p": 1.0,
            "max_tokens": max_tokens,
            "seed": seed + i,
        }
        response = client.post("/v1/chat/completions", json=body)
        response.raise_for_status()
        data = response.json()
        answers += [
            (data["id"] if c["index"] == 0 else f"{data['id']}:{c['index']}", c["message"]["content"])
            for c in data["choices"]
        ]
    return answers


def run_loop(
    url: str,
    *,
    config: Path,
    data_dir: Path,
    stages: list[str],
    from_stage: str = "rlhf",
    name: str = "rlhf-2",
    n: int = 4,
    max_tokens: int = 24,
    steps: int = 60,
    lr: float = 5e-3,
    method: str = "dpo",
) -> LoopReport:
    from models.preference_round import RoundPlan, train_round

    began = time.monotonic()
    with httpx.Client(base_url=url, timeout=120) as client:
        before = [text for _, text in sample(client, from_stage, n, max_tokens, seed=1000)]
        threshold = int(statistics.median(len(t) for t in before))

        def liked(text: str) -> bool:
            return len(text) <= threshold

        rated = liked_count = 0
        for stage in stages:  # the rater sees answers of every stage of the family
            for response_id, text in sample(client, stage, n, max_tokens, seed=0):
                rating = "up" if liked(text) else "down"
                r = client.post("/v1/feedback", json={"response_id": response_id, "rating": rating})
                r.raise_for_status()
                rated += 1
                liked_count += rating == "up"

        result = train_round(
            config=config,
            from_stage=from_stage,
            name=name,
            method=method,
            database_url=f"sqlite:///{data_dir / 'stagechat.db'}",
            data_dir=data_dir,
            min_ratings=10,
            plan=RoundPlan(method=method, steps=steps, lr=lr, batch_size=8),
            server=url,
        )

        after = [text for _, text in sample(client, name, n, max_tokens, seed=1000)]
    return LoopReport(
        threshold=threshold,
        before_rate=sum(map(liked, before)) / len(before),
        after_rate=sum(map(liked, after)) / len(after),
        n=len(after),
        rated=rated,
        liked=liked_count,
        round_rows=result.rows,
        round_steps=result.steps,
        train_seconds=result.train_seconds,
        loop_seconds=time.monotonic() - began,
        reload=result.reloaded,
    )
