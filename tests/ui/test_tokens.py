"""The token view's "same text, every stage" helpers (pure functions; the tab itself is driven in a
browser by tests/ui/test_ui_vllm.py)."""

import math

import pytest

from server.scoring import StageScore
from ui.tokens import comparison_html, comparison_rows, parse_conversation, score_summary


def test_conversation_is_a_user_message_or_json_messages():
    assert parse_conversation(" hi ") == [{"role": "user", "content": "hi"}]
    two = '[{"role": "system", "content": "be terse"}, {"role": "user", "content": "hi"}]'
    assert [m["role"] for m in parse_conversation(two)] == ["system", "user"]
    for bad in ("", "[not json", '[{"role": "user"}]', "[1]"):
        with pytest.raises(ValueError):
            parse_conversation(bad)


SCORES = [
    StageScore("base", [" Nai", "robi"], [math.log(0.1), math.log(0.5)]),
    StageScore("sft", [" Nai", "robi"], [math.log(0.8), math.log(0.9)]),
    StageScore("rlhf", error="engines busy"),
]


def test_rows_put_each_stages_probability_side_by_side():
    headers, rows = comparison_rows(SCORES)
    assert headers == ["#", "token", "p(base)", "p(sft)"]
    assert rows == [[0, "␣Nai", 0.1, 0.8], [1, "robi", 0.5, 0.9]]


def test_a_stage_that_tokenises_differently_gets_its_own_rows():
    other = StageScore("other", ["Nairobi"], [math.log(0.25)])
    headers, rows = comparison_rows([SCORES[0], other])
    assert headers == ["#", "token", "p(base)"] and rows[-1] == [0, "Nairobi [other]", 0.25]


def test_summary_and_html_name_every_stage():
    summary = score_summary(SCORES)
    assert "| sft | -0.164 |" in summary and "#0 ␣Nai (p=0.100)" in summary and "engines busy" in summary
    page = comparison_html(SCORES)
    assert page.count('class="tok"') == 4 and 'data-stage="sft"' in page and "engines busy" in page


def test_speculation_marks_underline_tokens_and_count_by_position():
    from ui.tokens import acceptance_rows, token_html

    tokens = [{"token": t, "logprob": math.log(0.5), "top": []} for t in ("a", "b", "c")]
    marks = {
        "tokens": ["target", "accepted", "replaced"],
        "steps": [[3, 1]],
        "dropped": 0,
        "by_position": [{"position": 1, "drafted": 1, "accepted": 1}, {"position": 2, "drafted": 1, "accepted": 0}],
    }
    view = token_html(tokens, marks)
    assert 'data-mark="accepted"' in view and 'data-mark="replaced"' in view and "accepted</span> 1" in view
    assert "data-mark" not in token_html(tokens)
    assert [(r["position"], r["tokens"], r["kind"]) for r in acceptance_rows(marks)] == [
        ("draft #1", 1, "accepted"),
        ("draft #1", 0, "rejected"),
        ("draft #2", 0, "accepted"),
        ("draft #2", 1, "rejected"),
    ]


def test_sampler_lab_view_walks_a_position_through_the_steps():
    from ui.sampler_view import lab_for, lab_markdown, lab_rows
    from ui.stream import Answer

    top = [["a", math.log(0.5)], ["b", math.log(0.3)], ["c", math.log(0.15)]]
    tokens = [
        {"token": "a", "logprob": math.log(0.5), "id": 1, "top": top, "top_ids": [1, 2, 3]},
        {"token": "b", "logprob": math.log(0.3), "id": 2, "top": top, "top_ids": [1, 2, 3]},
    ]
    answer = Answer(
        "base",
        [],
        tokens=tokens,
        vocab_size=10,
        prompt_ids=[7],
        sampling={
            "temperature": 1.0,
            "top_k": 2,
            "top_p": 1.0,
            "min_p": 0.0,
            "repetition_penalty": 1.0,
            "presence_penalty": 0.0,
            "frequency_penalty": 0.0,
            "logit_bias": [],
        },
    )
    lab = lab_for(answer, 1)
    assert [s.name for s in lab.steps] == ["raw (the model)", "top-k 2"]
    summary = lab_markdown(lab, "b")
    assert "| top-k 2 | 2 | 80.0% |" in summary and "#2, p=0.375" in summary
    headers, rows = lab_rows(lab)
    assert headers == ["token", "raw (the model)", "top-k 2"]
    assert rows[0] == ["a", 0.5, 0.625] and rows[2] == ["c", 0.15, None] and rows[-1][0] == "(7 other tokens)"
    assert lab_for(Answer("base", [], tokens=[{**tokens[0], "id": None}]), 0) is None
