"""Lineage (`server/lineage.py`, `GET /v1/leaderboard/lineage`): a family's rounds in parent-before-child
order with human strength, mean reward and KL to the parent, each from its source — the round's record
(`stagechat_round.json`, `training_log.csv`), the demo manifest's evaluation, or missing, saying why —
on the real app over scripted engines and a scripted reward model (longer answers score higher)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.app import create_app
from server.lineage import families, round_record
from server.registry import Registry
from server.rewards import RewardService
from server.settings import Settings
from server.store import Store
from tests.conftest import ready_client
from tests.server.test_reward_agreement import LengthRewardEngine
from ui.lineage import agreement_rows, agreement_summary, lineage_figure, lineage_notes

# each stage writes longer than its parent, and voters agree that longer is better
WORDS = {
    "base": "Nairobi",
    "sft": "It is Nairobi.",
    "dpo": "The capital is Nairobi.",
    "rlhf": "The capital of Kenya is Nairobi.",
    "rlhf-2": "The capital of Kenya, as you asked, is Nairobi.",
}


def family(tmp: Path) -> dict:
    """A family on disk: rlhf with a full round record, rlhf-2 with only its training log, dpo with a
    record that logs no KL (the manifest's evaluation has one), sft and base with none."""
    root = tmp / "family"
    for name in WORDS:
        (root / name).mkdir(parents=True)
    figures = {"dpo": {"kl_to_sft": 3.29, "mean_reward": 0.95}, "base": {"mean_reward": 0.7, "kl_to_sft": None}}
    (root / "manifest.json").write_text(json.dumps({"eval": {"stages": figures}}))
    rlhf = {"method": "rloo", "from_stage": "sft", "reward_model": "rm", "reward_before": 0.1, "reward_after": 1.2}
    (root / "rlhf" / "stagechat_round.json").write_text(json.dumps({**rlhf, "final_kl": 0.17}))
    (root / "rlhf" / "training_log.csv").write_text(
        "step,reward,reward_std,kl,completion_length\n1,0.1,1,0.0,10\n2,0.6,1,0.09,11\n3,1.1,1,0.17,12\n"
    )
    (root / "rlhf-2" / "training_log.csv").write_text(
        "step,reward,reward_std,kl,completion_length\n1,1.0,1,0.01,10\n2,1.5,1,0.3,11\n"
    )
    (root / "dpo" / "stagechat_round.json").write_text(json.dumps({"method": "dpo", "from_stage": "sft", "loss": 0.4}))
    return {
        "stages": {
            "base": {"model": str(root / "base")},
            "sft": {"adapter": str(root / "sft"), "base": "base"},
            "dpo": {"adapter": str(root / "dpo"), "base": "sft"},
            "rlhf": {"adapter": str(root / "rlhf"), "base": "sft"},
            "rlhf-2": {"adapter": str(root / "rlhf-2"), "base": "rlhf"},
            "other": {"model": "fake/other"},
        },
        "reward_models": {"rm": {"model": "fake/rm-long"}},
    }


@pytest.fixture
def client(fake_pool_factory, store: Store, tmp_path):
    pool = fake_pool_factory(family(tmp_path))
    rewards = RewardService(pool.registry, factory=LengthRewardEngine)
    app = create_app(Settings(data_dir=tmp_path), pool, store=store, with_ui=False, rewards=rewards)
    with ready_client(app, pool) as client:
        yield client


def test_families_list_parents_before_children_in_registry_order(tmp_path):
    registry = Registry.model_validate(family(tmp_path))
    assert families(registry) == [["base", "sft", "dpo", "rlhf", "rlhf-2"], ["other"]]
    record = round_record(tmp_path / "family" / "rlhf-2")
    assert record["file"] == "training_log.csv" and record["final_kl"] == 0.3 and record["method"] is None
    assert [h["reward"] for h in record["history"]] == [1.0, 1.5]
    assert round_record(tmp_path / "family" / "sft") is None


def test_lineage_joins_strength_reward_and_kl(client, store: Store, log_answer, tmp_path):
    names = list(WORDS)
    for i in range(30):  # every pair of stages, the later (longer) one preferred
        for x in range(len(names)):
            for y in range(x + 1, len(names)):
                if (i + x + y) % 3:
                    continue
                a, b = (log_answer(f"q{i}-{x}-{y}", WORDS[names[s]], stage=names[s]) for s in (x, y))
                store.prefer([a.id, b.id], "b", rater="voter")
    assert client.post("/v1/leaderboard/reward_scores", json={}).status_code == 200
    r = client.get("/v1/leaderboard/lineage", params={"bootstrap": 50, "votes": "all"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [f["root"] for f in body["families"]] == ["base", "other"]
    rows = {row["stage"]: row for row in body["families"][0]["stages"]}
    assert list(rows) == ["base", "sft", "dpo", "rlhf", "rlhf-2"]
    assert [rows[s]["depth"] for s in rows] == [0, 1, 2, 2, 3]
    assert rows["rlhf-2"]["parent"] == "rlhf" and rows["base"]["parent"] is None
    # human strength rises along the lineage, with intervals around it
    assert rows["base"]["strength"] < rows["sft"]["strength"] < rows["rlhf"]["strength"] < rows["rlhf-2"]["strength"]
    for row in rows.values():
        assert row["ci95"][0] <= row["strength"] <= row["ci95"][1] and row["votes"] > 0
    # mean reward from the reward model's cached scores of the judged answers: longer is more
    reward = {s: rows[s]["rewards"]["rm"]["mean_reward"] for s in rows}
    assert reward["base"] < reward["sft"] < reward["dpo"] < reward["rlhf"] < reward["rlhf-2"]
    assert all(rows[s]["rewards"]["rm"]["agreement"] == 1.0 for s in rows)
    # KL to the parent, each from where it exists
    assert (rows["rlhf"]["kl_to_parent"], rows["rlhf"]["kl_source"].split(":")[0]) == (0.17, "stagechat_round.json")
    assert rows["rlhf-2"]["kl_to_parent"] == 0.3 and rows["rlhf-2"]["kl_source"].startswith("training_log.csv")
    assert rows["dpo"]["kl_to_parent"] == 3.29 and "manifest.json" in rows["dpo"]["kl_source"]
    assert rows["sft"]["kl_to_parent"] is None and "no round record" in rows["sft"]["kl_source"]
    assert rows["base"]["kl_to_parent"] is None and "root" in rows["base"]["kl_source"]
    assert rows["rlhf"]["round"]["reward_after"] == 1.2 and len(rows["rlhf"]["round"]["history"]) == 3
    assert rows["dpo"]["round"]["method"] == "dpo" and rows["dpo"]["round"]["history"] == []
    assert rows["dpo"]["eval"]["mean_reward"] == 0.95 and rows["base"]["eval"]["kl_to_sft"] is None
    assert rows["sft"]["eval"] is None  # the manifest has no figures for it
    other = body["families"][1]["stages"][0]
    assert other["strength"] is None and other["votes"] == 0 and other["round"] is None

    only = client.get("/v1/leaderboard/lineage", params={"family": "rlhf-2", "bootstrap": 0}).json()
    assert [f["root"] for f in only["families"]] == ["base"]

    # what the Leaderboard tab draws from these bodies (ui/lineage.py)
    figure = lineage_figure(only)
    assert len(figure.axes) == 3 and [t.get_text() for t in figure.axes[2].get_xticklabels()] == list(rows)
    figure.savefig(tmp_path / "lineage.png")
    agreement = client.get("/v1/leaderboard", params={"bootstrap": 0, "votes": "all"}).json()["reward_agreement"]
    table = agreement_rows(agreement)
    assert [r[:3] for r in table][:2] == [["rm", "base", "100%"], ["rm", "dpo", "100%"]]
    assert all(r[6] in ("–", f"no (vs {rows[r[1]]['parent']})") for r in table)  # no stage hacks here
    assert "orders 100% of" in agreement_summary(agreement) and "sft: KL missing" in lineage_notes(body)


def test_bad_lineage_queries_are_400_naming_the_field(client):
    for params, param in [
        ({"family": "nope"}, "family"),
        ({"stage": "sft"}, "stage"),
        ({"votes": "named"}, "votes"),
        ({"bootstrap": "-3"}, "bootstrap"),
        ({"since": "yesterday"}, "since"),
    ]:
        r = client.get("/v1/leaderboard/lineage", params=params)
        assert r.status_code == 400 and r.json()["error"]["param"].endswith(param), (params, r.text)
