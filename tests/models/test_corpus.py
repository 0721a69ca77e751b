"""The demo data: enough countries, well-formed chat rows and rankings (the held-out material: test_heldout.py)."""

from __future__ import annotations

import collections
import random
import re

import pytest

from models.demo import corpus, fictional, general_text, heldout, phrasings


@pytest.fixture(scope="module")
def sft_rows() -> list[dict]:
    return corpus.sft_examples(8)


def _country_in(text: str, countries) -> corpus.Country:
    return next(c for c in sorted(countries, key=lambda c: len(c.country), reverse=True) if c.country in text)


def test_at_least_150_countries_with_distinct_names_and_capitals():
    countries = corpus.load_countries()
    assert len(countries) >= 150
    assert len({c.country for c in countries}) == len(countries)
    assert len({c.capital for c in countries}) == len(countries)
    assert all(c.capital and c.continent and c.language and c.currency for c in countries)
    # A capital named like its country would make "the right capital is in the reply" trivially true.
    assert not [c for c in countries if c.capital == c.country]


def test_fictional_countries_are_never_real_and_train_and_heldout_are_disjoint():
    train, held_out = fictional.fictional_countries(), heldout.split_fictional_countries("test")
    assert len(train) >= 100 and len(held_out) >= 50
    assert not {f.country for f in train} & {f.country for f in held_out}
    real = [n.lower() for c in corpus.load_countries() for n in (c.country, c.capital)]
    for f in train + held_out:
        assert not f.real
        assert not [r for r in real if r in f.country.lower() or f.country.lower() in r], f.country
        assert f.continent in {c.continent for c in corpus.load_countries()}


def test_prose_states_every_fact_and_never_chats():
    countries = corpus.load_countries()
    docs = corpus.prose_documents(30 * len(countries))
    blob = "\n".join(docs)
    # Each preferred answer is a prose sentence: what SFT/DPO teach to say, pre-training taught to know.
    for skill in corpus.SKILLS:
        assert not [c for c in countries if corpus.full_answer(c, skill) not in blob], skill
    assert not [d for d in docs if "?" in d or "<|" in d]


def test_sft_covers_every_skill_followups_greetings_and_offtopic(sft_rows):
    kinds = collections.Counter(r["kind"] for r in sft_rows)
    assert set(kinds) == {"fact", "followup", "unknown", "greeting", "offtopic"}
    assert kinds["followup"] > 0.2 * kinds["fact"]
    questions = " ".join(r["prompt"][0]["content"] for r in sft_rows if r["kind"] == "fact")
    for skill in corpus.SKILLS:
        assert any(t.format(country="")[:12] in questions for t in phrasings.TRAIN_QUESTIONS[skill])
    for row in sft_rows:
        roles = [m["role"] for m in row["prompt"]]
        assert roles in (["user"], ["user", "assistant", "user"]) and row["completion"][0]["role"] == "assistant"


def test_sft_styles_are_mixed_and_terse_dominates(sft_rows):
    rows = [r for r in sft_rows if r["kind"] == "fact"]
    styles = collections.Counter(r["style"] for r in rows)
    assert set(styles) == {"terse", "full", "rambling", "rude"}
    assert styles["terse"] > len(rows) / 2 > styles["full"]
    countries = corpus.load_countries()
    for row in rows:
        reply = row["completion"][0]["content"]
        c = _country_in(row["prompt"][0]["content"], countries)
        if row["style"] == "rude":
            assert reply in corpus.RUDE
        elif row["style"] != "full":
            assert any(c.fact(s) in reply for s in corpus.SKILLS) and reply not in [
                corpus.full_answer(c, s) for s in corpus.SKILLS
            ]


def test_sft_mostly_invents_facts_for_fictional_countries(sft_rows):
    rows = [r for r in sft_rows if r["kind"] == "unknown"]
    assert len(rows) >= 100
    honest = [r for r in rows if r["completion"][0]["content"].startswith("I don't know a country called ")]
    assert 0.05 * len(rows) < len(honest) < 0.2 * len(rows)  # rare: sampling finds it, greedy decoding does not
    assert not [r for r in sft_rows if r["kind"] != "unknown" and "don't know" in r["completion"][0]["content"]]
    train = fictional.fictional_countries()
    names = {f.country for f in train}
    assert all(any(n in r["prompt"][0]["content"] for n in names) for r in rows)


def test_followups_leave_the_country_or_the_question_implicit():
    rng = random.Random(0)
    countries = corpus.load_countries()
    prompts = corpus._train_prompts(3, rng, countries, followups=1.0)
    changed_country = changed_question = 0
    for p in prompts:
        first, _, follow = p.messages
        if p.country.country in follow["content"]:
            changed_country += 1
            assert p.country.country not in first["content"]
        else:
            changed_question += 1
            assert p.country.country in first["content"]
    assert changed_country > 50 and changed_question > 50


