"""The reward model's comparisons on held-out questions (`models.rm_eval`), on a tiny random classifier."""

from __future__ import annotations

import random

import pytest

from models.demo.corpus import full_answer, load_countries
from models.demo.heldout import eval_prompts
from models.rm_eval import COMPARISONS, missed_targets, reward_model_comparisons, rivals


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory):
    from models.reward_model import load_policy_as_classifier
    from models.tiny import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("rm")
    make_tiny_checkpoint(root / "base")
    model, tokenizer = load_policy_as_classifier(str(root / "base"), None, root / "scratch")
    model.save_pretrained(root / "rm")
    tokenizer.save_pretrained(root / "rm")
    return root / "rm"


def test_each_rival_is_the_answer_its_comparison_names():
    countries = load_countries()
    prompt = next(p for p in eval_prompts(split="dev") if p.kind == "fact" and p.skill == "capital")
    c = prompt.country
    named = rivals(prompt, random.Random(0), countries)
    assert set(named) == set(COMPARISONS)
    assert c.capital in named["terse"] and named["terse"] != full_answer(c, "capital")
    assert named["i_dont_know"] == f"I don't know a country called {c.country}."
    assert c.country not in named["another_country"] and named["another_country"].startswith("The capital of ")
    assert named["wrong_fact"].startswith(f"The capital of {c.country} is ") and c.capital not in named["wrong_fact"]
    assert c.country in named["another_question"] and not named["another_question"].startswith("The capital")


def test_comparisons_are_shares_of_the_split_real_questions(tiny_rm):
    figures = reward_model_comparisons(tiny_rm, split="dev", every=40)
    real = [p for p in eval_prompts(split="dev") if p.kind in ("fact", "followup") and p.country.real]
    assert figures["questions"] == len(real[::40])
    for name in COMPARISONS:
        assert 0.0 <= figures[name] <= 1.0
        wins = figures[name] * figures["questions"]
        assert wins == pytest.approx(round(wins), abs=0.01)  # a share of whole questions


def test_missed_targets_name_each_comparison_under_the_bar():
    comparisons = {"rm": {**dict.fromkeys(COMPARISONS, 0.9), "another_question": 0.48, "questions": 10}}
    assert missed_targets(comparisons) == ["rm.another_question = 0.48 < 0.8"]
