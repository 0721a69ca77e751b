"""Made-up countries: names from syllables (never a real country or capital, nor containing one) with
invented facts. One seeded stream draws every name: the first `FICTIONAL_TRAIN` are the ones training
text asks about, the rest are held out for the eval (`models.demo.heldout`). Nothing here writes text."""

from __future__ import annotations

import random
from functools import cache

from models.demo.facts import Country, load_countries

# Fictional names: many, so "a name pre-training never stated facts about" and copying an unseen
# name into "I don't know a country called X." are learned as patterns, not memorised per name.
FICTIONAL_TRAIN = 600
# The training names and then the test split's 60 held-out ones come from one seeded stream
# (`drawn_fictional_countries`): changing this count changes the training countries' invented facts.
FICTIONAL_DRAWN = FICTIONAL_TRAIN + 60


_ONSETS = ["B", "D", "K", "L", "M", "N", "P", "R", "S", "T", "V", "Z", "Br", "Dr", "Gr", "Kr", "Tr", "Th", "Sk", "Qu"]
_VOWELS = ["a", "e", "i", "o", "u", "ae", "ei"]
_MIDDLES = ["l", "r", "n", "v", "d", "st", "nd", "rv", "lm", "sk", "z", "th"]
_ENDINGS = ["oria", "avia", "ania", "eria", "istan", "land", "ovia", "esia", "ica", "ador", "enia", "ura"]
_CITY_ENDINGS = ["grad", "polis", "ton", "vik", "heim", "ara", "ido", "mont", "burg", "essa"]
_LANG_SUFFIX = "ish"


def _pseudo_word(rng: random.Random, endings: list[str]) -> str:
    return rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_MIDDLES) + rng.choice(endings)


def new_names(rng: random.Random, count: int, taken: set[str], avoid: tuple[str, ...] = ()) -> list[str]:
    """`count` made-up country names, none in `taken` (lowercase; the new ones are added to it).

    A name is refused when it contains, or is contained in, a real country's name (so "Omania" cannot
    pass for Oman), a real capital or a name in `avoid` (lowercase)."""
    real_names = [n.lower() for c in load_countries() for n in (c.country, c.capital)] + list(avoid)
    names: list[str] = []
    while len(names) < count:
        name = _pseudo_word(rng, _ENDINGS)
        low = name.lower()
        if low in taken or any(r in low or low in r for r in real_names):
            continue
        taken.add(low)
        names.append(name)
    return names


def invent(name: str, rng: random.Random) -> Country:
    """A made-up country called `name` with invented facts."""
    return Country(
        country=name,
        capital=_pseudo_word(rng, _CITY_ENDINGS),
        continent=rng.choice(sorted({c.continent for c in load_countries()})),
        language=name.rstrip("aeiou") + _LANG_SUFFIX,
        currency=f"{name.lower().rstrip('aeiou')} crown",
        real=False,
    )


@cache
def drawn_fictional_countries() -> tuple[Country, ...]:
    """Every made-up country the seeded stream draws, in order: the first `FICTIONAL_TRAIN` are the
    training ones (`fictional_countries`); the rest are held out for evaluation (`models.demo.heldout`)
    and never used in training text. All names are drawn before any is invented facts, so the count
    drawn fixes the training countries' facts too."""
    rng = random.Random(7)
    names = new_names(rng, FICTIONAL_DRAWN, set())
    return tuple(invent(name, rng) for name in names)


def fictional_countries() -> tuple[Country, ...]:
    """The made-up countries training text asks about (never a real name, `new_names`)."""
    return drawn_fictional_countries()[:FICTIONAL_TRAIN]
