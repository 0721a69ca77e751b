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
    body = httpx.post(f"{live_server.url}/v1/chat/completions", timeout=120, json={
        "model": "base", "messages": [{"role": "user", "content": "Tell me about Kenya."}], "max_tokens": 48,
        "ignore_eos": True, "seed": 7, "logprobs": True, "top_logprobs": 20, **SETTINGS}).json()
    positions = body["choices"][0]["logprobs"]["content"]
    assert len(positions) == 48
    cut_somewhere = False
    for entry in positions:
        window = [(t["token"], t["token"], t["logprob"]) for t in entry["top_logprobs"]]
        window.append((entry["token"], entry["token"], entry["logprob"]))
        lab = run(window, LabSettings(**SETTINGS), sampled_id=entry["token"], vocab_size=512)
        assert entry["token"] in lab.kept(), [s.name for s in lab.steps if s.sampled_rank is None]
        assert lab.steps[0].rows[0].probability <= 1.0
        cut_somewhere |= any(s.cut for s in lab.steps[1:])
    assert cut_somewhere  # the settings did cut: the check has teeth
