"""The sampler lab on real vLLM (`live_server`): one sampled answer with the top 20 alternatives at
each position; at every position the lab, fed those raw logprobs and the request's settings, keeps
the token vLLM sampled (top-k inside the window: the kept set is exact). vLLM's arithmetic itself is
checked in test_sampler_lab.py against its sampler functions."""

import httpx
import pytest

from server.sampler_lab import LabSettings, run

pytestmark = pytest.mark.integration

SETTINGS = {"temperature": 0.8, "top_k": 8, "top_p": 0.9, "min_p": 0.05}


def test_no_sampled_token_falls_outside_the_kept_set(live_server):
    body = httpx.post(
        f"{live_server.url}/v1/chat/completions",
        timeout=120,
        json={
            "model": "base",
            "messages": [{"role": "user", "content": "Tell me about Kenya."}],
            "max_tokens": 48,
            "ignore_eos": True,
            "seed": 7,
            "logprobs": True,
            "top_logprobs": 20,
            **SETTINGS,
        },
    ).json()
    positions = body["choices"][0]["logprobs"]["content"]
    assert len(positions) == 48
    cut_somewhere = False
    for entry in positions:
        # Chat logprobs carry no token ids, and a random model's byte tokens all read "\ufffd": a
        # candidate is keyed by its rank; the sampled one is the candidate with its text and logprob.
        top = entry["top_logprobs"]
        window = [(rank, t["token"], t["logprob"]) for rank, t in enumerate(top)]
        sampled = next(
            rank
            for rank, t in enumerate(top)
            if t["token"] == entry["token"] and abs(t["logprob"] - entry["logprob"]) < 1e-9
        )
        lab = run(window, LabSettings(**SETTINGS), sampled_id=sampled, vocab_size=512)
        assert sampled in lab.kept(), [s.name for s in lab.steps if s.sampled_rank is None]
        assert sampled < SETTINGS["top_k"]  # vLLM sampled within its top-k: the window holds the kept set
        cut_somewhere |= any(s.cut for s in lab.steps[1:])
    assert cut_somewhere  # the settings did cut: the check has teeth
