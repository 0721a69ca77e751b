"""OpenAI response bodies and stream chunks, built from one request's `Generation`s and their deltas.

A request is one generation, or (completions with a list of prompts) one per prompt: choice `k`
of prompt `p` is choice `p * n + k` of the response. Plain dicts serialised once per chunk: a
stream sends many small chunks, and building pydantic objects for each would cost more than the
token itself. Nothing here talks to an engine; tool calls are read by `server.tools`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from server.engine import Delta, TokenLogprob
from server.protocol import speculative_body
from server.serving import Generation
from server.tools import ToolCallReader

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


@dataclass(frozen=True)
class Rendering:
    """What the request asked about its response's shape (beyond the generation itself)."""

    include_usage: bool = False
    continuous_usage: bool = False  # extension: usage in every chunk
    echo: bool = False  # completions: the prompt before the completion
    prompt_logprobs: bool = False  # extension: vLLM-shaped prompt_logprobs
    tools: Callable[[], ToolCallReader] | None = None  # chat with tools: a reader per choice


def _bytes(token: str) -> list[int]:
    return list(token.encode())


def chat_logprobs(items: list[TokenLogprob]) -> dict[str, Any]:
    return {
        "content": [
            {
                "token": lp.token,
                "logprob": lp.logprob,
                "bytes": _bytes(lp.token),
                "top_logprobs": [{"token": t, "logprob": v, "bytes": _bytes(t)} for t, v in lp.top],
            }
            for lp in items
        ]
    }


def completion_logprobs(items: list[TokenLogprob | None], offset: int = 0, first_token: str = "") -> dict[str, Any]:
    """The legacy completions shape. A None item is the prompt's first token (echo): nothing
    predicts it, so its logprob and alternatives are null, as in OpenAI's and vLLM's answers."""
    tokens, logprobs, tops, offsets, position = [], [], [], [], offset
    for lp in items:
        token = first_token if lp is None else lp.token
        tokens.append(token)
        logprobs.append(None if lp is None else lp.logprob)
        tops.append(None if lp is None else dict(lp.top))
        offsets.append(position)
        position += len(token)
    return {"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": tops, "text_offset": offsets}


def vllm_prompt_logprobs(items: list[TokenLogprob | None] | None) -> list[dict[str, Any] | None] | None:
    """vLLM's shape: per prompt token None (the first) or {token id: {logprob, rank, decoded_token}}
    for the prompt's token and the top alternatives."""
    if items is None:
        return None
    result: list[dict[str, Any] | None] = []
    for lp in items:
        if lp is None:
            result.append(None)
            continue
        entry = {
            str(i): {"logprob": v, "rank": rank, "decoded_token": t}
            for rank, (i, (t, v)) in enumerate(zip(lp.top_ids, lp.top), start=1)
        }
        if lp.token_id is not None:
            entry[str(lp.token_id)] = {"logprob": lp.logprob, "rank": lp.rank, "decoded_token": lp.token}
        result.append(entry)
    return result


def _first_token(gen: Generation) -> str:
    tokenizer = gen.route.engine.tokenizer
    return tokenizer.decode(gen.prompt_token_ids[:1]) if gen.prompt_token_ids else ""


def _usage(gens: list[Generation]) -> dict[str, int]:
    prompt = sum(g.prompt_tokens for g in gens)
    completion = sum(g.completion_tokens for g in gens)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def reward_body(choice) -> dict[str, Any] | None:
    """Extension: a reward model's score of one answer (`"error"` says why a score is null)."""
    if choice.reward is None:
        return None
    body: dict[str, Any] = {"model": choice.reward.model, "score": choice.reward.score}
    if choice.reward.error:
        body["error"] = choice.reward.error
    return body


def _extensions(body: dict[str, Any], gens: list[Generation]) -> dict[str, Any]:
    spec = speculative_body(gens[0].speculative) if len(gens) == 1 else None
    if spec is not None:
        body["speculative"] = spec
    return body


