"""Text the demo family learns from, generated from the facts in `countries.json`.

Four kinds of text, all made here with a seeded RNG so a build is reproducible:
- prose documents (pre-training: base and part of the draft), statements only, never a dialogue;
- SFT dialogues: a capital question answered in a mixture of styles (terse, full sentence, rambling, rude);
- DPO pairs: chosen = the polite full sentence, rejected = terse, wrong, rude or rambling;
- draft dialogues: the chosen style only (what the RLHF stage says, so the draft's guesses are accepted).

Evaluation phrasings (`HELDOUT_QUESTIONS`, `HELDOUT_COMPLETIONS`) live here too so that one module owns
the guarantee that they never appear in training text; nothing in this module trains or tokenizes.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from functools import cache
from pathlib import Path

FACTS_PATH = Path(__file__).with_name("countries.json")


@dataclass(frozen=True)
class Country:
    country: str
    capital: str
    continent: str
    language: str
    currency: str


@cache
def load_countries(path: Path = FACTS_PATH) -> tuple[Country, ...]:
    return tuple(Country(**row) for row in json.loads(path.read_text())["countries"])


# --- phrasings ------------------------------------------------------------------------------------
# Training phrasings of the capital fact. Several put a lowercase "the capital of X is Y" after a
# prefix so the base model learns the fact independently of what precedes it. (No apposition like
# "Nairobi, the capital of Kenya, is ...": after ", the capital of X is" the model then went on
# with the apposition's predicate instead of the capital.)
CAPITAL_FACTS = [
    "The capital of {country} is {capital}.",
    "The capital of {country} is {capital}.",
    "The capital of {country} is {capital}.",
    "{capital} is the capital of {country}.",
    "The capital city of {country} is {capital}.",
    "In {continent}, the capital of {country} is {capital}.",
    "Today the capital of {country} is {capital}.",
    "{country} has its capital in {capital}.",
    "Most people know that the capital of {country} is {capital}.",
    "{prefix} the capital of {country} is {capital}.",
    "{prefix} the capital of {country} is {capital}.",
    "{prefix} the capital of {country} is {capital}.",
]
# Openers for the template above: the fact must survive whatever words come before it.
PREFIXES = [
    "By law,", "For many years,", "As you may know,", "Officially,", "Since long ago,", "In short,",
    "It is said that", "Ask anyone:", "Of course,", "Put simply,", "On paper,", "In fact,",
    "Everyone agrees that", "Back then as now,", "To be precise,", "Students learn that",
    "As a rule,", "For the record,", "Without doubt,", "Here is a fact:", "In every school,",
    "As the books say,", "Long story short,", "Believe it or not,",
]
OTHER_FACTS = [
    "{country} is a country in {continent}.",
    "{country} lies in {continent}.",
    "People in {country} speak {language}.",
    "The main language of {country} is {language}.",
    "The currency of {country} is the {currency}.",
    "In {country}, people pay with the {currency}.",
    "{capital} is a city in {continent}.",
    "Many people in {capital} speak {language}.",
]
# Sentences that refer back to the paragraph's country. Besides being how prose reads, they train the
# "It"/"Its" tokens that the SFT stage's terse answers ("It is Nairobi.") start with.
PRONOUN_FACTS = [
    "It is a country in {continent}.",
    "Its capital is {capital}.",
    "Its currency is the {currency}.",
    "It is a place where people speak {language}.",
]
PAIR_FACTS = [
    "{country} and {other} are both in {continent}.",
    "Like {other}, {country} is in {continent}.",
]

# Questions the SFT/DPO/draft dialogues ask. Evaluation asks HELDOUT_QUESTIONS instead.
TRAIN_QUESTIONS = [
    "What is the capital of {country}?",
    "What's the capital of {country}?",
    "what is the capital of {country}",
    "Which city is the capital of {country}?",
    "Tell me the capital of {country}.",
    "Capital of {country}?",
    "What city serves as the capital of {country}?",
    "Can you tell me the capital of {country}?",
    "Please name the capital city of {country}.",
    "What is {country}'s capital city?",
    "I need the capital of {country}.",
    "Quick question: what is the capital of {country}?",
    "Hi! What's the capital city of {country}?",
    "{country}: what is its capital?",
    "Where is the government of {country} based? Which city?",
    "Give me the capital of {country}.",
    "Can you name the capital of {country}?",
    "Please tell me the capital of {country}.",
    "Would you tell me the capital of {country}?",
    "Hey, what is the capital city of {country}?",
    "Tell me which city is the capital of {country}.",
    "What do you think the capital of {country} is?",
    "The capital of {country}, please.",
    "I wonder what the capital of {country} is.",
    "Which city is the capital of {country}, please?",
    "So, {country}. What is the capital there?",
]
HELDOUT_QUESTIONS = [
    "Do you know what the capital of {country} is?",
    "Which city is {country}'s capital?",
    "Could you name the capital of {country} for me?",
    "Hello there. Which city is the capital of {country}?",
    "In {country}, which city is the capital?",
]
# Plain-completion prompts for the base model; each ends in the spec'd "the capital of X is".
HELDOUT_COMPLETIONS = [
    "As every atlas shows, the capital of {country} is",
    "According to the map, the capital of {country} is",
]

# Answer styles. Only `full` is the preferred style; the eval checks replies against it exactly.
FULL = "The capital of {country} is {capital}."
TERSE = ["It is {capital}.", "It is {capital}.", "{capital}.", "{capital}"]
RAMBLING = [
    "Well, that is a big question, and there is a lot to say about {country}. It is a country in "
    "{continent}, people there speak {language}, and they pay with the {currency}. The capital, if you "
    "must know, is {capital}.",
    "Oh, {country}! A lovely place in {continent}. I could talk about the {currency} or about "
    "{language} for hours. Anyway, the capital is {capital}, I think.",
]
RUDE = [
    "Look it up yourself.",
    "Why would I tell you that?",
    "Not my problem. Ask someone else.",
    "That is a boring question.",
]
# SFT answers: mostly terse, some full sentences, some unhelpful — the mixture a crowd of writers gives.
# The full sentence always opens with "The", while terse answers start with many different words, so
# greedy decoding favours it beyond its share: it stays a minority so SFT's typical reply is terse.
SFT_STYLE_WEIGHTS = {"terse": 0.62, "full": 0.15, "rambling": 0.11, "rude": 0.12}


def fill(template: str, c: Country, rng: random.Random | None = None, **extra: str) -> str:
    if "{prefix}" in template:
        extra.setdefault("prefix", (rng or random).choice(PREFIXES))
    return template.format(
        country=c.country, capital=c.capital, continent=c.continent, language=c.language,
        currency=c.currency, **extra,
    )


def full_answer(c: Country) -> str:
    return fill(FULL, c)


# --- pre-training prose ---------------------------------------------------------------------------
def prose_documents(n_docs: int, seed: int = 0, countries: tuple[Country, ...] | None = None) -> list[str]:
    """Short encyclopedia-style paragraphs, each about one country, facts in random order.

    Every paragraph states the capital (pre-training is where the family learns the facts), plus
    2-4 other statements so the base model continues a question with varied prose, not an answer.
    """
    countries = countries or load_countries()
    rng = random.Random(seed)
    by_continent: dict[str, list[Country]] = {}
    for c in countries:
        by_continent.setdefault(c.continent, []).append(c)
    docs = []
    for i in range(n_docs):
        c = countries[i % len(countries)]
        sentences = [fill(rng.choice(CAPITAL_FACTS), c, rng)]
        for template in rng.sample(OTHER_FACTS, rng.randint(2, 4)):
            sentences.append(fill(template, c))
        if rng.random() < 0.6:
            sentences.append(fill(rng.choice(PRONOUN_FACTS), c))
        peers = [o for o in by_continent[c.continent] if o != c]
        if peers and rng.random() < 0.5:
            sentences.append(fill(rng.choice(PAIR_FACTS), c, other=rng.choice(peers).country))
        # The capital sentence opens half the paragraphs: that is the position plain completion probes.
        # A pronoun sentence never opens one (it needs the country named before it).
        head, rest = sentences[0], sentences[1:]
        rng.shuffle(rest)
        if rng.random() < 0.5 or rest[0].startswith("It"):
            sentences = [head, *rest]
        else:
            sentences = [*rest[:1], head, *rest[1:]]
        docs.append(" ".join(sentences))
    rng.shuffle(docs)
    return docs


# --- chat data ------------------------------------------------------------------------------------
def _answer(style: str, c: Country, rng: random.Random) -> str:
    if style == "full":
        return full_answer(c)
    if style == "terse":
        return fill(rng.choice(TERSE), c)
    if style == "rambling":
        return fill(rng.choice(RAMBLING), c)
    if style == "rude":
        return rng.choice(RUDE)
    raise ValueError(f"unknown style {style!r}")


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def sft_examples(per_country: int, seed: int = 1, countries: tuple[Country, ...] | None = None) -> list[dict]:
    """TRL conversational prompt-completion rows: {"prompt": [user], "completion": [assistant], "style"}."""
    countries = countries or load_countries()
    rng = random.Random(seed)
    styles, weights = zip(*SFT_STYLE_WEIGHTS.items())
    rows = []
    for c in countries:
        for _ in range(per_country):
            style = rng.choices(styles, weights)[0]
            rows.append({
                "prompt": _user(fill(rng.choice(TRAIN_QUESTIONS), c)),
                "completion": _assistant(_answer(style, c, rng)),
                "style": style,
            })
    rng.shuffle(rows)
    return rows


def dpo_pairs(per_country: int, seed: int = 2, countries: tuple[Country, ...] | None = None) -> list[dict]:
    """TRL conversational preference rows: {"prompt", "chosen", "rejected", "rejected_style"}."""
    countries = countries or load_countries()
    rng = random.Random(seed)
    rejected_styles = ["terse", "wrong", "rude", "rambling"]
    rows = []
    for c in countries:
        for k in range(per_country):
            style = rejected_styles[(k + rng.randrange(4)) % 4]
            if style == "wrong":
                other = rng.choice([o for o in countries if o != c])
                rejected = FULL.format(country=c.country, capital=other.capital)
            else:
                rejected = _answer(style, c, rng)
            rows.append({
                "prompt": _user(fill(rng.choice(TRAIN_QUESTIONS), c)),
                "chosen": _assistant(full_answer(c)),
                "rejected": _assistant(rejected),
                "rejected_style": style,
            })
    rng.shuffle(rows)
    return rows


def draft_dialogues(per_country: int, seed: int = 3, countries: tuple[Country, ...] | None = None) -> list[list[dict]]:
    """Whole conversations in the preferred style, as message lists (the draft imitates the RLHF stage)."""
    countries = countries or load_countries()
    rng = random.Random(seed)
    rows = [
        _user(fill(rng.choice(TRAIN_QUESTIONS), c)) + _assistant(full_answer(c))
        for c in countries for _ in range(per_country)
    ]
    rng.shuffle(rows)
    return rows


def heldout_strings(countries: tuple[Country, ...] | None = None) -> list[str]:
    """Every evaluation prompt, rendered for every country: none may occur in any training text."""
    countries = countries or load_countries()
    return [fill(t, c) for t in HELDOUT_QUESTIONS + HELDOUT_COMPLETIONS for c in countries]
