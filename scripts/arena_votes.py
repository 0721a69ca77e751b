"""Figures for the blind arena, from scripted raters playing the real app on scripted engines.

1. `separation`: votes needed before base, sft and rlhf separate (no two 95% intervals overlap, in
   the right order), **blind** (the arena: the server draws the pair and the sides) against **named**
   (Compare as it was: a uniform pair, shown in registry order, base in column A). Each stage's
   engine answers with the rates `stagechat eval` measured on the demo family (as
   `scripts/leaderboard_votes.py`): base right 0.2% of the time, sft 98.8% tersely, rlhf 99.8% with
   the full sentence 98.6% of the time. The rater scores an answer 2 for the right capital + 1 for the
   full sentence and prefers the higher (equal: tie); with probability `--careless` they click
   without reading, and then favour the left column (A 60%, B 25%, tie 15%) — position bias, which
   the arena's random sides turn into noise and Compare's fixed order into a push toward base.
2. `style`: a campaign where one stage only writes longer (the same words, padded), judged by a
   rater who prefers length: raw Bradley–Terry against the style-controlled strengths.

    python scripts/arena_votes.py [--runs 3] [--careless 0.2] [--step 10] [--limit 600] [--json [FILE]]
"""

from __future__ import annotations

import argparse
import math
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench_common import add_json_argument, output

STAGES = ("base", "sft", "rlhf")
CORRECT = {"base": 0.002, "sft": 0.988, "rlhf": 0.998}
FULL = {"base": 0.0, "sft": 0.0, "rlhf": 0.986}
WRONG, TERSE, SENTENCE = "the of the and", "Nairobi.", "The capital of Kenya is Nairobi."
SCORE = {WRONG: 0, TERSE: 2, SENTENCE: 3}
ASK = [{"role": "user", "content": "What is the capital of Kenya?"}]


def app_with(engines: dict, folder: Path):
    from server.app import create_app
    from server.pool import EnginePool
    from server.registry import Registry
    from server.settings import Settings
    from server.store import Store

    registry = Registry.model_validate({"stages": {s: {"model": f"fake/{s}"} for s in engines}})
    pool = EnginePool(registry, lambda spec: engines[spec.model.split("/")[1]], max_live_engines=len(engines))
    store = Store(f"sqlite:///{folder / 'arena.db'}")
    return create_app(Settings(data_dir=folder), pool, store=store, with_ui=False), store


def rated_engine(stage: str, rng: random.Random):
    from server.fake_engine import ScriptedEngine

    class Rated(ScriptedEngine):
        async def generate(self, ids, settings, request_id, adapter=None):
            right = rng.random() < CORRECT[stage]
            self.script = (SENTENCE if rng.random() < FULL[stage] else TERSE) if right else WRONG
            async for batch in super().generate(ids, settings, request_id, adapter):
                yield batch

    return Rated(max_model_len=256)


def verdict(left: str, right: str, careless: float, rng: random.Random) -> str:
    if rng.random() < careless:
        return rng.choices(["a", "b", "tie"], weights=[0.60, 0.25, 0.15])[0]
    sa, sb = SCORE[left], SCORE[right]
    return "a" if sa > sb else "b" if sb > sa else "tie"


def separated_in_order(judgements) -> bool:
    from server.leaderboard import leaderboard

    board = leaderboard(judgements, bootstrap=100)
    return board.separated(STAGES) and [r.stage for r in board.stages] == ["rlhf", "sft", "base"]


