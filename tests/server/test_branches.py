"""`POST /v1/branches` on scripted engines: the token-exact prefix, one branch per stage side by
side, each the completions request it reports; a branch past the answer's end is a 400 naming
`position`, and nothing reaches an engine."""

import pytest

from tests.conftest import ready_client

BODY = {
    "model": ["base", "sft"],
    "prompt": [5, 6],
    "completion": [7, 8, 9],
    "position": 1,
    "token": 42,
    "max_tokens": 2,
    "temperature": 0,
    "logprobs": 1,
}


@pytest.fixture
def client(fake_app):
    with ready_client(*fake_app()) as client:
        yield client


def engine(client):
    return client.pool.built[("fake/base", None)]


def test_each_stage_continues_the_same_token_exact_prefix(client):
    body = client.post("/v1/branches", json=BODY).json()
    assert body["prefix"] == [5, 6, 7, 42] and body["position"] == 1
    assert [b["model"] for b in body["branches"]] == ["base", "sft"]
    requests = engine(client).requests[-2:]
    assert [r[0] for r in requests] == [[5, 6, 7, 42]] * 2
    assert requests[1][2].name == "sft" and requests[0][2] is None  # sft rides base's engine as an adapter
    assert all(r[1].max_tokens == 2 and r[1].temperature == 0 for r in requests)
    branch = body["branches"][0]["choices"][0]
    assert branch["text"].endswith("The capital")  # echo: the prefix's text, then the branch
    assert branch["logprobs"]["token_logprobs"][0] is None  # echo's prompt figures come first


def test_appending_at_the_end_is_a_branch_too(client):
    r = client.post("/v1/branches", json={**BODY, "model": "base", "position": 3})
    assert r.status_code == 200 and r.json()["prefix"] == [5, 6, 7, 8, 9, 42]


@pytest.mark.parametrize(
    ("field", "value"), [("position", 4), ("position", -1), ("token", -3), ("top_k", -2), ("min_p", 2)]
)
def test_bad_input_is_a_400_naming_the_field(client, field, value):
    before = len(engine(client).requests)
    r = client.post("/v1/branches", json={**BODY, field: value})
    assert r.status_code == 400 and r.json()["error"]["param"] == field
    assert len(engine(client).requests) == before


def test_unknown_stage_is_a_404(client):
    assert client.post("/v1/branches", json={**BODY, "model": ["base", "nope"]}).status_code == 404


@pytest.mark.parametrize("field", [{"stream": True}, {"stream_options": {"include_usage": True}}])
def test_a_streamed_branch_is_refused_not_answered_whole(client, field):
    before = len(engine(client).requests)
    r = client.post("/v1/branches", json={**BODY, **field})
    assert r.status_code == 400 and next(iter(field)) in r.json()["error"]["message"], r.text
    assert len(engine(client).requests) == before


def test_prompt_logprobs_come_back_with_each_branch(client):
    body = client.post("/v1/branches", json={**BODY, "prompt_logprobs": 0}).json()
    for branch in body["branches"]:
        prompt_lp = branch["choices"][0]["prompt_logprobs"]
        assert prompt_lp[0] is None and len(prompt_lp) == len(body["prefix"])
