"""Speculation token by token (`server.spec_marks`): the alignment of vLLM's per-step figures with the
streamed deltas, and the marks in the body, the final stream chunk and the WebSocket's `done` frame
(on a scripted engine that streams whole steps as vLLM does). On real vLLM with ngram:
test_speculative_vllm.py::test_marks_add_up_to_the_figures."""

import json

import pytest

from server.engine import Delta, SpeculativeFigures
from server.fake_engine import ScriptedEngine
from server.spec_marks import ACCEPTED, BONUS, REPLACED, TARGET, align
from tests.conftest import ready_client

# Five deltas: the prompt's step (1 token), then verify steps accepting 2, 0, 3 (all: a bonus) and 1.
GROUPS = [1, 3, 1, 4, 2]
STEPS = [(3, 2), (3, 0), (3, 3), (3, 1)]


def check_sums(marks, steps):
    accepted = sum(a for _, a in steps)
    assert marks.kinds.count(ACCEPTED) + marks.dropped == accepted
    assert sum(d for d, _ in marks.steps) == sum(d for d, _ in steps)


def test_one_delta_per_step():
    marks = align(GROUPS, STEPS)
    assert marks.kinds == (
        TARGET,
        ACCEPTED,
        ACCEPTED,
        REPLACED,
        REPLACED,
        ACCEPTED,
        ACCEPTED,
        ACCEPTED,
        BONUS,
        ACCEPTED,
        REPLACED,
    )
    assert marks.positions == (1, 1, 2, 3, 1, 1, 2, 3, 4, 1, 2)
    check_sums(marks, STEPS)
    assert marks.by_position() == [
        {"position": 1, "drafted": 4, "accepted": 3},
        {"position": 2, "drafted": 4, "accepted": 2},
        {"position": 3, "drafted": 4, "accepted": 1},
    ]


def test_merged_deltas_give_the_same_marks():
    # a slow consumer: vLLM merged steps 1-2 and 3-5 into two deltas
    assert align([4, 7], STEPS).kinds == align(GROUPS, STEPS).kinds


def test_steps_without_draft_between_verify_steps():
    # prompt lookup found nothing at the 2nd and 4th steps: single target tokens
    marks = align([1, 1, 3, 1, 2], [(3, 2), (2, 1)])
    assert marks.kinds == (TARGET, TARGET, ACCEPTED, ACCEPTED, REPLACED, TARGET, ACCEPTED, REPLACED)


def test_a_final_step_cut_short_drops_its_accepted_tail():
    marks = align([1, 2], [(3, 3)])  # max_tokens reached two tokens into a 4-token step
    assert marks.kinds == (TARGET, ACCEPTED, ACCEPTED) and marks.dropped == 1
    check_sums(marks, [(3, 3)])


def test_the_first_token_is_never_a_draft():
    assert align([1, 1, 1], [(3, 0)]).kinds == (TARGET, REPLACED, TARGET)


def test_figures_that_do_not_fit_give_no_marks():
    assert align([1, 1, 1], [(3, 1), (3, 0)]) is None  # a 2-token step in one-token deltas, not the last
    assert align([1, 1, 1], [(3, 0), (3, 0), (3, 0)]) is None  # more steps than tokens after the first
    assert align([1, 1], [(1, 2)]) is None  # more accepted than drafted


def test_long_answer_aligns_quickly():
    import time

    steps = [(3, i % 4) for i in range(300)]
    groups = [1] + [a + 1 for _, a in steps]
    began = time.perf_counter()
    marks = align([sum(groups[:5]), *groups[5:]], steps)
    assert marks is not None and len(marks.kinds) == sum(groups)
    assert time.perf_counter() - began < 0.5


# -- through the server ------------------------------------------------------------------------------


class SteppingEngine(ScriptedEngine):
    """With speculation: streams GROUPS tokens per delta and reports STEPS when it finishes."""

    async def generate(self, prompt_token_ids, settings, request_id, adapter=None):
        if not self.speculative_method:
            async for batch in super().generate(prompt_token_ids, settings, request_id, adapter):
                yield batch
            return
        self.requests.append((prompt_token_ids, settings, adapter))
        token = 0
        for i, size in enumerate(GROUPS):
            last = i == len(GROUPS) - 1
            figures = SpeculativeFigures(self.speculative_method, 12, 6, 0.5, 2.5, tuple(STEPS)) if last else None
            ids = list(range(token, token + size))
            token += size
            yield [Delta(0, "".join(f" w{t}" for t in ids), ids, None, "length" if last else None, figures)]


@pytest.fixture
def client(fake_app, monkeypatch):
    # the conftest module pytest loaded (not necessarily `tests.conftest`) builds the engines
    monkeypatch.setitem(fake_app.__globals__, "ScriptedEngine", SteppingEngine)
    with ready_client(*fake_app()) as client:
        yield client


REQUEST = {"model": "base", "messages": [{"role": "user", "content": "Hi"}], "speculative": "ngram"}


def test_marks_beside_the_choice_add_up_to_the_figures(client):
    body = client.post("/v1/chat/completions", json=REQUEST).json()
    marks = body["choices"][0]["speculative_marks"]
    assert len(marks["tokens"]) == body["usage"]["completion_tokens"] == 11
    assert marks["tokens"].count("accepted") + marks["dropped"] == body["speculative"]["accepted_tokens"] == 6
    assert sum(d for d, _ in marks["steps"]) == body["speculative"]["draft_tokens"] == 12
    assert marks["by_position"][0] == {"position": 1, "drafted": 4, "accepted": 3}
    text = client.post("/v1/completions", json={"model": "base", "prompt": "Hi", "speculative": "ngram"}).json()
    assert text["choices"][0]["speculative_marks"] == marks


def test_marks_in_the_final_stream_chunk(client):
    with client.stream("POST", "/v1/chat/completions", json={**REQUEST, "stream": True}) as r:
        chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    final = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert final[0]["choices"][0]["speculative_marks"]["tokens"][:2] == ["target", "accepted"]
    assert all("speculative_marks" not in c["choices"][0] for c in chunks if c not in final and c["choices"])


def test_marks_on_the_websocket_done_frame(client):
    with client.websocket_connect("/v1/ws") as ws:
        ws.send_json({**REQUEST, "type": "chat", "id": "m"})
        while (frame := ws.receive_json())["type"] == "delta":
            pass
    assert frame["type"] == "done" and len(frame["speculative_marks"]["tokens"]) == 11


def test_no_marks_without_speculation(client):
    body = client.post("/v1/chat/completions", json={**REQUEST, "speculative": "off"}).json()
    assert "speculative_marks" not in body["choices"][0]


def test_the_vllm_engine_reads_vllms_detailed_per_step_figures():
    from types import SimpleNamespace

    from vllm.v1.metrics.stats import RequestSpecDecodeMetrics

    from server.vllm_engine import VllmEngine

    metrics = RequestSpecDecodeMetrics.new(3)
    for drafted, accepted in STEPS:  # what vLLM's scheduler records at "detailed"
        metrics.observe(drafted, accepted, detailed=True)
    output = SimpleNamespace(
        index=0, text="x", token_ids=[1, 2], logprobs=None, finish_reason="length", spec_decode_metrics=metrics
    )
    figures = VllmEngine("m", speculative_method="ngram")._delta(output, 0).speculative
    assert figures.steps == tuple(STEPS) and figures.accepted_tokens == 6 and figures.draft_tokens == 12
