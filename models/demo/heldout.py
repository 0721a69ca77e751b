"""The demo family's held-out evaluation material: what `stagechat eval` asks, which no training text holds.

Two splits (`SPLITS`): "test" (`HELDOUT_*` phrasings and the held-out fictional names), what
`stagechat eval` reports and the targets are measured on, and "dev" (`DEV_*`, names of its own), what
a recipe change is chosen on. The phrasings, the prompts built from them (`eval_prompts`,
`example_prompts`) and every string that must never reach training text (`heldout_strings`) live here,
apart from the training text (`models.demo.corpus`): this module imports the corpus, and no build step
imports this module (tests/test_imports.py checks it; tests/models/test_heldout.py checks no string
leaks). Nothing here trains or tokenizes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cache

from models.demo import fictional
from models.demo.corpus import (
    SKILLS,
    Country,
    Prompt,
    assistant_turn,
    fill,
    followup,
    full_answer,
    load_countries,
    question,
    user_turn,
)

# --- phrasings: test split -------------------------------------------------------------------------
# Questions per skill, none a training phrasing (phrasings.TRAIN_QUESTIONS), even case-blind.
HELDOUT_QUESTIONS = {
    "capital": [
        "Do you know what the capital of {country} is?",
        "Which city is {country}'s capital?",
        "Could you name the capital of {country} for me?",
        "Hello there. Which city is the capital of {country}?",
    ],
    "language": [
        "Do you know which language people in {country} speak?",
        "Which language would I hear in {country}?",
        "Could you name the main language of {country} for me?",
        "Hello there. What language is used in {country}?",
    ],
    "currency": [
        "Do you know the currency of {country}?",
        "Which money would I need in {country}?",
        "Could you name the currency used in {country} for me?",
        "Hello there. What currency does {country} use?",
    ],
    "continent": [
        "Do you know which continent {country} is on?",
        "Which continent would I travel to for {country}?",
        "Could you name the continent of {country} for me?",
        "Hello there. Where is {country} located?",
    ],
}
HELDOUT_COUNTRY_FOLLOWUPS = ["Now tell me about {country}.", "Then {country}?", "Next one: {country}?"]
HELDOUT_SKILL_FOLLOWUPS = {
    "capital": ["Which city do they govern from?"],
    "language": ["Which language do people use there?"],
    "currency": ["What do they pay with over there?"],
    "continent": ["On what continent does it lie?"],
}
HELDOUT_GREETINGS = ["Hello! Who are you?", "Good evening! What do you do?", "Hey there, what are you for?"]
HELDOUT_OFF_TOPIC = ["Write a poem about autumn.", "Tell me a funny joke about cats.", "How do I fix my bike?"]
# Plain-completion prompts for the base model, one per skill; each ends where the fact comes next.
HELDOUT_COMPLETIONS = {
    "capital": "As every atlas shows, the capital of {country} is",
    "language": "According to the map, people in {country} speak",
    "currency": "As every traveller learns, the currency of {country} is the",
    "continent": "According to the map, {country} is a country in",
}

# --- phrasings: dev split --------------------------------------------------------------------------
# A second evaluation split, disjoint from training and from the held-out (test) material above: what
# a recipe change is chosen on, so the test figures `stagechat eval` reports are never tuned on.
DEV_QUESTIONS = {
    "capital": [
        "Any idea what the capital of {country} is?",
        "Which city holds the government of {country}?",
        "What would you say is the capital of {country}?",
    ],
    "language": [
        "Any idea what people speak in {country}?",
        "Which language is used most in {country}?",
        "What would you say people speak in {country}?",
    ],
    "currency": [
        "Any idea what the currency of {country} is?",
        "What money is used in {country}?",
        "What would you say is the currency of {country}?",
    ],
    "continent": [
        "Any idea which continent {country} is on?",
        "Which continent holds {country}?",
        "What would you say is the continent of {country}?",
    ],
}
DEV_COUNTRY_FOLLOWUPS = ["And {country}, then?", "What of {country}?", "Now {country}?"]
DEV_SKILL_FOLLOWUPS = {
    "capital": ["And which city is their capital?"],
    "language": ["What language is used there?"],
    "currency": ["What money is used there?"],
    "continent": ["Which continent is that in?"],
}
DEV_GREETINGS = ["Good afternoon!", "Hi! What are you good at?"]
DEV_OFF_TOPIC = ["Write a poem about the moon.", "Tell me a joke about birds."]
DEV_COMPLETIONS = {
    "capital": "As the old maps say, the capital of {country} is",
    "language": "As the old maps say, people in {country} speak",
    "currency": "As the old maps say, the currency of {country} is the",
    "continent": "As the old maps say, {country} is a country in",
}


@dataclass(frozen=True)
class EvalSplit:
    """One split's phrasings, none of which any training text contains (its fictional names:
    `split_fictional_countries`)."""

    questions: dict[str, list[str]]
    country_followups: list[str]
    skill_followups: dict[str, list[str]]
    greetings: list[str]
    off_topic: list[str]
    completions: dict[str, str]  # plain-completion prompts for full checkpoints, ending where the fact comes


SPLITS = {
    "test": EvalSplit(
        HELDOUT_QUESTIONS,
        HELDOUT_COUNTRY_FOLLOWUPS,
        HELDOUT_SKILL_FOLLOWUPS,
        HELDOUT_GREETINGS,
        HELDOUT_OFF_TOPIC,
        HELDOUT_COMPLETIONS,
    ),
    "dev": EvalSplit(
        DEV_QUESTIONS, DEV_COUNTRY_FOLLOWUPS, DEV_SKILL_FOLLOWUPS, DEV_GREETINGS, DEV_OFF_TOPIC, DEV_COMPLETIONS
    ),
}

FICTIONAL_DEV = 40


@cache
def split_fictional_countries(split: str) -> tuple[Country, ...]:
    """The fictional countries an evaluation split asks about: "test" is the held-out tail of the
    corpus's seeded stream (`fictional.drawn_fictional_countries`, after the training names); "dev" names
    come from their own generator (so the train and test names stay as they were), and none contains
    or is contained in a train or test name."""
    if split == "test":
        return fictional.drawn_fictional_countries()[fictional.FICTIONAL_TRAIN :]
    if split != "dev":
        raise ValueError(f"split must be one of {sorted(SPLITS)}, not {split!r}")
    earlier = tuple(f.country.lower() for f in fictional.fictional_countries() + split_fictional_countries("test"))
    names = fictional.new_names(random.Random(8), FICTIONAL_DEV, set(earlier), avoid=earlier)
    rng = random.Random(9)
    return tuple(fictional.invent(name, rng) for name in names)


# --- prompts ---------------------------------------------------------------------------------------
def eval_prompts(
    countries: tuple[Country, ...] | None = None, fictional: int | None = None, seed: int = 11, split: str = "test"
) -> list[Prompt]:
    """What `stagechat eval` asks: one evaluation split's phrasings and fictional names only.

    Per real country: each skill once (the split's templates in rotation) and two follow-ups (one that
    changes the country, one that changes the question); per fictional name of the split: two
    questions; every greeting and out-of-scope request of the split. `fictional` caps the fictional
    names (tests).
    """
    countries = countries or load_countries()
    material = SPLITS[split]
    rng = random.Random(seed)
    prompts = []
    for i, c in enumerate(countries):
        for j, skill in enumerate(SKILLS):
            template = material.questions[skill][(i + j) % len(material.questions[skill])]
            prompts.append(Prompt("fact", tuple(user_turn(fill(template, c))), c, skill))
        prompts.append(followup(c, c, SKILLS[i % 4], rng, phrasings=material))
        other = countries[(i + 1) % len(countries)]
        prompts.append(followup(other, c, SKILLS[(i + 2) % 4], rng, phrasings=material))
    for k, f in enumerate(split_fictional_countries(split)[:fictional]):
        for skill in (SKILLS[k % 4], SKILLS[(k + 1) % 4]):
            prompts.append(question(f, skill, rng, phrasings=material))
    prompts += [Prompt("greeting", tuple(user_turn(t))) for t in material.greetings]
    prompts += [Prompt("offtopic", tuple(user_turn(t))) for t in material.off_topic]
    return prompts


def example_prompts() -> list[Prompt]:
    """The same five prompts shown for every stage (docs/measurements.md, eval output): a fact, a follow-up, an unknown
    country, a greeting, an off-topic request — all held-out material."""
    by_name = {c.country: c for c in load_countries()}
    kenya, peru, brazil = by_name["Kenya"], by_name["Peru"], by_name["Brazil"]
    unknown = split_fictional_countries("test")[0]
    return [
        Prompt("fact", tuple(user_turn(fill(HELDOUT_QUESTIONS["language"][1], brazil))), brazil, "language"),
        Prompt(
            "followup",
            tuple(
                user_turn(fill(HELDOUT_QUESTIONS["capital"][2], kenya))
                + assistant_turn(full_answer(kenya))
                + user_turn(fill(HELDOUT_COUNTRY_FOLLOWUPS[1], peru))
            ),
            peru,
            "capital",
        ),
        Prompt("unknown", tuple(user_turn(fill(HELDOUT_QUESTIONS["capital"][0], unknown))), unknown, "capital"),
        Prompt("greeting", tuple(user_turn(HELDOUT_GREETINGS[0]))),
        Prompt("offtopic", tuple(user_turn(HELDOUT_OFF_TOPIC[0]))),
    ]


def heldout_strings(countries: tuple[Country, ...] | None = None) -> list[str]:
    """Every evaluation string (both splits) that must never occur in training text: question and
    completion phrasings rendered for every country, follow-ups, greetings, requests and fictional names."""
    countries = countries or load_countries()
    strings = []
    for name, material in SPLITS.items():
        names = split_fictional_countries(name)
        strings += [fill(t, c) for t in material.completions.values() for c in countries]
        strings += [fill(t, c) for ts in material.questions.values() for t in ts for c in countries + names]
        strings += [fill(t, c) for t in material.country_followups for c in countries]
        strings += [t for ts in material.skill_followups.values() for t in ts]
        strings += material.greetings + material.off_topic + [f.country for f in names]
    return strings
