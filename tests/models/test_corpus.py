"""The demo data: enough countries, well-formed chat rows, and evaluation phrasings kept out of training."""

from __future__ import annotations

import collections

import pytest

from models.demo import corpus
from models.demo.build import SIZES

FULL = SIZES["full"]


@pytest.fixture(scope="module")
def training_texts() -> list[str]:
    """Every string the full build trains on (the same generators and sizes as build_demo)."""
    texts = list(corpus.prose_documents(FULL.prose_docs))
    for row in corpus.sft_examples(FULL.sft_per_country):
        texts += [m["content"] for m in row["prompt"] + row["completion"]]
    for row in corpus.dpo_pairs(FULL.dpo_per_country):
        texts += [m["content"] for m in row["prompt"] + row["chosen"] + row["rejected"]]
    for dialogue in corpus.draft_dialogues(FULL.draft_per_country):
        texts += [m["content"] for m in dialogue]
    return texts


def test_at_least_150_countries_with_distinct_names_and_capitals():
    countries = corpus.load_countries()
    assert len(countries) >= 150
    assert len({c.country for c in countries}) == len(countries)
    assert len({c.capital for c in countries}) == len(countries)
    assert all(c.capital and c.continent and c.language and c.currency for c in countries)
    # A capital named like its country would make "the right capital is in the reply" trivially true.
    assert not [c for c in countries if c.capital == c.country]


def test_heldout_phrasings_never_appear_in_training_text(training_texts):
    blob = "\n".join(training_texts)
    leaked = [s for s in corpus.heldout_strings() if s in blob]
    assert leaked == []


def test_heldout_templates_are_not_training_templates():
    assert not set(corpus.HELDOUT_QUESTIONS) & set(corpus.TRAIN_QUESTIONS)
    assert all(t.endswith("the capital of {country} is") for t in corpus.HELDOUT_COMPLETIONS)
    training_templates = corpus.CAPITAL_FACTS + corpus.OTHER_FACTS + corpus.PRONOUN_FACTS + corpus.PAIR_FACTS
    prefixes = [t.split(" the capital of")[0] for t in corpus.HELDOUT_COMPLETIONS]
    assert not [p for p in prefixes if any(p in t for t in training_templates + corpus.PREFIXES)]


def test_heldout_check_catches_a_leak():
    # The leak test above must be able to fail: a training text containing an eval prompt is found.
    leak = corpus.HELDOUT_QUESTIONS[0].format(country=corpus.load_countries()[0].country)
    assert leak in corpus.heldout_strings()


def test_prose_states_every_capital_and_never_chats():
    countries = corpus.load_countries()
    docs = corpus.prose_documents(len(countries))
    blob = "\n".join(docs)
    assert not [c for c in countries if c.capital not in blob]
    capital_facts = [corpus.fill(t, c, prefix="") for c in countries for t in corpus.CAPITAL_FACTS]
    stems = {f.strip().removesuffix(".").split(", the capital")[0] for f in capital_facts}
    assert all(any(stem in doc for stem in stems) for doc in docs)
    assert not [d for d in docs if "?" in d or "<|" in d]


def test_sft_rows_mix_styles_and_terse_dominates():
    rows = corpus.sft_examples(4)
    styles = collections.Counter(r["style"] for r in rows)
    assert set(styles) == {"terse", "full", "rambling", "rude"}
    assert styles["terse"] > len(rows) / 2 > styles["full"]
    by_country = {c.country: c for c in corpus.load_countries()}
    for row in rows:
        (user,), (assistant,) = row["prompt"], row["completion"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        country = next(n for n in sorted(by_country, key=len, reverse=True) if n in user["content"])
        c = by_country[country]
        if row["style"] == "full":
            assert assistant["content"] == corpus.full_answer(c)
        elif row["style"] == "rude":
            assert c.capital not in assistant["content"]
        else:
            assert c.capital in assistant["content"] and assistant["content"] != corpus.full_answer(c)


def test_dpo_pairs_prefer_the_full_sentence_over_every_rejected_style():
    rows = corpus.dpo_pairs(4)
    assert collections.Counter(r["rejected_style"] for r in rows).keys() == {"terse", "wrong", "rude", "rambling"}
    capitals = {c.capital for c in corpus.load_countries()}
    for row in rows:
        chosen, rejected = row["chosen"][0]["content"], row["rejected"][0]["content"]
        assert row["chosen"][0]["role"] == row["rejected"][0]["role"] == "assistant"
        assert chosen.startswith("The capital of ") and chosen != rejected
        answer = chosen.removesuffix(".").split(" is ")[-1]
        assert answer in capitals
        if row["rejected_style"] == "wrong":
            wrong = rejected.removesuffix(".").split(" is ")[-1]
            assert wrong in capitals and wrong != answer


def test_generation_is_reproducible():
    assert corpus.prose_documents(50) == corpus.prose_documents(50)
    assert corpus.dpo_pairs(1) == corpus.dpo_pairs(1)