def _message(text: str, reader: ToolCallReader | None) -> tuple[dict[str, Any], bool]:
    """The assistant message for an answer, and whether it called tools."""
    if reader is None:
        return {"role": "assistant", "content": text}, False
    content, calls = reader.final(text)
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = calls
    return message, bool(calls)


def _finish(reason: str | None, called: bool, reader: ToolCallReader | None) -> str | None:
    # OpenAI says "tool_calls" when the model chose to call; a forced (named) call ends with "stop".
    if reason == "stop" and called and reader is not None and reader.mode != "named":
        return "tool_calls"
    return reason


def chat_body(gen: Generation, how: Rendering = Rendering()) -> dict[str, Any]:
    choices = []
    for c in gen.choices:
        reader = how.tools() if how.tools else None
        message, called = _message(c.text, reader)
        choices.append(
            {
                "index": c.index,
                "message": message,
                "logprobs": chat_logprobs(c.logprobs) if gen.settings.logprobs is not None else None,
                "finish_reason": _finish(c.finish_reason, called, reader),
            }
        )
        if c.reward is not None:
            choices[-1]["reward"] = reward_body(c)
        if c.marks is not None:  # extension: speculation token by token (server.spec_marks)
            choices[-1]["speculative_marks"] = c.marks.body()
    body = {
        "id": gen.id,
        "object": "chat.completion",
        "created": gen.created,
        "model": gen.stage,
        "choices": choices,
        "usage": gen.usage(),
    }
    if how.prompt_logprobs:
        body["prompt_logprobs"] = vllm_prompt_logprobs(gen.prompt_logprobs)
    return _extensions(body, [gen])


def completion_body(gens: list[Generation], how: Rendering = Rendering()) -> dict[str, Any]:
    choices = []
    for p, gen in enumerate(gens):
        for c in gen.choices:
            text, items = c.text, c.logprobs
            if how.echo:
                text = str(gen.prompt) + text
                items = [*(gen.prompt_logprobs or []), *items]
            choice = {
                "index": p * gen.settings.n + c.index,
                "text": text,
                "logprobs": (
                    completion_logprobs(items, first_token=_first_token(gen))
                    if gen.settings.logprobs is not None
                    else None
                ),
                "finish_reason": c.finish_reason,
            }
            if how.prompt_logprobs:
                choice["prompt_logprobs"] = vllm_prompt_logprobs(gen.prompt_logprobs)
            if c.reward is not None:
                choice["reward"] = reward_body(c)
            if c.marks is not None:
                choice["speculative_marks"] = c.marks.body()
            choices.append(choice)
    first = gens[0]
    return _extensions(
        {
            "id": first.id,
            "object": "text_completion",
            "created": first.created,
            "model": first.stage,
            "choices": choices,
            "usage": _usage(gens),
        },
        gens,
    )


