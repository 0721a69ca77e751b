"""The reward model against people (`server/reward_agreement.py`): on the real app over scripted engines
and scripted reward models — `rm` scores an answer by its length (it always prefers the longer one),
`rm_short` by minus its length — against constructed votes (blind arena votes and named preferences)
whose voters prefer the shorter or the longer answer, so every expected figure is known in advance.
Also the score cache (the GET never scores), the reward-hacking flag, and bad input."""

from __future__ import annotations

from dataclasses import replace

import pytest

from server.app import create_app
from server.reward_agreement import MIN_PAIRS, drop_p_value, judged_pairs, model_agreement, wilson
from server.rewards import RewardService
from server.settings import Settings
from server.store import BattleSide, Judgement, Store, utcnow
from tests.conftest import ready_client

REGISTRY = {
    "stages": {
        "base": {"model": "fake/base"},
        "sft": {"adapter": "fake/sft", "base": "base"},
        "rlhf": {"adapter": "fake/rlhf", "base": "sft"},
    },
    "reward_models": {
        "rm": {"model": "fake/rm-long", "description": "prefers the longer answer"},
        "rm_short": {"model": "fake/rm-short", "description": "prefers the shorter answer"},
    },
}
QUESTION = "What is the capital of Kenya?"
WORDS = {"base": "Nairobi.", "sft": "It is Nairobi.", "rlhf": "The capital of Kenya is, as you asked, Nairobi."}


class LengthRewardEngine:
    """Score = ± whitespace tokens of the rendered prompt + answer (the prompt is the same for a pair):
    + for a checkpoint named *long*, − for *short*. Counts the answers it scored."""

    max_model_len = 200

    def __init__(self, model: str, engine_args: dict):
        from server.fake_engine import FakeTokenizer

        self.tokenizer = FakeTokenizer()
        self.sign = 1 if "long" in model else -1
        self.scored = 0

    async def start(self) -> None:
        pass

    async def score(self, prompts: list[list[int]]) -> list[float]:
        self.scored += len(prompts)
        return [self.sign * len(ids) for ids in prompts]

    async def shutdown(self) -> None:
        pass


@pytest.fixture
def app_client(fake_pool_factory, store: Store, tmp_path):
    pool = fake_pool_factory(REGISTRY)
    engines: list[LengthRewardEngine] = []

    def factory(model: str, args: dict) -> LengthRewardEngine:
        engines.append(engine := LengthRewardEngine(model, args))
        return engine

    rewards = RewardService(pool.registry, factory=factory)
    app = create_app(Settings(data_dir=tmp_path), pool, store=store, with_ui=False, rewards=rewards)
    with ready_client(app, pool) as client:
        client.engines = engines
        yield client


def blind_vote(store: Store, a, b, winner: str, rater: str = "r") -> None:
    """An arena vote as the arena stores it: a battle with one turn, then the vote."""
    battle = store.open_battle(
        rater=rater, stage_a=a.stage, stage_b=b.stage, messages=a.messages, settings={"temperature": 0}
    )
    sides = [BattleSide(x.id, x.completion, "stop") for x in (a, b)]
    store.finish_turn(battle.id, user=None, a=sides[0], b=sides[1])
    store.vote(battle.id, winner, rater=rater)


def vote(store: Store, log_answer, n: int, stages: tuple[str, str], prefer: str, *, start: int = 0) -> None:
    """`n` judgements of `stages[0]`'s answer against `stages[1]`'s, half blind and half named, the
    voters preferring `prefer` ("shorter" or "longer"); sides alternate."""
    for i in range(start, start + n):
        q = f"{QUESTION} ({i})"
        x, y = (log_answer(q, WORDS[s], stage=s) for s in stages)
        first_longer = len(x.completion) > len(y.completion)
        winner = "a" if first_longer == (prefer == "longer") else "b"
        if i % 2:
            blind_vote(store, y, x, {"a": "b", "b": "a"}[winner])
        else:
            store.prefer([x.id, y.id], winner, rater="named")


def board(client, **params) -> dict:
    r = client.get("/v1/leaderboard", params={"bootstrap": 0, "votes": "all", **params})
    assert r.status_code == 200, r.text
    return r.json()


