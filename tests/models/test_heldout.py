"""The held-out evaluation material: it never appears in training text, the eval asks only it, and the
two splits share nothing (the training text itself: test_corpus.py)."""

from __future__ import annotations

import pytest

from models.demo import corpus, fictional, heldout, phrasings
from models.demo.build import SIZES, training_data

FULL = SIZES["full"]


@pytest.fixture(scope="module")
def training_texts() -> list[str]:
    """Every string the full build trains on: its data files' texts."""
    data = training_data(FULL)
    texts = data["prose"] + data["general"]
    for row in data["sft"]:
        texts += [m["content"] for m in row["prompt"] + row["completion"]]
    for row in data["rankings"]:
        texts += [m["content"] for m in row["prompt"]] + row["ranked"]
    for dialogue in data["draft"]:
        texts += [m["content"] for m in dialogue]
    return texts


def test_heldout_material_never_appears_in_training_text(training_texts):
    # Case-blind: "Name the language of Peru." would be a training phrasing ("Please name the language
    # of Peru.") with one word dropped.
    blob = "\n".join(training_texts).lower()
    strings = [s.lower() for s in heldout.heldout_strings()]
    # Each string's first 12 characters are searched once; only strings whose start occurs are searched whole.
    present = {p for p in {s[:12] for s in strings} if p in blob}
    leaked = [s for s in strings if s[:12] in present and s in blob]
    assert leaked == []


@pytest.mark.parametrize("split", sorted(heldout.SPLITS))
def test_eval_prompts_are_all_heldout_material(split):
    strings = set(heldout.heldout_strings())
    names = {f.country for f in heldout.split_fictional_countries(split)}
    examples = heldout.example_prompts() if split == "test" else []  # the README's five, test material
    for prompt in heldout.eval_prompts(split=split) + examples:
        for m in prompt.messages:
            if m["role"] == "user":
                assert m["content"] in strings, m["content"]
        if prompt.kind == "unknown":
            assert prompt.country.country in names


def test_dev_and_test_splits_share_no_material():
    # Choosing a recipe on dev must tell nothing about test: no phrasing nor fictional name in both.
    def user_turns(split):
        return {m["content"] for p in heldout.eval_prompts(split=split) for m in p.messages if m["role"] == "user"}

    assert not user_turns("dev") & user_turns("test")
    train, test = fictional.fictional_countries(), heldout.split_fictional_countries("test")
    dev = heldout.split_fictional_countries("dev")
    assert len(dev) == heldout.FICTIONAL_DEV
    earlier = [f.country.lower() for f in train + test]
    assert not [f for f in dev if any(e in f.country.lower() or f.country.lower() in e for e in earlier)]
    assert heldout.split_fictional_countries("test") == test


@pytest.mark.parametrize("split", sorted(heldout.SPLITS))
def test_heldout_templates_are_not_training_templates(split):
    material = heldout.SPLITS[split]
    for skill in corpus.SKILLS:
        assert not set(material.questions[skill]) & set(phrasings.TRAIN_QUESTIONS[skill])
        assert not set(material.skill_followups[skill]) & set(phrasings.TRAIN_SKILL_FOLLOWUPS[skill])
    assert not set(material.country_followups) & set(phrasings.TRAIN_COUNTRY_FOLLOWUPS)
    assert not set(material.greetings) & set(phrasings.TRAIN_GREETINGS)
    assert not set(material.off_topic) & set(phrasings.TRAIN_OFF_TOPIC)
    assert material.completions["capital"].endswith("the capital of {country} is")


def test_heldout_check_catches_a_leak():
    # The leak test above must be able to fail: a training text containing an eval prompt is found.
    leak = heldout.HELDOUT_QUESTIONS["currency"][0].format(country=corpus.load_countries()[0].country)
    assert leak in heldout.heldout_strings()
    assert heldout.split_fictional_countries("test")[0].country in heldout.heldout_strings()
    assert heldout.split_fictional_countries("dev")[0].country in heldout.heldout_strings()
    assert heldout.DEV_QUESTIONS["capital"][0].format(country="Peru") in heldout.heldout_strings()
