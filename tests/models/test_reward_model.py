"""reward_model: pairs from preferences, rankings and ratings; a held-out split by prompt; training with
TRL's RewardTrainer on a tiny checkpoint, registered atomically — or an error that changes nothing.

Real parts: a SQLite store filled through its public API, TRL on a random tiny checkpoint (its LoRA
adapter stage merged first), the registry file on disk. Serving the trained model: test_rewards_vllm.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from models.reward_model import (
    META_FILE,
    RewardPlan,
    build_reward_model,
    comparison_pairs,
    load_policy_as_classifier,
    pairwise_accuracy,
    sequence_scores,
    split_by_prompt,
)
from models.rounds import RoundError
from server.registry import load_registry
from server.store import Store
from tests.records import chat_record

_ids = itertools.count()
COUNTRIES = {
    "Kenya": "Nairobi",
    "France": "Paris",
    "Japan": "Tokyo",
    "Peru": "Lima",
    "Chile": "Santiago",
    "Spain": "Madrid",
    "Italy": "Rome",
    "Egypt": "Cairo",
    "Ghana": "Accra",
    "Nepal": "Kathmandu",
    "Cuba": "Havana",
    "Iran": "Tehran",
}


def answer(store: Store, question: str, text: str) -> str:
    record = chat_record(question, text, sampling={"temperature": 1.0})
    store.record_generation(record)
    return record.id


def fill(store: Store, countries: dict[str, str]) -> None:
    """Per country: a ranking of 4 answers (a tie in the middle) → 5 pairs, an A/B preference → 1 pair,
    and an up- and a down-rated answer → 1 pair. The preferred behaviour: name the capital in a sentence."""
    for country, capital in countries.items():
        q = f"What is the capital of {country}?"
        best = answer(store, q, f"The capital of {country} is {capital}.")
        mid1, mid2 = answer(store, q, capital), answer(store, q, f"{capital}, I think.")
        worst = answer(store, q, "Hello there, how are you today?")
        store.rank([best, mid1, mid2, worst], [[best], [mid1, mid2], [worst]], rater="r1")
        a, b = answer(store, q, f"It is {capital}."), answer(store, q, "I am a small model.")
        store.prefer([a, b], "b", rater="r1")  # b over a
        up, down = answer(store, q, f"{capital} is the capital of {country}."), answer(store, q, "Hello there.")
        store.rate(up, "up", rater="r1")
        store.rate(down, "down", rater="r1")


@pytest.fixture
def db(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'stagechat.db'}"
    store = Store(url)
    fill(store, COUNTRIES)
    store.close()
    return url


@pytest.fixture
def registry_file(tiny_family, tmp_path) -> Path:
    path = tmp_path / "stages.yaml"
    path.write_text(
        "# comments survive\n"
        "engine: {max_model_len: 512, dtype: float32}\n"
        "stages:\n"
        f"  base:\n    model: {tiny_family / 'base'}\n"
        f"  sft:\n    adapter: {tiny_family / 'lora'}\n    base: base\n"
    )
    return path


def test_pairs_come_from_rankings_preferences_and_ratings(db):
    store = Store(db)
    try:
        pairs = comparison_pairs(store)
    finally:
        store.close()
    by_source = {s: [p for p in pairs if p["source"] == s] for s in ("ranking", "preference", "ratings")}
    n = len(COUNTRIES)
    # a ranking [[best], [mid1, mid2], [worst]]: best>mid1, best>mid2, best>worst, mid1>worst, mid2>worst
    assert len(by_source["ranking"]) == 5 * n
    assert len(by_source["preference"]) == n and len(by_source["ratings"]) == n
    kenya = [p for p in by_source["ranking"] if "Kenya" in p["prompt"][0]["content"]]
    assert {(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in kenya} == {
        ("The capital of Kenya is Nairobi.", "Nairobi"),
        ("The capital of Kenya is Nairobi.", "Nairobi, I think."),
        ("The capital of Kenya is Nairobi.", "Hello there, how are you today?"),
        ("Nairobi", "Hello there, how are you today?"),
        ("Nairobi, I think.", "Hello there, how are you today?"),
    }
    pref = next(p for p in by_source["preference"] if "Kenya" in p["prompt"][0]["content"])
    assert (pref["chosen"][0]["content"], pref["rejected"][0]["content"]) == ("I am a small model.", "It is Nairobi.")
    assert all(p["chosen"][0]["role"] == "assistant" and p["prompt"][0]["role"] == "user" for p in pairs)


def test_held_out_split_is_by_prompt_and_at_least_a_tenth():
    pairs = [
        {"prompt": [{"role": "user", "content": f"q{i % 7}"}], "chosen": [], "rejected": [], "source": "x"}
        for i in range(50)
    ]
    train, held = split_by_prompt(pairs, seed=3)
    assert len(train) + len(held) == 50 and len(held) >= 5 and train
    key = lambda p: p["prompt"][0]["content"]  # noqa: E731
    assert not {key(p) for p in train} & {key(p) for p in held}
    with pytest.raises(RoundError, match="at least 2 prompts"):
        split_by_prompt(pairs[:1] * 20)


def test_too_few_pairs_changes_nothing(registry_file, tmp_path):
    url = f"sqlite:///{tmp_path / 'few.db'}"
    store = Store(url)
    fill(store, {"Kenya": "Nairobi"})  # 7 pairs
    store.close()
    before = registry_file.read_text()
    with pytest.raises(RoundError, match="only 7 comparison pairs"):
        build_reward_model(
            config=registry_file, from_stage="sft", name="rm", database_url=url, data_dir=tmp_path, min_pairs=10
        )
    assert registry_file.read_text() == before
    assert not (tmp_path / "reward_models").exists()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(from_stage="nope", name="rm"), "not a stage"),
        (dict(from_stage="sft", name="sft"), "already names"),
        (dict(from_stage="sft", name="bad name"), "use letters"),
    ],
)
def test_bad_names_change_nothing(registry_file, db, tmp_path, kwargs, message):
    before = registry_file.read_text()
    with pytest.raises(RoundError, match=message):
        build_reward_model(config=registry_file, database_url=db, data_dir=tmp_path, **kwargs)
    assert registry_file.read_text() == before


def test_trains_on_the_merged_adapter_stage_and_registers_the_reward_model(registry_file, db, tmp_path, capsys):
    result = build_reward_model(
        config=registry_file,
        from_stage="sft",
        name="rm",
        database_url=db,
        data_dir=tmp_path,
        plan=RewardPlan(steps=60, lr=1e-3, batch_size=8),
    )
    assert result.model_dir == tmp_path / "reward_models" / "rm"
    assert result.train_pairs + result.held_out_pairs == 7 * len(COUNTRIES)
    assert result.held_out_pairs >= 0.1 * 7 * len(COUNTRIES)
    meta = json.loads((result.model_dir / META_FILE).read_text())
    assert meta["held_out_accuracy"] == result.held_out_accuracy
    assert meta["sources"] == {"preference": 12, "ranking": 60, "ratings": 12}
    # The preferred behaviour is easy to see: a reward model that learnt anything ranks most held-out pairs right.
    assert result.held_out_accuracy >= 0.75, result.held_out_accuracy

    registry = load_registry(registry_file, data_dir=tmp_path)
    assert registry.reward_models["rm"].model == str(result.model_dir)
    assert registry_file.read_text().startswith("# comments survive\n")  # appended, not rewritten

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(result.model_dir)
    assert model.config.num_labels == 1 and model.config.architectures == ["LlamaForSequenceClassification"]
    tokenizer = AutoTokenizer.from_pretrained(result.model_dir)
    store = Store(db)
    try:
        _, held = split_by_prompt(comparison_pairs(store))
    finally:
        store.close()
    accuracy, judged = pairwise_accuracy(model, tokenizer, held, 256)
    assert judged == result.held_out_pairs and accuracy == pytest.approx(result.held_out_accuracy)

    with pytest.raises(RoundError, match="already names"):  # the name is now taken
        build_reward_model(config=registry_file, from_stage="sft", name="rm", database_url=db, data_dir=tmp_path)


def test_scores_in_padded_batches_equal_scores_one_at_a_time(tiny_family, tmp_path):
    import torch

    model, tokenizer = load_policy_as_classifier(str(tiny_family / "base"), None, tmp_path)
    sequences = [tokenizer.encode(text) for text in ("Hello", "The capital of Kenya is Nairobi.", "a b c d e f g h")]
    with torch.no_grad():
        one_at_a_time = [model(input_ids=torch.tensor([ids])).logits[0, 0].item() for ids in sequences]
    assert sequence_scores(model, sequences, tokenizer.pad_token_id, batch_size=2) == pytest.approx(
        one_at_a_time, abs=1e-5
    )
