"""The same text, scored by every stage: how likely each stage finds one fixed answer to a conversation.

The conversation is rendered by the stage's chat template (as a chat request would be), the answer
tokens are appended, and the whole is scored as a prompt — a completions request with `echo`,
`logprobs` and `max_tokens: 0` through the shared service, exactly what an API client would send.
The answer's per-token logprobs are the prompt logprobs after the conversation's tokens. Knows the
service and the pool's tokenizers; nothing about HTTP or Gradio.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field

from server.errors import APIError
from server.protocol import CompletionRequest
from server.serving import StageService, render_chat


@dataclass
class StageScore:
    """One stage's view of the answer: its tokens and their logprobs under that stage."""

    stage: str
    tokens: list[str] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def mean_logprob(self) -> float | None:
        """Mean log-likelihood per answer token (higher: the stage finds the answer more natural)."""
        return sum(self.logprobs) / len(self.logprobs) if self.logprobs else None

    @property
    def perplexity(self) -> float | None:
        mean = self.mean_logprob
        return math.exp(-mean) if mean is not None else None


async def answer_ids(
    service: StageService, stage: str, messages: list[dict[str, str]], answer: str
) -> tuple[list[int], int]:
    """The token ids of conversation + answer for `stage`, and where the answer starts."""
    service.pool.resolve(stage, None)
    tokenizer = (await service.pool.route(stage)).engine.tokenizer
    prompt, _ = await asyncio.to_thread(render_chat, tokenizer, messages)
    answer_part = await asyncio.to_thread(tokenizer.encode, answer, add_special_tokens=False)
    return prompt + answer_part, len(prompt)


async def score_answer(
    service: StageService, stage: str, messages: list[dict[str, str]], answer: str, client_id: str = "ui"
) -> StageScore:
    """`stage`'s logprob of every token of `answer` after `messages` (errors reported, not raised)."""
    try:
        ids, start = await answer_ids(service, stage, messages, answer)
        if start == len(ids):
            return StageScore(stage, error="The answer is empty.")
        request = CompletionRequest(model=stage, prompt=ids, echo=True, logprobs=0, max_tokens=0)
        gen = await service.complete(request, client_id)
        async for _ in gen:
            pass
        scored = (gen.prompt_logprobs or [])[start:]
        return StageScore(stage, tokens=[lp.token for lp in scored], logprobs=[lp.logprob for lp in scored])
    except APIError as exc:
        return StageScore(stage, error=exc.message)


async def score_everywhere(
    service: StageService, stages: list[str], messages: list[dict[str, str]], answer: str, client_id: str = "ui"
) -> list[StageScore]:
    """Every stage's score of the same answer, run concurrently (adapter stages share one engine)."""
    return list(await asyncio.gather(*(score_answer(service, s, messages, answer, client_id) for s in stages)))
