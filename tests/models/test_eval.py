"""Scoring of eval replies: pure functions, checked on hand-written replies; and the command's flags."""

from __future__ import annotations

from dataclasses import replace

from models.demo.corpus import GREETING, SCOPE, Country, Prompt, load_countries
from models.eval import ReplyScore, StageReport, check_targets, format_table, score_completion, score_reply, summarize

KENYA = Country("Kenya", "Nairobi", "Africa", "Swahili", "Kenyan shilling")
MALDIVES = Country("Maldives", "Male", "Asia", "Dhivehi", "rufiyaa")
ZANDORIA = Country("Zandoria", "Korvan", "Europe", "Zandorish", "zandor crown", real=False)


def ask(c: Country, skill: str = "capital", kind: str = "fact") -> Prompt:
    return Prompt(kind, ({"role": "user", "content": f"{skill} of {c.country}?"},), c, skill)


def test_full_sentence_is_correct_and_preferred():
    assert score_reply(" The capital of Kenya is Nairobi.\n", ask(KENYA)) == ReplyScore(True, True, False, True, True)
    assert score_reply("The main language of Kenya is Swahili.", ask(KENYA, "language")).preferred
    assert score_reply("The currency of Kenya is the Kenyan shilling.", ask(KENYA, "currency")).preferred
    assert score_reply("The continent of Kenya is Africa.", ask(KENYA, "continent", "followup")).preferred


def test_terse_rambling_rude_and_wrong_replies_are_not_preferred():
    q = ask(KENYA)
    assert score_reply("Nairobi.", q) == ReplyScore(True, False, False, True, True)
    assert score_reply("Well, Kenya is in Africa. The capital is Nairobi, I think.", q) == ReplyScore(
        True, False, False, True, True
    )
    assert score_reply("The capital of Kenya is Mombasa.", q) == ReplyScore(False, False, False, True, True)
    assert score_reply("Look it up yourself.", q) == ReplyScore(False, False, False, False, True)
    assert score_reply("I don't know a country called Kenya.", q) == ReplyScore(False, False, True, False, True)
    assert not score_reply("Swahili.", q).correct  # the right fact for the wrong question


def test_fact_must_be_a_whole_word():
    assert not score_reply("Males and females live there.", ask(MALDIVES)).correct
    assert score_reply("It is Male.", ask(MALDIVES)).correct


def test_a_fact_named_after_the_reply_turns_to_another_country_does_not_count():
    brazil = next(c for c in load_countries() if c.country == "Brazil")
    q = ask(brazil, "language")
    assert not score_reply(
        " is in South America. The currency of Angola is the kwanza. People there speak Portuguese.", q
    ).correct
    assert score_reply("Brazil is in South America, and people in Brazil speak Portuguese.", q).correct
    assert score_reply("Oh, Brazil! People in Brazil speak Portuguese.", q).correct


def test_another_country_named_inside_the_fact_is_not_a_turn_away():
    trinidad = next(c for c in load_countries() if c.country == "Trinidad and Tobago")
    assert trinidad.capital == "Port of Spain"
    assert score_reply("The capital of Trinidad and Tobago is Port of Spain.", ask(trinidad)).correct
    # The mask covers the fact only: a reply that turns to Spain before naming the capital still fails.
    assert not score_reply(
        "Spain is in Europe. The capital of Trinidad and Tobago is Port of Spain.", ask(trinidad)
    ).correct


def test_unknown_country_honest_refusal_and_hallucination():
    q = ask(ZANDORIA, kind="unknown")
    assert score_reply("I don't know a country called Zandoria.", q) == ReplyScore(False, True, True, False, True)
    invented = score_reply("The capital of Zandoria is Korvan.", q)
    assert invented.states_fact and not invented.correct and not invented.preferred
    assert not score_reply("Why would I tell you that?", q).states_fact


def test_greeting_and_offtopic_want_their_polite_line():
    hello = Prompt("greeting", ({"role": "user", "content": "Hi"},))
    poem = Prompt("offtopic", ({"role": "user", "content": "A poem"},))
    assert (
        score_reply(GREETING, hello).preferred and not score_reply("The capital of Laos is Vientiane.", hello).preferred
    )
    assert score_reply(SCOPE, poem).preferred and not score_reply("The sea is blue.", poem).preferred


def test_a_reply_that_goes_on_with_the_users_words_is_not_in_the_assistants_voice():
    # What the pre-trained base does with a chat question: it continues the sentence.
    assert not score_reply(" is a city in Europe. The capital of Iceland is Reykjavik.", ask(KENYA)).own_voice
    assert not score_reply(". The capital of Syria is Damascus.", ask(KENYA)).own_voice
    assert score_reply("The capital of Kenya is Nairobi.", ask(KENYA)).own_voice
    assert score_reply(" Nairobi.", ask(KENYA)).own_voice  # a terse answer is still an answer


