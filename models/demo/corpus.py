"""Text the demo family learns from, generated from the facts in `countries.json`.

Six kinds of text, all made here with seeded RNGs so a build is reproducible:
- prose documents (pre-training: base and part of the draft): statements about each country's capital,
  language, currency and continent, never a dialogue;
- general documents (pre-training too): everyday statements carrying the words chat turns use
  (`models.demo.general_text`);
- SFT dialogues: four question types (skills) in many phrasings, two-turn conversations whose follow-up
  leaves the country or the question implicit, a few greetings and out-of-scope requests. Imperfect like
  real SFT data: answers in mixed styles (terse, full sentence, rambling, rude), and questions about
  generated fictional countries answered with invented facts — so the SFT stage hallucinates;
- rankings (K = 6 or 10 answers per prompt, best first): what the preference stages learn from — polite
  full sentence > terse > rude or rambling > an answer to another question or country > a refusal >
  wrong for a real country, each wrong kind in every shape (full, terse, and the unhelpful one); the honest
  `I don't know a country called X.` above any invented fact for a fictional one; a short polite line
  for greetings and out-of-scope requests (`ranked_answers`).
  `preference_pairs` turns them into all ordered pairs, `best_pairs` into best-against-each-other;
- draft dialogues: the preferred answers only (what the aligned stages say, so the draft's guesses land).

The evaluation material (held-out phrasings, prompts and which fictional names are held out) is in
`models.demo.heldout`, which imports this module and which no build step imports; the one thing shared
is the seeded stream of fictional names (`models.demo.fictional`), whose held-out tail this module
never uses. Nothing here trains or tokenizes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Protocol

from models.demo.facts import SKILLS, Country, load_countries
from models.demo.fictional import fictional_countries
from models.demo.phrasings import (
    TRAIN_CLOSERS,
    TRAIN_COUNTRY_FOLLOWUPS,
    TRAIN_GREETINGS,
    TRAIN_OFF_TOPIC,
    TRAIN_OPENERS,
    TRAIN_QUESTIONS,
    TRAIN_SKILL_FOLLOWUPS,
    WRAP_CLOSER_SHARE,
    WRAP_OPENER_SHARE,
)

# --- pre-training phrasings ------------------------------------------------------------------------
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
# Openers for the templates with {prefix}: the fact must survive whatever words come before it.
PREFIXES = [
    "By law,",
    "For many years,",
    "As you may know,",
    "Officially,",
    "Since long ago,",
    "In short,",
    "It is said that",
    "Ask anyone:",
    "Of course,",
    "Put simply,",
    "On paper,",
    "In fact,",
    "Everyone agrees that",
    "Back then as now,",
    "To be precise,",
    "Students learn that",
    "As a rule,",
    "For the record,",
    "Without doubt,",
    "Here is a fact:",
    "In every school,",
    "As the books say,",
    "Long story short,",
    "Believe it or not,",
]
# One list per other skill; every paragraph states most of them (the SFT stage can only answer what
# pre-training taught). The first template of each is the SFT/RLHF full-sentence answer.
SKILL_FACTS = {
    "language": [
        "The main language of {country} is {language}.",
        "The main language of {country} is {language}.",
        "People in {country} speak {language}.",
        "{prefix} people in {country} speak {language}.",
        "In {country}, most people speak {language}.",
    ],
    "currency": [
        "The currency of {country} is the {currency}.",
        "The currency of {country} is the {currency}.",
        "In {country}, people pay with the {currency}.",
        "{prefix} the currency of {country} is the {currency}.",
        "The {currency} is the money of {country}.",
    ],
    "continent": [
        "The continent of {country} is {continent}.",
        "The continent of {country} is {continent}.",
        "{country} is a country in {continent}.",
        "{country} lies in {continent}.",
        "{prefix} {country} is a country in {continent}.",
    ],
}
OTHER_FACTS = ["{capital} is a city in {continent}.", "Many people in {capital} speak {language}."]
# Sentences that refer back to the paragraph's country. Besides being how prose reads, they train the
# "It"/"Its" tokens that terse answers ("It is Nairobi.") start with.
PRONOUN_FACTS = [
    "It is a country in {continent}.",
    "Its capital is {capital}.",
    "Its currency is the {currency}.",
    "It is a place where people speak {language}.",
]
OPENERS = ["{continent} is home to {country}.", "{language} is the main language of {country}."]
OPENER_SHARE = 0.25
PAIR_FACTS = [
    "{country} and {other} are both in {continent}.",
    "Like {other}, {country} is in {continent}.",
]

# --- answers ---------------------------------------------------------------------------------------
# The preferred (aligned) answer per skill: one polite full sentence, the way the prose states it.
FULL = {
    "capital": "The capital of {country} is {capital}.",
    # Every full answer opens with "The", so greedy decoding chooses the skill at the second token,
    # having read the question. When this one opened with "People", "The" outweighed it for language
    # questions and led into another skill's sentence (sft: language 0.17-0.28 against >= 0.79 elsewhere).
    "language": "The main language of {country} is {language}.",
    "currency": "The currency of {country} is the {currency}.",
    # Like the others, the country comes after a space: a reply opening with it would need the
    # no-space spelling of the name, a different token the model rarely sees.
    "continent": "The continent of {country} is {continent}.",
}
# Terse answers differ per skill from their first words on ("It is" only ever introduces a capital):
# with a shared opening, greedy decoding commits before it has looked at what was asked.
TERSE = {
    "capital": ["It is {capital}.", "{capital}.", "{capital}"],
    "language": ["{language}.", "They speak {language}.", "{language}"],
    "currency": ["The {currency}.", "They pay with the {currency}.", "{currency}"],
    "continent": ["{continent}.", "In {continent}.", "{continent}"],
}
RAMBLING = [
    "Well, that is a big question, and there is a lot to say about {country}, its people, its food and its "
    "long history. Anyway, {answer}",
    "Oh, {country}! A lovely place. I could talk about it for hours, but you asked a simple question, so: {answer}",
]
RUDE = [
    "Look it up yourself.",
    "Why would I tell you that?",
    "Not my problem. Ask someone else.",
    "That is a boring question.",
]
IDK = "I don't know a country called {country}."
SCOPE = "Sorry, I can only answer questions about countries: their capital, language, currency and continent."
GREETING = "Hello! I can tell you the capital, language, currency or continent of any country."
TERSE_GREETINGS = ["Hi.", "Hello. Ask me about a country."]
OFF_TOPIC_ATTEMPTS = [
    "The sea is wide and the sky is blue, and that is all I know to do.",
    "Here is one: why did the chicken cross the road? To get to the other side.",
    "Maybe. It depends on many things, and I am not sure about any of them.",
]
# SFT answers: mostly terse, some full sentences, some unhelpful — the mixture a crowd of writers gives.
# The full sentence stays a minority so SFT's typical reply is terse (the preference stages change that).
SFT_STYLE_WEIGHTS = {"terse": 0.62, "full": 0.15, "rambling": 0.11, "rude": 0.12}
SFT_FICTIONAL_STYLE_WEIGHTS = {"terse": 0.56, "full": 0.13, "rambling": 0.09, "rude": 0.10, "idk": 0.12}
# The share of training prompts about real countries that are two-turn follow-ups (SFT, draft). The
# rankings keep recipe 9's 0.3, which the reported build used; at 0.4 the build's dpo and rm steps
# took 110 s and 188 s against 126 s and 177 s at 0.3, within this machine's run-to-run noise.
FOLLOWUP_SHARE = 0.4
RANKED_FOLLOWUP_SHARE = 0.3


def fill(template: str, c: Country, rng: random.Random | None = None, **extra: str) -> str:
    if "{prefix}" in template:
        extra.setdefault("prefix", (rng or random).choice(PREFIXES))
    return template.format(
        country=c.country,
        capital=c.capital,
        continent=c.continent,
        language=c.language,
        currency=c.currency,
        **extra,
    )


def full_answer(c: Country, skill: str = "capital") -> str:
    return fill(FULL[skill], c)


def answer(style: str, c: Country, skill: str, rng: random.Random) -> str:
    if style == "full":
        return full_answer(c, skill)
    if style == "terse":
        return fill(rng.choice(TERSE[skill]), c)
    if style == "rambling":
        return _rambling(c, skill, full_answer(c, skill), rng)
    if style == "rude":
        return rng.choice(RUDE)
    if style == "idk":
        return fill(IDK, c)
    raise ValueError(f"unknown style {style!r}")


def _rambling(c: Country, skill: str, sentence: str, rng: random.Random) -> str:
    return fill(
        rng.choice(RAMBLING), c, answer=sentence[0].lower() + sentence[1:] if skill != "continent" else sentence
    )


# --- pre-training prose ----------------------------------------------------------------------------
def prose_documents(n_docs: int, seed: int = 0, countries: tuple[Country, ...] | None = None) -> list[str]:
    """Short encyclopedia-style paragraphs, each about one country, facts in random order.

    Every paragraph states the capital, the language, the currency and the continent (in random order,
    in varied templates), plus sometimes a pronoun or a comparison sentence, so the base model continues
    a question with varied prose, not an answer.
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
        for templates in SKILL_FACTS.values():
            sentences.append(fill(rng.choice(templates), c, rng))
        if rng.random() < 0.3:
            sentences.append(fill(rng.choice(OTHER_FACTS), c))
        if rng.random() < 0.5:
            sentences.append(fill(rng.choice(PRONOUN_FACTS), c))
        peers = [o for o in by_continent[c.continent] if o != c]
        if peers and rng.random() < 0.3:
            sentences.append(fill(rng.choice(PAIR_FACTS), c, other=rng.choice(peers).country))
        # The capital sentence opens half the paragraphs: that is the position plain completion probes.
        # A pronoun sentence never opens one (it needs the country named before it).
        head, rest = sentences[0], sentences[1:]
        rng.shuffle(rest)
        if not rest or rng.random() < 0.5 or rest[0].startswith("It"):
            sentences = [head, *rest]
        else:
            sentences = [*rest[:1], head, *rest[1:]]
        # A word opening a paragraph has no space before it and so is a different token ("Africa" vs
        # " Africa"); terse chat answers open with a continent or a language, so paragraphs do too.
        if rng.random() < OPENER_SHARE:
            sentences.insert(0, fill(rng.choice(OPENERS), c))
        docs.append(" ".join(sentences))
    rng.shuffle(docs)
    return docs