def votes_to_separate(mode: str, careless: float, step: int, limit: int, seed: int) -> int | None:
    from starlette.testclient import TestClient

    rng = random.Random(seed)
    folder = Path(tempfile.mkdtemp(dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    app, store = app_with({s: rated_engine(s, rng) for s in STAGES}, folder)
    app.state.arena.rng = random.Random(seed)
    try:
        with TestClient(app) as client:
            while client.get("/ready").status_code != 200:
                time.sleep(0.01)
            for n in range(1, limit + 1):
                if mode == "blind":
                    battle = client.post("/v1/arena/battles", json={"messages": ASK}).json()
                    winner = verdict(battle["a"]["content"], battle["b"]["content"], careless, rng)
                    assert (
                        client.post(f"/v1/arena/battles/{battle['id']}/vote", json={"winner": winner}).status_code
                        == 200
                    )
                else:  # Compare as it was: a uniform pair, in registry order, names shown
                    pair = sorted(rng.sample(STAGES, 2), key=STAGES.index)
                    answers = [
                        client.post("/v1/chat/completions", json={"model": s, "messages": ASK}).json() for s in pair
                    ]
                    texts = [a["choices"][0]["message"]["content"] for a in answers]
                    winner = verdict(texts[0], texts[1], careless, rng)
                    assert (
                        client.post(
                            "/v1/preferences", json={"response_ids": [a["id"] for a in answers], "choice": winner}
                        ).status_code
                        == 200
                    )
                if n % step == 0:
                    judgements = list(store.iter_arena_judgements() if mode == "blind" else store.iter_judgements())
                    if separated_in_order(judgements):
                        return n
        return None
    finally:
        store.close()
        shutil.rmtree(folder, ignore_errors=True)


def length_engine(extra: int, rng: random.Random):
    from server.fake_engine import ScriptedEngine

    class Lengthy(ScriptedEngine):
        async def generate(self, ids, settings, request_id, adapter=None):
            self.script = "Nairobi." + " indeed" * rng.randint(extra, extra + 12)
            async for batch in super().generate(ids, settings, request_id, adapter):
                yield batch

    return Lengthy(max_model_len=256)


def style_campaign(votes: int, seed: int) -> dict:
    from starlette.testclient import TestClient

    rng = random.Random(seed)
    folder = Path(tempfile.mkdtemp(dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    app, store = app_with({"terse": length_engine(0, rng), "wordy": length_engine(8, rng)}, folder)
    app.state.arena.rng = random.Random(seed)
    try:
        with TestClient(app) as client:
            while client.get("/ready").status_code != 200:
                time.sleep(0.01)
            for _ in range(votes):
                battle = client.post("/v1/arena/battles", json={"messages": ASK, "max_tokens": 40}).json()
                la, lb = (len(battle[s]["content"].split()) for s in ("a", "b"))
                p_a = 1 / (1 + math.exp(-3 * (la - lb) / (la + lb)))
                client.post(
                    f"/v1/arena/battles/{battle['id']}/vote", json={"winner": "a" if rng.random() < p_a else "b"}
                )
            body = client.get("/v1/leaderboard", params={"bootstrap": 200}).json()
        return {
            "votes": votes,
            "raw": {r["stage"]: {"strength": r["strength"], "ci95": r["ci95"]} for r in body["data"]},
            "style_controlled": {
                r["stage"]: {"strength": r["strength"], "ci95": r["ci95"]} for r in body["style_controlled"]["data"]
            },
            "length_coefficient": body["style_controlled"]["coefficients"]["length"],
        }
    finally:
        store.close()
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--careless", type=float, default=0.2)
    parser.add_argument("--step", type=int, default=10)
    parser.add_argument("--limit", type=int, default=600)
    parser.add_argument("--style-votes", type=int, default=300)
    add_json_argument(parser)
    args = parser.parse_args()
    with output(args) as result:
        result.update(careless=args.careless, runs=args.runs)
        for mode in ("blind", "named"):
            found = [votes_to_separate(mode, args.careless, args.step, args.limit, seed) for seed in range(args.runs)]
            done = [f for f in found if f is not None]
            result[mode] = {
                "votes_to_separate": found,
                "median": statistics.median(done) if done else None,
                "never_within_limit": len(found) - len(done),
                "limit": args.limit,
            }
            print(
                f"{mode}: votes before base, sft and rlhf separate: {found} (median "
                f"{result[mode]['median']}, limit {args.limit})",
                flush=True,
            )
        result["style"] = style_campaign(args.style_votes, seed=0)
        print("style:", result["style"], flush=True)


if __name__ == "__main__":
    main()
