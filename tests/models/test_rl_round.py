"""rl_round: the RLOO round's refusals change nothing; prompts come from the store or a file and must fit.

The round itself (TRL's RLOOTrainer against a reward model, registered and served without a restart)
runs end to end in tests/server/test_rewards_vllm.py, where a server is already up.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.rl_round import RLPlan, fitting, load_prompts, train_rl_round
from models.rounds import RoundError
from server.store import Store
from tests.records import chat_record


@pytest.fixture
def registry_file(tiny_family, tmp_path) -> Path:
    (tmp_path / "rm").mkdir()  # registry paths must exist; the refusals come before it is read
    path = tmp_path / "stages.yaml"
    path.write_text(
        "stages:\n"
        f"  base:\n    model: {tiny_family / 'base'}\n"
        f"  sft:\n    adapter: {tiny_family / 'lora'}\n    base: base\n"
        f"reward_models:\n  rm:\n    model: {tmp_path / 'rm'}\n"
    )
    return path


def log(store: Store, question: str, stage: str = "sft") -> None:
    store.record_generation(chat_record(question, "x", stage=stage, client_id="a"))


def test_prompts_from_the_store_are_distinct_chat_prompts(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    store = Store(url)
    log(store, "Capital of Kenya?")
    log(store, "Capital of Kenya?", stage="base")  # same prompt, another stage: once
    log(store, "Capital of Peru?")
    store.close()
    assert load_prompts(url, None) == [
        [{"role": "user", "content": "Capital of Kenya?"}],
        [{"role": "user", "content": "Capital of Peru?"}],
    ]


def test_prompts_file_forms_and_errors(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('"Hi?"\n\n{"prompt": [{"role": "user", "content": "A?"}]}\n[{"role": "user", "content": "B?"}]\n')
    assert [p[-1]["content"] for p in load_prompts("sqlite://", path)] == ["Hi?", "A?", "B?"]
    path.write_text('{"nothing": 1}\n')
    with pytest.raises(RoundError, match="p.jsonl:1"):
        load_prompts("sqlite://", path)


def test_prompts_that_leave_no_room_for_the_answer_are_left_out(tiny_family):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_family / "base")
    short, long = [{"role": "user", "content": "Hi"}], [{"role": "user", "content": "Hello there " * 600}]
    assert fitting(tokenizer, [short, long], context=512, answer_tokens=48) == [short]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(reward_model=None), "needs --reward-model"),
        (dict(reward_model="nope"), "not under `reward_models:`"),
        (dict(reward_model="rm", name="sft"), "already exists"),
        (dict(reward_model="rm", from_stage="nope"), "not a stage"),
        (dict(reward_model="rm", plan=RLPlan(kl_coef=-0.1)), "--kl-coef"),
        (dict(reward_model="rm", plan=RLPlan(steps=0)), "--steps"),
    ],
)
def test_refusals_change_nothing(registry_file, tmp_path, kwargs, message):
    before = registry_file.read_text()
    args = (
        dict(
            config=registry_file,
            from_stage="sft",
            name="rl",
            database_url=f"sqlite:///{tmp_path / 's.db'}",
            data_dir=tmp_path,
        )
        | kwargs
    )
    with pytest.raises(RoundError, match=message):
        train_rl_round(**args)
    assert registry_file.read_text() == before
    assert not (tmp_path / "rounds").exists()


def test_too_few_prompts_changes_nothing(registry_file, tmp_path, tiny_family):
    import shutil

    shutil.rmtree(tmp_path / "rm")
    shutil.copytree(tiny_family / "base", tmp_path / "rm")  # a config for the context length
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps("Only one?") + "\n")
    before = registry_file.read_text()
    with pytest.raises(RoundError, match="only 1 usable prompts"):
        train_rl_round(
            config=registry_file,
            from_stage="sft",
            name="rl",
            reward_model="rm",
            database_url="sqlite://",
            data_dir=tmp_path,
            prompts_file=prompts,
        )
    assert registry_file.read_text() == before and not (tmp_path / "rounds").exists()
