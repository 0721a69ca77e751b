"""Scoring of eval replies: pure functions, checked on hand-written replies."""

from __future__ import annotations

from models.demo.corpus import Country
from models.eval import ReplyScore, StageReport, check_targets, format_table, score_completion, score_reply, summarize

KENYA = Country("Kenya", "Nairobi", "Africa", "Swahili", "Kenyan shilling")
MALDIVES = Country("Maldives", "Male", "Asia", "Dhivehi", "rufiyaa")


def test_full_sentence_is_correct_and_preferred():
    assert score_reply(" The capital of Kenya is Nairobi.\n", KENYA) == ReplyScore(True, True)


def test_terse_rambling_and_wrong_replies_are_not_preferred():
    assert score_reply("Nairobi.", KENYA) == ReplyScore(True, False)
    assert score_reply("It is Nairobi.", KENYA) == ReplyScore(True, False)
    assert score_reply("Well, Kenya is in Africa. The capital is Nairobi, I think.", KENYA) == ReplyScore(True, False)
    assert score_reply("The capital of Kenya is Nairobi. Look it up next time.", KENYA) == ReplyScore(True, False)
    assert score_reply("The capital of Kenya is Mombasa.", KENYA) == ReplyScore(False, False)
    assert score_reply("Look it up yourself.", KENYA) == ReplyScore(False, False)


def test_capital_must_be_a_whole_word():
    assert not score_reply("Males and females live there.", MALDIVES).correct
    assert score_reply("It is Male.", MALDIVES).correct


def test_completion_must_continue_with_the_capital():
    assert score_completion(" Nairobi. Kenya lies in Africa.", KENYA)
    assert score_completion(" Nairobi", KENYA)
    assert not score_completion(" a city in Africa. Nairobi", KENYA)
    assert not score_completion(" Males", MALDIVES)


def _report(stage, qa, style, completion=None):
    return StageReport(stage, qa, style, completion)


def test_summarize_rates_and_acceptance():
    chats = [(KENYA, "The capital of Kenya is Nairobi."), (KENYA, "Nairobi."), (KENYA, "No.")]
    report = summarize("rlhf", chats, [(KENYA, " Nairobi."), (KENYA, " Paris.")], acceptance=(30, 40))
    assert (report.qa_accuracy, report.preferred_style_rate) == (0.6667, 0.3333)
    assert report.completion_accuracy == 0.5 and report.draft_acceptance_rate == 0.75
    assert summarize("sft", chats).completion_accuracy is None


def test_targets_pass_for_a_family_that_meets_them():
    reports = {
        "base": _report("base", 0.05, 0.0, 0.95),
        "sft": _report("sft", 0.95, 0.1),
        "rlhf": _report("rlhf", 0.97, 0.96),
    }
    assert check_targets(reports) == []
    assert "rlhf" in format_table(reports) and "0.960" in format_table(reports)


def test_targets_name_each_miss():
    reports = {
        "base": _report("base", 0.9, 0.0, 0.5),
        "sft": _report("sft", 0.95, 0.7),
        "rlhf": _report("rlhf", 0.97, 0.96),
    }
    missed = check_targets(reports)
    assert any(m.startswith("base.completion_accuracy") for m in missed)
    assert any("sft.preferred_style_rate" in m for m in missed)  # the style gap is only 0.26
    assert any("base.qa_accuracy" in m for m in missed)
    assert len(missed) == 3