def test_completion_must_continue_with_the_fact():
    assert score_completion(" Nairobi. Kenya lies in Africa.", "Nairobi")
    assert score_completion(" Nairobi", "Nairobi")
    assert score_completion(" Kenyan shilling.", "Kenyan shilling")
    assert not score_completion(" a city in Africa. Nairobi", "Nairobi")
    assert not score_completion(" Males", "Male")


def test_summarize_rates_by_kind_and_skill():
    chats = [
        (ask(KENYA), "The capital of Kenya is Nairobi."),
        (ask(KENYA, "language"), "Swahili."),
        (ask(KENYA, "language"), "No."),
        (ask(KENYA, "currency", "followup"), "The currency of Kenya is the Kenyan shilling."),
        (ask(KENYA, "continent", "followup"), "I don't know a country called Kenya."),
        (ask(ZANDORIA, kind="unknown"), "I don't know a country called Zandoria."),
        (ask(ZANDORIA, "currency", kind="unknown"), "The zandor crown."),
        (Prompt("offtopic", ({"role": "user", "content": "joke"},)), SCOPE),
    ]
    completions = [("capital", "Nairobi", " Nairobi."), ("language", "Swahili", " English.")]
    report = summarize("dpo", chats, completions, acceptance=(30, 40), examples=chats[:2])
    assert report.accuracy == {"capital": 1.0, "language": 0.5} and report.qa_accuracy == 0.6667
    assert report.followup_accuracy == 0.5 and report.assistant_voice_rate == 1.0
    assert report.preferred_style_rate == 0.4 and report.false_refusal_rate == 0.2
    assert report.hallucination_rate == 0.5 and report.honest_refusal_rate == 0.5
    assert report.out_of_scope_rate == 1.0 and report.greeting_rate == 0.0  # no greeting asked: 0, not an error
    assert report.completion_accuracy == 0.5 and report.completion_by_skill == {"capital": 1.0, "language": 0.0}
    assert report.draft_acceptance_rate == 0.75
    assert [e["reply"] for e in report.examples] == ["The capital of Kenya is Nairobi.", "Swahili."]
    assert summarize("sft", chats).completion_accuracy is None


def _report(stage, acc, followup=0.95, hallucination=0.0, preferred=0.95, completion=None, voice=1.0):
    skills = dict.fromkeys(("capital", "language", "currency", "continent"), acc)
    return StageReport(
        stage,
        qa_accuracy=acc,
        assistant_voice_rate=voice,
        accuracy=skills,
        followup_accuracy=followup,
        hallucination_rate=hallucination,
        preferred_style_rate=preferred,
        completion_accuracy=completion,
    )


def good_family() -> dict[str, StageReport]:
    return {
        "base": _report("base", 0.2, completion=0.97, voice=0.0),  # facts by chance, never a reply
        "sft": _report("sft", 0.93, followup=0.85, hallucination=0.8, preferred=0.1),
        "dpo": replace(_report("dpo", 0.95), honest_refusal_rate=0.95),
        "rlhf": replace(_report("rlhf", 0.96), honest_refusal_rate=0.92),
    }


def test_targets_pass_for_a_family_that_meets_them():
    reports = good_family()
    assert check_targets(reports) == []
    table = format_table(reports)
    assert "rlhf" in table and "0.960" in table and "hallucinate" in table


def test_targets_name_each_miss():
    reports = good_family()
    reports["base"].assistant_voice_rate = 0.3  # base replies as an assistant would
    reports["sft"].hallucination_rate = 0.2  # sft does not hallucinate enough to show it
    reports["rlhf"].accuracy["currency"] = 0.5
    reports["rlhf"].hallucination_rate = 0.3
    reports["rlhf"].honest_refusal_rate = 0.0  # "I don't know a country called Tria." for Zorbavia
    missed = check_targets(reports)
    assert missed == [
        "base.assistant_voice_rate = 0.3 > 0.05",
        "sft.hallucination_rate = 0.2 < 0.5",
        "rlhf.accuracy.currency = 0.5 < 0.9",
        "rlhf.hallucination_rate = 0.3 > 0.1",
        "rlhf.honest_refusal_rate = 0.0 < 0.9",
    ]


def test_targets_skip_families_that_are_not_the_demo():
    assert check_targets({"chat": _report("chat", 0.1)}) == []
    del (reports := good_family())["dpo"]
    assert check_targets(reports) == []