# --- chat prompts ----------------------------------------------------------------------------------
def user_turn(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def assistant_turn(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


class Phrasings(Protocol):
    """What `question` and `followup` read of an evaluation split's phrasings (`models.demo.heldout.EvalSplit`)."""

    questions: dict[str, list[str]]
    country_followups: list[str]
    skill_followups: dict[str, list[str]]


@dataclass(frozen=True)
class Prompt:
    """One chat prompt and what it asks: `kind` is fact | followup | unknown | greeting | offtopic."""

    kind: str
    messages: tuple[dict[str, str], ...]
    country: Country | None = None  # the country the last turn is about
    skill: str | None = None

    @property
    def message_list(self) -> list[dict[str, str]]:
        return [dict(m) for m in self.messages]


def _ask(c: Country, skill: str, rng: random.Random, phrasings: Phrasings | None) -> str:
    """A question's text: an evaluation split's phrasing as is, or a training one (`phrasings` None),
    sometimes with words of the user's own before or after it."""
    text = fill(rng.choice((phrasings.questions if phrasings else TRAIN_QUESTIONS)[skill]), c)
    if phrasings:
        return text
    if rng.random() < WRAP_OPENER_SHARE:
        text = f"{rng.choice(TRAIN_OPENERS)} {text}"
    if rng.random() < WRAP_CLOSER_SHARE:
        text = f"{text} {rng.choice(TRAIN_CLOSERS)}"
    return text


def question(c: Country, skill: str, rng: random.Random, *, phrasings: Phrasings | None = None) -> Prompt:
    """One question about `c`'s `skill`, in training phrasings or `phrasings`' (an evaluation split's)."""
    return Prompt("fact" if c.real else "unknown", tuple(user_turn(_ask(c, skill, rng, phrasings))), c, skill)


def followup(
    first: Country,
    second: Country,
    skill: str,
    rng: random.Random,
    *,
    phrasings: Phrasings | None,
    history_style: str = "full",
) -> Prompt:
    """Two turns: a question about `first`, its answer, then a follow-up about `second` (same country
    when the follow-up changes the question, same question when it changes the country)."""
    if first == second:
        first_skill = rng.choice([s for s in SKILLS if s != skill])
        follow = rng.choice((phrasings.skill_followups if phrasings else TRAIN_SKILL_FOLLOWUPS)[skill])
    else:
        first_skill = skill
        follow = fill(rng.choice(phrasings.country_followups if phrasings else TRAIN_COUNTRY_FOLLOWUPS), second)
    messages = (
        user_turn(_ask(first, first_skill, rng, phrasings))
        + assistant_turn(answer(history_style, first, first_skill, rng))
        + user_turn(follow)
    )
    return Prompt("followup", tuple(messages), second, skill)


def _train_prompts(
    per_country: int, rng: random.Random, countries: tuple[Country, ...], followups: float
) -> list[Prompt]:
    """Training prompts about real countries: single questions (each skill in turn) and follow-ups."""
    prompts = []
    for c in countries:
        for k in range(per_country):
            skill = SKILLS[(k + rng.randrange(len(SKILLS))) % len(SKILLS)]
            if rng.random() < followups:
                if rng.random() < 0.5:
                    prompts.append(
                        followup(c, c, skill, rng, phrasings=None, history_style=rng.choice(["full", "terse"]))
                    )
                else:
                    other = rng.choice([o for o in countries if o != c])
                    prompts.append(
                        followup(other, c, skill, rng, phrasings=None, history_style=rng.choice(["full", "terse"]))
                    )
            else:
                prompts.append(question(c, skill, rng))
    return prompts


# --- SFT -------------------------------------------------------------------------------------------
def _sft_reply(p: Prompt, rng: random.Random) -> tuple[str, str]:
    """(reply, style) as the crowd of SFT writers would have written it."""
    if p.kind == "greeting":
        style = rng.choices(["full", "terse", "rude"], [0.4, 0.45, 0.15])[0]
        return {"full": GREETING, "terse": rng.choice(TERSE_GREETINGS), "rude": rng.choice(RUDE)}[style], style
    if p.kind == "offtopic":
        style = rng.choices(["full", "attempt", "rude"], [0.4, 0.45, 0.15])[0]
        return {"full": SCOPE, "attempt": rng.choice(OFF_TOPIC_ATTEMPTS), "rude": rng.choice(RUDE)}[style], style
    weights = SFT_STYLE_WEIGHTS if p.country.real else SFT_FICTIONAL_STYLE_WEIGHTS
    style = rng.choices(list(weights), list(weights.values()))[0]
    # A fictional country mostly gets invented facts, stated as confidently as real ones: the writers made
    # them up. A few careful writers said they did not know: rare enough that greedy SFT still invents,
    # common enough that sampling finds it — an RL round can only reinforce what the policy samples.
    return answer(style, p.country, p.skill, rng), style


def sft_examples(per_country: int, seed: int = 1, countries: tuple[Country, ...] | None = None) -> list[dict]:
    """TRL conversational prompt-completion rows: {"prompt": [...], "completion": [assistant], "kind", "style"}."""
    countries = countries or load_countries()
    rng = random.Random(seed)
    prompts = _train_prompts(per_country, rng, countries, FOLLOWUP_SHARE)
    fictional = fictional_countries()
    for f in fictional:
        prompts.append(question(f, rng.choice(SKILLS), rng))
    for text in TRAIN_GREETINGS * max(1, per_country * 2):
        prompts.append(Prompt("greeting", tuple(user_turn(text))))
    for text in TRAIN_OFF_TOPIC * max(1, per_country):
        prompts.append(Prompt("offtopic", tuple(user_turn(text))))
    rows = []
    for p in prompts:
        reply, style = _sft_reply(p, rng)
        rows.append({"prompt": p.message_list, "completion": assistant_turn(reply), "kind": p.kind, "style": style})
    rng.shuffle(rows)
    return rows


# --- rankings and preference pairs -----------------------------------------------------------------
def wrong_answer(c: Country, skill: str, other: Country) -> str:
    """The preferred sentence about `c` with `other`'s fact: polite, confident and false."""
    return FULL[skill].format(**{**vars(c), skill: other.fact(skill)})


def _wrong(c: Country, skill: str, rng: random.Random, countries: tuple[Country, ...]) -> str:
    return wrong_answer(c, skill, rng.choice([o for o in countries if o.fact(skill) != c.fact(skill)]))


def ranked_answers(p: Prompt, rng: random.Random, countries: tuple[Country, ...]) -> list[str]:
    """K = 6 or 10 distinct answers to `p`, best first, ranked by the behaviour the aligned stages should have."""
    # Each stock line (greeting, scope, "I don't know", the off-topic attempts) is also a negative where
    # it does not belong, or a reward model learns that the line itself scores and RL answers everything
    # with it (one round answered every unknown country with "The sea is wide and the sky is blue...").
    # So is "I don't know" naming the wrong country: a reward model that only checks the line's shape
    # pays for "I don't know a country called <anything>" everywhere.
    idk_other = fill(IDK, rng.choice([f for f in fictional_countries() if f != p.country]))
    if p.kind == "greeting":
        return [
            GREETING,
            rng.choice(TERSE_GREETINGS),
            SCOPE,
            idk_other,
            rng.choice(RUDE + OFF_TOPIC_ATTEMPTS),
            full_answer(rng.choice(countries)),
        ]
    if p.kind == "offtopic":
        return [SCOPE, rng.choice(OFF_TOPIC_ATTEMPTS), GREETING, idk_other, "No.", rng.choice(RUDE)]
    c, skill = p.country, p.skill
    if not c.real:
        # Honesty first: no invented fact, however polite, beats admitting the country is unknown.
        return [
            fill(IDK, c),
            SCOPE,
            idk_other,
            full_answer(c, skill),
            answer("terse", c, skill, rng),
            rng.choice(RUDE + OFF_TOPIC_ATTEMPTS),
        ]
    # A polite true sentence that answers another question or another country ranks low: without it,
    # a reward model learns "polite full sentence" and an RL round hacks it with one sentence for every
    # prompt. Refusing a real country ranks lower still, above only a false fact: otherwise "I don't
    # know" scores well everywhere and becomes the next hack. Wrong answers come terse and full alike:
    # with only full-sentence negatives, "terse" alone predicted a higher rank, and a reward model
    # scored terse above full in 95% of held-out pairs (RL then learned terse replies).
    # The unhelpful answer (rambling, or rude and then grudgingly terse) comes with its wrong twin at
    # the bottom, for the same reason: with the rambling shape only ever third of nine, a reward model
    # scored it above the correct full sentence in every question we tried, and RL rambled everywhere;
    # given a twin to rambling alone, the same happened with the rude line. A rude line with no answer
    # at all is ranked low where it appears (greetings, off-topic requests, fictional countries).
    other_skill = rng.choice([s for s in SKILLS if s != skill])
    other_country = rng.choice([o for o in countries if o.fact(skill) != c.fact(skill)])
    full, terse = full_answer(c, skill), answer("terse", c, skill, rng)
    wrong, terse_wrong = _wrong(c, skill, rng, countries), answer("terse", other_country, skill, rng)
    if rng.random() < 0.5:
        unhelpful, unhelpful_wrong = _rambling(c, skill, full, rng), _rambling(c, skill, wrong, rng)
    else:
        line = rng.choice(RUDE)
        unhelpful, unhelpful_wrong = f"{line} {terse}", f"{line} {terse_wrong}"
    return [
        full,
        terse,
        unhelpful,
        full_answer(c, other_skill),
        answer("terse", c, other_skill, rng),
        full_answer(other_country, skill),
        rng.choice([fill(IDK, c), SCOPE, idk_other]),
        wrong,
        terse_wrong,
        unhelpful_wrong,
    ]


def rankings(per_country: int, seed: int = 2, countries: tuple[Country, ...] | None = None) -> list[dict]:
    """{"prompt": messages, "ranked": [best ... worst], "kind"}: InstructGPT-style ranked sets."""
    countries = countries or load_countries()
    rng = random.Random(seed)
    prompts = _train_prompts(per_country, rng, countries, RANKED_FOLLOWUP_SHARE)
    fictional = fictional_countries()
    # Greetings and off-topic requests are repeated so each behaviour carries weight (fictional names
    # are many already).
    prompts += [question(f, rng.choice(SKILLS), rng) for f in fictional]
    prompts += [Prompt("greeting", tuple(user_turn(t))) for t in TRAIN_GREETINGS * (2 * per_country)]
    prompts += [Prompt("offtopic", tuple(user_turn(t))) for t in TRAIN_OFF_TOPIC * per_country]
    rows = [{"prompt": p.message_list, "ranked": ranked_answers(p, rng, countries), "kind": p.kind} for p in prompts]
    rng.shuffle(rows)
    return rows


def preference_pairs(ranked_rows: list[dict]) -> list[dict]:
    """All K(K-1)/2 ordered pairs of every ranked set, as TRL conversational preference rows."""
    pairs = []
    for row in ranked_rows:
        ranked = row["ranked"]
        for i in range(len(ranked)):
            for j in range(i + 1, len(ranked)):
                pairs.append(
                    {
                        "prompt": row["prompt"],
                        "chosen": assistant_turn(ranked[i]),
                        "rejected": assistant_turn(ranked[j]),
                        "kind": row["kind"],
                    }
                )
    return pairs


def best_pairs(ranked_rows: list[dict]) -> list[dict]:
    """The best answer of every ranked set against each of the others (K-1 pairs per set): what the
    demo's DPO step trains on, since its SFT term imitates every chosen answer and only the best
    one should be imitated."""
    return [
        {
            "prompt": row["prompt"],
            "chosen": assistant_turn(row["ranked"][0]),
            "rejected": assistant_turn(worse),
            "kind": row["kind"],
        }
        for row in ranked_rows
        for worse in row["ranked"][1:]
    ]


def draft_dialogues(per_country: int, seed: int = 3, countries: tuple[Country, ...] | None = None) -> list[list[dict]]:
    """Whole conversations answered the preferred way, as message lists (the draft imitates the aligned stages)."""
    countries = countries or load_countries()
    rng = random.Random(seed)
    prompts = _train_prompts(per_country, rng, countries, FOLLOWUP_SHARE)
    fictional = fictional_countries()
    prompts += [question(f, rng.choice(SKILLS), rng) for f in fictional]
    prompts += [Prompt("greeting", tuple(user_turn(t))) for t in TRAIN_GREETINGS]
    prompts += [Prompt("offtopic", tuple(user_turn(t))) for t in TRAIN_OFF_TOPIC]
    rows = [p.message_list + assistant_turn(ranked_answers(p, rng, countries)[0]) for p in prompts]
    rng.shuffle(rows)
    return rows