class ChunkWriter:
    """Renders one request's stream (one generation per prompt) as SSE `data:` lines, the OpenAI way."""

    def __init__(self, gens: list[Generation], how: Rendering = Rendering()):
        self.gens = gens
        self.how = how
        first = gens[0]
        self.chat = first.kind == "chat"
        self.object = "chat.completion.chunk" if self.chat else "text_completion"
        self.usage_field = ',"usage":null' if how.include_usage and not how.continuous_usage else ""
        self.started: set[tuple[int, int]] = set()  # (prompt, choice) that sent their first delta
        self.offsets = [[0] * g.settings.n for g in gens]
        self.readers = [[how.tools() for _ in range(g.settings.n)] if how.tools else None for g in gens]
        # The constant head of every chunk, serialised once.
        self.head = '{"id":%s,"object":"%s","created":%d,"model":%s,"choices":[' % (  # noqa: UP031 - every chunk: % is fastest
            _dumps(first.id),
            self.object,
            first.created,
            _dumps(first.stage),
        )

    def chunk(self, deltas: list[Delta], p: int = 0) -> str:
        """The chunk for a batch of deltas of prompt `p`'s generation."""
        gen = self.gens[p]
        parts = [part for d in deltas if (part := self._choice(d, p)) is not None]
        tail = ""
        if self.how.continuous_usage:
            tail = ',"usage":' + _dumps(_usage(self.gens))
        if len(self.gens) == 1 and any(d.finish_reason for d in deltas) and all(c.finish_reason for c in gen.choices):
            spec = speculative_body(gen.speculative)
            tail += ',"speculative":' + _dumps(spec) if spec else ""
        if not parts and not tail:
            return ""
        return "data: " + self.head + ",".join(parts) + "]" + self.usage_field + tail + "}\n\n"

    def _choice(self, d: Delta, p: int) -> str | None:
        gen = self.gens[p]
        index = p * gen.settings.n + d.index
        first = (p, d.index) not in self.started
        self.started.add((p, d.index))
        if not self.chat:
            return self._text_choice(d, p, index, first)
        logprobs = _dumps(chat_logprobs(d.logprobs)) if d.logprobs is not None else "null"
        delta: dict[str, Any] = {"role": "assistant"} if first else {}
        finish = d.finish_reason
        reader = self.readers[p][d.index] if self.readers[p] else None
        if reader is None:
            delta["content"] = d.text
        else:
            content, calls = reader.feed(d.text, finished=d.finish_reason is not None)
            if content:
                delta["content"] = content
            if calls:
                delta["tool_calls"] = calls
            finish = _finish(finish, reader.called, reader)
            if not delta and finish is None and d.logprobs is None:
                return None  # nothing to tell yet (a partial tool call)
        extra = ""
        if first and self.how.prompt_logprobs and p == 0 and d.index == 0:
            extra = ',"prompt_logprobs":' + _dumps(vllm_prompt_logprobs(gen.prompt_logprobs))
        extra += _final_extras(gen, d)
        return '{"index":%d,"delta":%s,"logprobs":%s,"finish_reason":%s%s}' % (  # noqa: UP031 - every chunk: % is fastest
            index,
            _dumps(delta),
            logprobs,
            _dumps(finish),
            extra,
        )

    def _text_choice(self, d: Delta, p: int, index: int, first: bool) -> str:
        gen = self.gens[p]
        text, items = d.text, d.logprobs
        if first and self.how.echo:
            text = str(gen.prompt) + text
            if items is not None or gen.settings.logprobs is not None:
                items = [*(gen.prompt_logprobs or []), *(items or [])]
        logprobs = "null"
        if items is not None:
            logprobs = _dumps(completion_logprobs(items, self.offsets[p][d.index], _first_token(gen)))
        self.offsets[p][d.index] += len(text)
        extra = ""
        if first and self.how.prompt_logprobs:
            extra = ',"prompt_logprobs":' + _dumps(vllm_prompt_logprobs(gen.prompt_logprobs))
        extra += _final_extras(gen, d)
        return '{"index":%d,"text":%s,"logprobs":%s,"finish_reason":%s%s}' % (  # noqa: UP031 - every chunk: % is fastest
            index,
            _dumps(text),
            logprobs,
            _dumps(d.finish_reason),
            extra,
        )

    def usage_chunk(self) -> str:
        return "data: " + self.head + '],"usage":' + _dumps(_usage(self.gens)) + "}\n\n"


def _final_extras(gen: Generation, d: Delta) -> str:
    """What a choice's finishing chunk carries beyond the delta: the reward, the speculation marks."""
    if not d.finish_reason:
        return ""
    choice = gen.choices[d.index]
    extra = ""
    if choice.reward is not None:
        extra += ',"reward":' + _dumps(reward_body(choice))
    if choice.marks is not None:  # vLLM reports the steps when the sequence finishes: marks come last
        extra += ',"speculative_marks":' + _dumps(choice.marks.body())
    return extra


def sse_error(body: dict[str, Any]) -> str:
    return "data: " + _dumps(body) + "\n\n"


DONE = "data: [DONE]\n\n"
