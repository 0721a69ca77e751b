"""Prefill on real vLLM (`live_server`, the tiny family, whose chat template takes it): the stage
goes on from the assistant's given prefix. Three greedy requests: the chat with
`continue_final_message`, the same prompt's token ids from /tokenize, and a text completion of those
ids, which must say exactly what the chat said."""

import httpx
import pytest

pytestmark = pytest.mark.integration

USER = {"role": "user", "content": "What is the capital of Kenya?"}
PREFIX = {"role": "assistant", "content": "The capital of Kenya is"}


def test_continue_final_message_goes_on_from_the_prefix(live_server):
    with httpx.Client(base_url=live_server.url, timeout=120) as http:
        chat = http.post(
            "/v1/chat/completions",
            json={
                "model": "base",
                "messages": [USER, PREFIX],
                "continue_final_message": True,
                "temperature": 0,
                "max_tokens": 8,
                "ignore_eos": True,
            },
        ).json()
        opened = http.post("/tokenize", json={"model": "base", "messages": [USER], "return_token_strs": True}).json()
        continued = http.post(
            "/tokenize",
            json={
                "model": "base",
                "messages": [USER, PREFIX],
                "continue_final_message": True,
                "return_token_strs": True,
            },
        ).json()
        prefix_ids = http.post(
            "/tokenize", json={"model": "base", "prompt": PREFIX["content"], "add_special_tokens": False}
        ).json()["tokens"]
        text = http.post(
            "/v1/completions",
            json={
                "model": "base",
                "prompt": continued["tokens"],
                "temperature": 0,
                "max_tokens": 8,
                "ignore_eos": True,
            },
        ).json()
    # The prompt is the open turn plus the prefix, with no end-of-turn after it.
    assert chat["usage"]["prompt_tokens"] == continued["count"] == opened["count"] + len(prefix_ids)
    assert continued["tokens"][-len(prefix_ids) :] == prefix_ids
    assert "<|end|>" not in continued["token_strs"][-len(prefix_ids) :]
    # What the chat answered is what the stage writes after that exact prompt.
    assert chat["choices"][0]["message"]["content"] == text["choices"][0]["text"]
    assert chat["usage"]["completion_tokens"] == 8