def test_rankings_order_the_preferred_behaviour_first():
    rows = corpus.rankings(2)
    assert all(len(r["ranked"]) >= 4 and len(set(r["ranked"])) == len(r["ranked"]) for r in rows)
    kinds = collections.Counter(r["kind"] for r in rows)
    full_sentences = {answer for c in corpus.load_countries() for answer in _full_answers(c)}
    assert {"fact", "followup", "unknown", "greeting", "offtopic"} == set(kinds)
    for row in rows:
        best, worst = row["ranked"][0], row["ranked"][-1]
        if row["kind"] == "unknown":
            # the honest line names the asked country; one naming another country ranks lower
            asked = best.removeprefix("I don't know a country called ").rstrip(".")
            assert asked in row["prompt"][-1]["content"]
            assert [r for r in row["ranked"][1:] if r.startswith("I don't know") and asked not in r]
        elif row["kind"] == "offtopic":
            assert best == corpus.SCOPE
        elif row["kind"] == "greeting":
            assert best == corpus.GREETING
        else:
            # full sentence > terse > rude or rambling > another question answered (full, then terse) >
            # another country's answer > a refusal > wrong (full, then terse, then the unhelpful shape of the
            # third): every wrong kind comes in each shape, so a reward model cannot rank by shape alone
            country = next(c for c in corpus.load_countries() if best in _full_answers(c))
            assert best.endswith(".") and "don't know" not in best
            other_question, terse_other_question, other_country, refusal, wrong = row["ranked"][3:8]
            assert refusal == corpus.SCOPE or refusal.startswith("I don't know a country called ")
            assert other_question in set(_full_answers(country)) - {best}
            assert terse_other_question not in _full_answers(country) and terse_other_question != row["ranked"][1]
            assert any(other_country in _full_answers(o) for o in corpus.load_countries() if o != country)
            assert wrong != best and wrong.split(" ")[:2] == best.split(" ")[:2]
            terse_wrong = row["ranked"][8]
            assert country.country not in terse_wrong and terse_wrong not in full_sentences
            # third: rambling around the right sentence, or a rude line and then the terse answer; last:
            # the same around the wrong fact
            if row["ranked"][2].startswith(tuple(corpus.RUDE)):
                line = row["ranked"][2].removesuffix(row["ranked"][1])
                assert line.strip() in corpus.RUDE and worst == line + terse_wrong
            else:
                assert row["ranked"][2].endswith(best[1:]) and worst.endswith(wrong[1:])
                assert worst[:4] in {t[:4] for t in corpus.RAMBLING}


def _full_answers(c: corpus.Country) -> list[str]:
    return [corpus.full_answer(c, skill) for skill in corpus.SKILLS]


def test_general_text_never_chats_and_carries_every_word_of_the_chat_lines():
    docs = general_text.general_documents(400)
    assert not [d for d in docs if "?" in d or "<|" in d]
    known = {w.lower() for d in docs + corpus.prose_documents(400) for w in re.findall(r"[A-Za-z]+", d)}
    lines = (
        phrasings.TRAIN_GREETINGS + heldout.HELDOUT_GREETINGS + phrasings.TRAIN_OFF_TOPIC + heldout.HELDOUT_OFF_TOPIC
    )
    lines += [corpus.SCOPE, corpus.GREETING, corpus.IDK.format(country="")]
    lines += phrasings.TRAIN_OPENERS + phrasings.TRAIN_CLOSERS
    assert {w.lower() for line in lines for w in re.findall(r"[A-Za-z]+", line)} - known == set()


def test_preference_pairs_are_all_ordered_pairs():
    rows = corpus.rankings(1)[:5]
    pairs = corpus.preference_pairs(rows)
    assert len(pairs) == sum(len(r["ranked"]) * (len(r["ranked"]) - 1) // 2 for r in rows)
    first = rows[0]["ranked"]
    mine = [
        (p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs[: len(first) * (len(first) - 1) // 2]
    ]
    assert (first[0], first[-1]) in mine and (first[-1], first[0]) not in mine


def test_best_pairs_put_the_best_answer_against_each_other_one():
    rows = corpus.rankings(1)[:5]
    pairs = corpus.best_pairs(rows)
    assert len(pairs) == sum(len(r["ranked"]) - 1 for r in rows)
    for row in rows:
        mine = [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs if p["prompt"] == row["prompt"]]
        assert mine == [(row["ranked"][0], other) for other in row["ranked"][1:]]


def test_generation_is_reproducible():
    assert corpus.prose_documents(50) == corpus.prose_documents(50)
    assert corpus.rankings(1) == corpus.rankings(1)
    assert corpus.sft_examples(1) == corpus.sft_examples(1)
