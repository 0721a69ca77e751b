"""Streaming a generation into the UI: the one helper every tab uses.

`stream_answer` starts a chat generation on the shared `StageService` (in-process, the same service
the HTTP and WebSocket doors use) and yields one `Answer` snapshot per batch of tokens, so a Gradio
event handler can re-render its component after each. `stream_answers` runs several at once and
yields all snapshots together (the Compare tab). Closing either iterator early (Stop, a closed tab)
closes the generation, which aborts it in the engine. This module knows nothing about components.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from server.errors import APIError
from server.protocol import ChatCompletionRequest, CompletionRequest, speculative_body
from server.serving import StageService

TOP_LOGPROBS = 20  # the UI always asks for them: the token view and its sampler lab need the alternatives


def shown(token: str) -> str:
    """A token made visible: spaces, newlines and tabs would otherwise vanish from a label."""
    return token.replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥") or "∅"


@dataclass
class Answer:
    """What the UI shows of one answer; plain data, so it can live in a `gr.State`."""

    stage: str
    messages: list[dict[str, str]]  # the prompt, as the service logged it (rating needs it when unlogged)
    temperature: float | None = None  # what the request asked; None = the stage's default
    response_id: str | None = None
    text: str = ""
    tokens: list[dict[str, Any]] = field(default_factory=list)  # {"token", "logprob", "top": [[t, lp], ...]}
    completion_tokens: int = 0
    finish_reason: str | None = None  # "stop" | "length" | "cancelled" | "error"
    error: str | None = None
    ttft_ms: float | None = None
    duration_ms: float | None = None
    speculative: dict[str, Any] | None = None
    reward: dict[str, Any] | None = None  # {"model", "score", "error"?} when a reward model scored the answer
    first_token_at: float | None = None  # wall clock (time.time()) when the first token reached the UI
    marks: dict[str, Any] | None = None  # speculation token by token (`SpecMarks.body()`), when it ran
    kind: str = "chat"  # or "completion" (the notebook's raw text)
    # for the sampler lab: the settings the engine sampled with, the prompt's ids, the vocabulary size
    sampling: dict[str, Any] | None = None
    prompt_ids: list[int] = field(default_factory=list)
    vocab_size: int = 0

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def tokens_per_s(self) -> float | None:
        """Decode speed: tokens after the first over the time after the first (TTFT is reported apart)."""
        if self.duration_ms is None or self.ttft_ms is None or self.completion_tokens < 2:
            return None
        decode_s = (self.duration_ms - self.ttft_ms) / 1000
        return (self.completion_tokens - 1) / decode_s if decode_s > 0 else None

    def stats(self) -> str:
        """One line of figures: tokens/s, time to first token, speculative acceptance when it ran."""
        if self.error:
            return f"error: {self.error}"
        parts = [f"{self.completion_tokens} tokens"]
        if self.tokens_per_s is not None:
            parts.append(f"{self.tokens_per_s:.0f} tok/s")
        if self.ttft_ms is not None:
            parts.append(f"TTFT {self.ttft_ms:.0f} ms")
        if self.speculative:
            spec = self.speculative
            parts.append(
                f"speculative {spec['method']}: {spec['acceptance_rate']:.0%} accepted "
                f"({spec['accepted_tokens']}/{spec['draft_tokens']})"
            )
        if self.reward:
            score = self.reward["score"]
            parts.append(
                f"reward {score:+.3f} ({self.reward['model']})"
                if score is not None
                else f"reward n/a ({self.reward['model']}: {self.reward.get('error')})"
            )
        if self.finish_reason:
            parts.append(self.finish_reason)
        else:
            parts.append("streaming…")
        return " · ".join(parts)


def chat_request(
    stage: str,
    messages: list[dict[str, str]],
    *,
    temperature: float | None = None,
    top_p: float | None = None,
    max_tokens: int | None = None,
    seed: int | None = None,
    speculative: str | None = None,
    **sampler: Any,
) -> ChatCompletionRequest:
    """The OpenAI request the UI's controls describe (raises `ValidationError` on bad values);
    `sampler`: more of its sampling fields (top_k, min_p, the penalties)."""
    return ChatCompletionRequest(
        model=stage,
        messages=messages,
        temperature=temperature,
        top_p=top_p,
        max_tokens=max_tokens,
        seed=seed,
        speculative=speculative,
        logprobs=True,
        top_logprobs=TOP_LOGPROBS,
        **sampler,
    )


def _message(exc: Exception) -> str:
    if isinstance(exc, APIError):
        return exc.message
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        return f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg')}"
    return f"{type(exc).__name__}: {exc}"


async def stream_answer(
    service: StageService, request: ChatCompletionRequest | CompletionRequest, client_id: str = "ui"
) -> AsyncIterator[Answer]:
    """Yield the same `Answer`, updated, after every batch; the last one is done (or has an error).
    A `CompletionRequest` (the notebook) continues raw text; its `messages` hold the text as a user turn."""
    text_only = isinstance(request, CompletionRequest)
    messages = (
        [{"role": "user", "content": request.prompt_text()}] if text_only else [m.plain() for m in request.messages]
    )
    answer = Answer(
        stage=request.model,
        messages=messages,
        temperature=request.temperature,
        kind="completion" if text_only else "chat",
    )
    try:
        gen = await (service.complete(request, client_id) if text_only else service.chat(request, client_id))
    except APIError as exc:
        answer.error, answer.finish_reason = _message(exc), "error"
        yield answer
        return
    answer.response_id = gen.id
    s = gen.settings
    answer.sampling = {
        "temperature": s.temperature,
        "top_p": s.top_p,
        "top_k": s.top_k,
        "min_p": s.min_p,
        "repetition_penalty": s.repetition_penalty,
        "presence_penalty": s.presence_penalty,
        "frequency_penalty": s.frequency_penalty,
        "logit_bias": [list(b) for b in s.logit_bias],
    }
    answer.prompt_ids = list(gen.prompt_token_ids)
    tokenizer = gen.route.engine.tokenizer
    answer.vocab_size = len(tokenizer) if hasattr(tokenizer, "__len__") else 0
    choice = gen.choices[0]
    began = time.perf_counter()
    try:
        # aclosing: when our consumer stops early, close the generation now (abort in the engine),
        # not whenever the garbage collector gets to it.
        async with aclosing(gen.__aiter__()) as batches:
            async for batch in batches:
                if answer.first_token_at is None:
                    answer.first_token_at = time.time()
                for delta in batch:
                    if delta.index == 0 and delta.logprobs:
                        answer.tokens.extend(
                            {
                                "token": lp.token,
                                "logprob": lp.logprob,
                                "id": lp.token_id,
                                "top": [list(t) for t in lp.top],
                                "top_ids": list(lp.top_ids),
                            }
                            for lp in delta.logprobs
                        )
                answer.text = choice.text
                answer.completion_tokens = choice.tokens
                answer.ttft_ms = gen.ttft_ms
                answer.duration_ms = (time.perf_counter() - began) * 1000
                yield answer
    except APIError as exc:
        answer.error, answer.finish_reason = _message(exc), "error"
        yield answer
        return
    except (asyncio.CancelledError, GeneratorExit):
        answer.finish_reason = "cancelled"
        raise
    answer.finish_reason = choice.finish_reason or "stop"
    answer.duration_ms = gen.duration_ms
    answer.speculative = speculative_body(gen.speculative)  # the API's figures (None: it did not run)
    if choice.marks is not None:
        answer.marks = choice.marks.body()
    if choice.reward is not None:  # the stage's default reward model scored it
        answer.reward = {"model": choice.reward.model, "score": choice.reward.score, "error": choice.reward.error}
    yield answer


async def stream_answers(
    service: StageService, requests: Sequence[ChatCompletionRequest | CompletionRequest], client_id: str = "ui"
) -> AsyncIterator[list[Answer]]:
    """Run several generations at once; yield every answer's latest snapshot after each update."""
    latest: list[Answer] = [
        Answer(stage=r.model, messages=[m.plain() for m in r.messages] if isinstance(r, ChatCompletionRequest) else [])
        for r in requests
    ]
    queue: asyncio.Queue[tuple[int, Answer | None]] = asyncio.Queue()

    async def pump(i: int, request: ChatCompletionRequest | CompletionRequest) -> None:
        try:
            async with aclosing(stream_answer(service, request, client_id)) as answers:
                async for answer in answers:
                    await queue.put((i, answer))
        finally:
            queue.put_nowait((i, None))

    tasks = [asyncio.create_task(pump(i, r)) for i, r in enumerate(requests)]
    running = len(tasks)
    try:
        while running:
            i, answer = await queue.get()
            if answer is None:
                running -= 1
                continue
            latest[i] = answer
            while not queue.empty() and running:  # coalesce what piled up: one repaint, not many
                j, more = queue.get_nowait()
                if more is None:
                    running -= 1
                else:
                    latest[j] = more
            yield list(latest)
    finally:
        for task in tasks:  # a stopped compare aborts every stage's generation
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