def score(client, **body) -> dict:
    r = client.post("/v1/leaderboard/reward_scores", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_judged_pairs_leave_ties_out_and_wilson_is_right():
    j = Judgement("j", "r", ["x", "y", "z"], ["sft", "rlhf", "base"], [[0, 1], [2]], utcnow())
    pairs, tied = judged_pairs([j, Judgement("k", "r", ["u", "v"], ["sft", "base"], [[0, 1]], utcnow())])
    assert tied == 2 and {(p.better, p.worse) for p in pairs} == {("x", "z"), ("y", "z")}
    lo, hi = wilson(0, 12)
    assert lo == 0 and hi == pytest.approx(0.2425, abs=1e-3)
    assert wilson(0, 0) is None
    # equal scores count half
    figures = model_agreement(pairs, {"x": 1.0, "y": 2.0, "z": 1.0}, {"sft": None, "rlhf": None, "base": None})
    assert figures["agreement"] == 0.75 and figures["pairs"] == 2
    # the drop's one-sided test: 30/40 → 15/40 is no noise; 30/40 → 28/40 may well be
    assert drop_p_value(30, 40, 15, 40) < 0.001 < 0.3 < drop_p_value(30, 40, 28, 40) < 0.5


def test_agreement_is_0_against_voters_who_prefer_shorter_and_1_for_a_model_that_agrees(app_client, store, log_answer):
    vote(store, log_answer, 12, ("sft", "rlhf"), prefer="shorter")
    a, b = log_answer("tie?", "x", stage="sft"), log_answer("tie?", "x y", stage="rlhf")
    store.prefer([a.id, b.id], "tie", rater="named")
    blind_vote(store, a, b, "both_bad")

    before = board(app_client)["reward_agreement"]
    assert before["judged_pairs"] == 12 and before["tied_pairs"] == 2
    assert before["models"]["rm"]["pairs"] == 0 and before["models"]["rm"]["unscored_answers"] == 24
    assert before["models"]["rm"]["agreement"] is None

    done = score(app_client)
    assert {m: (r["scored"], r["remaining"]) for m, r in done["models"].items()} == {"rm": (24, 0), "rm_short": (24, 0)}
    figures = board(app_client)["reward_agreement"]["models"]
    longer, shorter = figures["rm"], figures["rm_short"]
    assert (longer["agreement"], longer["pairs"], longer["unscored_pairs"]) == (0.0, 12, 0)
    assert longer["ci95"][0] == 0 and 0.2 < longer["ci95"][1] < 0.3  # Wilson, 0 of 12
    assert (shorter["agreement"], shorter["pairs"]) == (1.0, 12)
    assert longer["stages"]["sft"]["agreement"] == 0.0 and longer["stages"]["rlhf"]["pairs"] == 12
    assert longer["stages"]["rlhf"]["mean_reward"] > longer["stages"]["sft"]["mean_reward"]
    # blind only: the six arena votes
    blind = board(app_client, votes="blind")["reward_agreement"]["models"]["rm_short"]
    assert (blind["agreement"], blind["pairs"]) == (1.0, 6)


def test_scores_are_cached_and_the_get_never_scores(app_client, store, log_answer):
    vote(store, log_answer, 4, ("base", "sft"), prefer="longer")
    first = score(app_client, reward_models=["rm"], limit=5)["models"]
    assert list(first) == ["rm"] and first["rm"]["scored"] == 5 and first["rm"]["remaining"] == 3
    second = score(app_client, reward_models=["rm"])["models"]["rm"]
    assert (second["cached"], second["scored"], second["remaining"]) == (5, 3, 0)
    scored = sum(e.scored for e in app_client.engines)
    assert score(app_client, reward_models=["rm"])["models"]["rm"]["scored"] == 0
    board(app_client)
    board(app_client, votes="blind")
    assert sum(e.scored for e in app_client.engines) == scored  # reading scored nothing
    assert board(app_client)["reward_agreement"]["models"]["rm"]["agreement"] == 1.0


def test_an_answer_scored_when_served_is_not_scored_again(app_client, store, log_answer):
    served = log_answer(QUESTION, "short", stage="sft", id="unused")
    x = replace(served, id="chatcmpl-scored", reward_model="rm", reward_score=-5.0)  # as with `reward_model`
    store.record_generation(x)
    y = log_answer(QUESTION, "much longer answer", stage="rlhf")
    store.prefer([x.id, y.id], "b", rater="named")
    report = score(app_client, reward_models=["rm"])["models"]["rm"]
    assert (report["from_log"], report["scored"]) == (1, 1)
    assert sum(e.scored for e in app_client.engines) == 1


def test_reward_hacking_flag_set(app_client, store, log_answer):
    # sft writes longer than base and voters like it; rlhf writes longer still and voters do not
    vote(store, log_answer, 12, ("sft", "base"), prefer="longer")
    vote(store, log_answer, 12, ("rlhf", "sft"), prefer="shorter", start=100)
    score(app_client)
    models = board(app_client)["reward_agreement"]["models"]
    rlhf = models["rm"]["stages"]["rlhf"]
    assert rlhf["reward_hacking"] is True
    vs = rlhf["vs_parent"]
    # sft's own agreement (1.0) counts its pairs against base, not those against rlhf: rlhf's evidence
    assert (vs["parent"], vs["parent_pairs"], vs["parent_agreement"], rlhf["agreement"]) == ("sft", 12, 1.0, 0.0)
    assert vs["agreement_change"] == -1.0 and vs["reward_change"] == pytest.approx(
        rlhf["mean_reward"] - models["rm"]["stages"]["sft"]["mean_reward"], abs=1e-3
    )
    assert vs["reward_change"] > 0 and vs["significant"] and vs["p_value"] < 1e-4  # 12/12 → 0/12: no noise
    assert models["rm"]["stages"]["base"]["reward_hacking"] is None  # a root has no parent
    # sft: base met no stage outside sft's subtree, so there is nothing to compare it with
    assert models["rm"]["stages"]["sft"]["reward_hacking"] is None
    # the model that rewards shortness: rlhf's reward falls, so no flag, whatever the agreement does
    short = models["rm_short"]["stages"]["rlhf"]
    assert short["reward_hacking"] is False and short["vs_parent"]["reward_change"] < 0


def test_reward_hacking_flag_not_set_when_reward_and_people_rise_together(app_client, store, log_answer):
    vote(store, log_answer, 12, ("sft", "base"), prefer="longer")
    vote(store, log_answer, 12, ("rlhf", "sft"), prefer="longer", start=100)
    score(app_client, reward_models=["rm"])
    rlhf = board(app_client)["reward_agreement"]["models"]["rm"]["stages"]["rlhf"]
    assert rlhf["reward_hacking"] is False
    assert rlhf["vs_parent"]["reward_change"] > 0 and rlhf["vs_parent"]["agreement_change"] == 0
    assert rlhf["vs_parent"]["p_value"] == 1.0 and not rlhf["vs_parent"]["significant"]


def test_too_few_pairs_leave_the_flag_unknown(app_client, store, log_answer):
    vote(store, log_answer, MIN_PAIRS - 1, ("rlhf", "sft"), prefer="shorter")
    score(app_client)
    rlhf = board(app_client)["reward_agreement"]["models"]["rm"]["stages"]["rlhf"]
    assert rlhf["reward_hacking"] is None and "needs" in rlhf["vs_parent"]["why"]


def test_bad_input_is_a_400_naming_the_field_and_changes_nothing(app_client, store, log_answer):
    vote(store, log_answer, 2, ("sft", "rlhf"), prefer="shorter")
    for body, param in [
        ({"reward_models": ["nope"]}, "reward_models[0]"),
        ({"reward_models": "rm"}, "reward_models"),
        ({"reward_models": []}, "reward_models"),
        ({"limit": 0}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"votes": "all"}, "votes"),
    ]:
        r = app_client.post("/v1/leaderboard/reward_scores", json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (body, r.text)
    assert app_client.post("/v1/leaderboard/reward_scores?force=1").json()["error"]["param"] == "force"
    assert sum(e.scored for e in app_client.engines) == 0
    assert board(app_client)["reward_agreement"]["models"]["rm"]["unscored_answers"] == 4
    for params, param in [({"votes": "bogus"}, "votes"), ({"reward_model": "rm"}, "reward_model")]:
        r = app_client.get("/v1/leaderboard", params=params)
        assert r.status_code == 400 and r.json()["error"]["param"].endswith(param), r.text
