"""The facts the demo family is built from: 184 real countries (`countries.json`) with their capital,
language, currency and continent. Plain data; nothing here generates text."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

FACTS_PATH = Path(__file__).with_name("countries.json")
SKILLS = ("capital", "language", "currency", "continent")


@dataclass(frozen=True)
class Country:
    country: str
    capital: str
    continent: str
    language: str
    currency: str
    real: bool = True

    def fact(self, skill: str) -> str:
        return getattr(self, skill)


@cache
def load_countries(path: Path = FACTS_PATH) -> tuple[Country, ...]:
    return tuple(Country(**row) for row in json.loads(path.read_text())["countries"])
