"""One builder for the generation records tests put in a store: a chat answer as the serving layer logs it."""

from __future__ import annotations

import itertools

from server.store import GenerationRecord, prompt_hash

_numbers = itertools.count()


def chat_record(
    asked: list[dict] | str = "What is the capital of Kenya?", completion: str | None = "Nairobi.", **fields
) -> GenerationRecord:
    """A logged chat answer to the messages `asked` (a string: one user turn), with a fresh id; `fields`
    set any other field of the record (`messages=None`: the prompt was not logged)."""
    messages = [{"role": "user", "content": asked}] if isinstance(asked, str) else asked
    defaults = {
        "id": f"chatcmpl-test{next(_numbers)}",
        "stage": "sft",
        "client_id": "anonymous",
        "kind": "chat",
        "prompt_hash": prompt_hash(messages),
        "messages": messages,
        "prompt": None,
        "completion": completion,
        "sampling": {},
        "speculative_method": None,
        "speculative": None,
        "prompt_tokens": 1,
        "completion_tokens": 1,
        "finish_reason": "stop",
        "ttft_ms": 1.0,
        "duration_ms": 2.0,
    }
    return GenerationRecord(**{**defaults, **fields})
