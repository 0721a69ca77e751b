"""OpenAI response bodies and stream chunks, built from a `Generation` and its deltas.

Plain dicts serialised once per chunk: a stream sends many small chunks, and building pydantic
objects for each would cost more than the token itself. Nothing here talks to an engine.
"""

from __future__ import annotations

import json
from typing import Any

from server.engine import Delta, TokenLogprob
from server.protocol import speculative_body
from server.serving import Generation

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _bytes(token: str) -> list[int]:
    return list(token.encode())


def chat_logprobs(items: list[TokenLogprob]) -> dict[str, Any]:
    return {"content": [
        {"token": lp.token, "logprob": lp.logprob, "bytes": _bytes(lp.token),
         "top_logprobs": [{"token": t, "logprob": v, "bytes": _bytes(t)} for t, v in lp.top]}
        for lp in items
    ]}


def completion_logprobs(items: list[TokenLogprob], offset: int = 0) -> dict[str, Any]:
    offsets, position = [], offset
    for lp in items:
        offsets.append(position)
        position += len(lp.token)
    return {
        "tokens": [lp.token for lp in items],
        "token_logprobs": [lp.logprob for lp in items],
        "top_logprobs": [dict(lp.top) for lp in items],
        "text_offset": offsets,
    }


def _extensions(body: dict[str, Any], gen: Generation) -> dict[str, Any]:
    spec = speculative_body(gen.speculative)
    if spec is not None:
        body["speculative"] = spec
    return body


def chat_body(gen: Generation) -> dict[str, Any]:
    choices = [{
        "index": c.index,
        "message": {"role": "assistant", "content": c.text},
        "logprobs": chat_logprobs(c.logprobs) if gen.settings.logprobs is not None else None,
        "finish_reason": c.finish_reason,
    } for c in gen.choices]
    return _extensions({"id": gen.id, "object": "chat.completion", "created": gen.created, "model": gen.stage,
                        "choices": choices, "usage": gen.usage()}, gen)


def completion_body(gen: Generation) -> dict[str, Any]:
    choices = [{
        "index": c.index,
        "text": c.text,
        "logprobs": completion_logprobs(c.logprobs) if gen.settings.logprobs is not None else None,
        "finish_reason": c.finish_reason,
    } for c in gen.choices]
    return _extensions({"id": gen.id, "object": "text_completion", "created": gen.created, "model": gen.stage,
                        "choices": choices, "usage": gen.usage()}, gen)


class ChunkWriter:
    """Renders one generation's stream as SSE `data:` lines, the OpenAI way."""

    def __init__(self, gen: Generation, include_usage: bool):
        self.gen = gen
        self.include_usage = include_usage
        self.chat = gen.kind == "chat"
        self.object = "chat.completion.chunk" if self.chat else "text_completion"
        self.usage_field = ',"usage":null' if include_usage else ""
        self.sent_role: set[int] = set()
        self.offsets = [0] * gen.settings.n
        # The constant head of every chunk, serialised once.
        self.head = '{"id":%s,"object":"%s","created":%d,"model":%s,"choices":[' % (
            _dumps(gen.id), self.object, gen.created, _dumps(gen.stage))

    def chunk(self, deltas: list[Delta]) -> str:
        parts = [self._choice(d) for d in deltas]
        tail = ""
        if any(d.finish_reason for d in deltas) and all(c.finish_reason for c in self.gen.choices):
            spec = speculative_body(self.gen.speculative)
            tail = ',"speculative":' + _dumps(spec) if spec else ""
        return "data: " + self.head + ",".join(parts) + "]" + self.usage_field + tail + "}\n\n"

    def _choice(self, d: Delta) -> str:
        logprobs = "null"
        if d.logprobs is not None:
            if self.chat:
                logprobs = _dumps(chat_logprobs(d.logprobs))
            else:
                logprobs = _dumps(completion_logprobs(d.logprobs, self.offsets[d.index]))
        self.offsets[d.index] += len(d.text)
        finish = _dumps(d.finish_reason)
        if not self.chat:
            return '{"index":%d,"text":%s,"logprobs":%s,"finish_reason":%s}' % (d.index, _dumps(d.text), logprobs, finish)
        role = ""
        if d.index not in self.sent_role:
            self.sent_role.add(d.index)
            role = '"role":"assistant",'
        return '{"index":%d,"delta":{%s"content":%s},"logprobs":%s,"finish_reason":%s}' % (
            d.index, role, _dumps(d.text), logprobs, finish)

    def usage_chunk(self) -> str:
        return "data: " + self.head + '],"usage":' + _dumps(self.gen.usage()) + "}\n\n"


def sse_error(body: dict[str, Any]) -> str:
    return "data: " + _dumps(body) + "\n\n"


DONE = "data: [DONE]\n\n"
