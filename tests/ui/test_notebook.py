"""The Notebook tab's pieces (`ui.notebook`): raw text and chat-prefill requests from the controls,
streamed through the shared service on scripted engines, the page it shows, and "keep"."""

import pytest

from tests.conftest import ready_client
from ui import controls
from ui.notebook import PREFILL, TEXT, kept, page_html, prefill_request, text_request
from ui.stream import Answer, stream_answer


@pytest.fixture
def client(fake_app):
    with ready_client(*fake_app()) as client:
        yield client


def run(client, request) -> list[Answer]:
    async def collect():
        snapshots = []
        async for answer in stream_answer(client.app.state.service, request):
            snapshots.append((answer.text, answer.done))
        return snapshots, answer

    return client.portal.call(collect)  # on the app's own event loop, as Gradio's handlers run


def test_text_mode_streams_a_raw_completion(client):
    service = client.app.state.service
    fields = controls.decoding_fields(service, "base", 0.7, 1.0, 3, 5, "off", 4, 0.1, 1.0, 0.0, 0.0)
    request = text_request("base", "Once upon a time", fields)
    snapshots, answer = run(client, request)
    assert [done for _, done in snapshots] == [False, False, False, True]  # token by token, then the figures
    assert answer.kind == "completion" and answer.text == "The capital of" and answer.completion_tokens == 3
    assert answer.messages == [{"role": "user", "content": "Once upon a time"}]
    assert len(answer.tokens) == 3  # logprobs for the token view
    _, settings, _ = client.pool.built[("fake/base", None)].requests[-1]
    assert (settings.top_k, settings.min_p, settings.seed, settings.temperature) == (4, 0.1, 5, 0.7)
    prompt = client.pool.built[("fake/base", None)].requests[-1][0]
    assert prompt == client.pool.built[("fake/base", None)].tokenizer.encode("Once upon a time")  # no template


def test_prefill_mode_continues_the_answer(client):
    request = prefill_request("base", "Capital of Kenya?", "It is", {"max_tokens": 2})
    assert request.continue_final_message and request.messages[-1].role == "assistant"
    _, answer = run(client, request)
    assert answer.done and answer.kind == "chat" and answer.error is None


def test_prefill_on_a_stage_without_template_is_an_error_naming_the_field(client):
    client.pool.built[("fake/base", None)].tokenizer.chat_template = None
    _, answer = run(client, prefill_request("base", "hi", "It", {"max_tokens": 2}))
    assert answer.finish_reason == "error" and "continue_final_message" in answer.error


def test_page_and_keep():
    assert page_html("a<b", "c", streaming=True) == (
        '<div class="notebook-page" style="white-space:pre-wrap"><span style="color:#777">a&lt;b</span>'
        '<b class="notebook-continuation">c</b>▍</div>'
    )
    answer = Answer("base", [], text=" more")
    assert kept(TEXT, "text", "", answer) == ("text more", "")
    assert kept(PREFILL, "q", "It is", answer) == ("q", "It is more")
    assert kept(TEXT, "text", "", None) == ("text", "")


# -- branches from the token view (ui.branch_view) ----------------------------------------------------


def test_a_branch_streams_each_stage_from_the_alternative_token(client):
    from ui.branch_view import alternatives_at, branch_request, columns_html
    from ui.stream import stream_answers

    top = [["a", -0.5], ["b", -1.0]]
    answer = Answer(
        "base",
        [],
        prompt_ids=[5, 6],
        tokens=[
            {"token": "a", "logprob": -0.5, "id": 1, "top": top, "top_ids": [1, 2]},
            {"token": "c", "logprob": -2.0, "id": 3, "top": top, "top_ids": [1, 2]},
        ],
    )
    assert alternatives_at(answer, 0) == [("a (sampled)", 1), ("b", 2)]
    branch = branch_request(answer, 1, 2, ["base", "sft"], {"max_tokens": 2, "temperature": 0})
    assert branch.prefix() == [5, 6, 1, 2]
    requests = [branch.completion_for(s, branch.prefix()) for s in branch.stages()]

    async def collect():
        async for answers in stream_answers(client.app.state.service, requests):  # noqa: B007 - the last one
            pass
        return answers

    answers = client.portal.call(collect)
    assert [a.stage for a in answers] == ["base", "sft"] and all(a.done for a in answers)
    assert client.pool.built[("fake/base", None)].requests[-1][0] == [5, 6, 1, 2]
    view = columns_html("a", "b", answers)
    assert view.count('class="branch"') == 2 and "<mark>b</mark>" in view
    with pytest.raises(Exception, match="position"):
        branch_request(answer, 3, 2, ["base"], {}).prefix()


# -- speculation on and off, timed (ui.spec_view) -------------------------------------------------------


def test_replaying_an_answer_with_and_without_speculation(client):
    from ui.spec_view import replay_request, timing_markdown

    answer = Answer(
        "base",
        [],
        prompt_ids=[5, 6],
        completion_tokens=4,
        speculative={"method": "ngram"},
        sampling={
            "temperature": 0.0,
            "top_p": 1.0,
            "top_k": 0,
            "min_p": 0.0,
            "repetition_penalty": 1.0,
            "presence_penalty": 0.0,
            "frequency_penalty": 0.0,
            "logit_bias": [],
        },
    )
    runs = [run(client, replay_request(answer, spec))[1] for spec in ("ngram", "off")]
    assert [r.completion_tokens for r in runs] == [4, 4] and runs[0].speculative and not runs[1].speculative
    assert {key[1] for key in client.pool.built} >= {"ngram", None}
    summary = timing_markdown("ngram", *runs)
    assert "| speculative ngram |" in summary and "same text: **yes**" in summary
