"""`ScriptedEngine`: a fake `Engine` that replays scripted text, for unit tests of the serving logic.

It "generates" the words of a script one token at a time (a token is a word with its leading
space), honours max_tokens (0: score only), stop strings, n, logprobs, prompt logprobs and abort,
and counts running requests like vLLM does. `die()` kills it as the OOM killer would a vLLM worker:
streams in flight raise `EngineDead` at their next token, and `dead()` says so. Structured outputs it
cannot decode: `check` refuses them, as an engine without a structured-output backend would. It knows no
model: what it says is the script, whatever the prompt. Integration tests use `VllmEngine` on a real
checkpoint instead.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import AsyncIterator

from server.engine import (
    AdapterRef,
    Delta,
    EngineDead,
    EngineRequestError,
    EngineStats,
    SamplingSettings,
    SpeculativeFigures,
    TokenLogprob,
)

VOCAB_SIZE = 1000


class FakeTokenizer:
    """Whitespace tokenizer with a tiny chat template, enough for prompt-length checks; it remembers
    the words it has encoded, so it can decode them again."""

    chat_template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}<|assistant|>"
    eos_token = "</s>"

    def __init__(self):
        self.words: dict[int, str] = {}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = []
        for w in text.split():
            ids.append(i := hash(w) % VOCAB_SIZE)
            self.words.setdefault(i, w)
        return ids

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [self.words.get(i, f"<{i}>") for i in ids]

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return " ".join(self.convert_ids_to_tokens(list(ids)))

    def apply_chat_template(self, conversation, tokenize=False, add_generation_prompt=True, **kwargs):
        import jinja2

        return jinja2.Template(self.chat_template).render(messages=conversation)


class ScriptedEngine:
    def __init__(
        self,
        script: str = "The capital of Kenya is Nairobi.",
        *,
        max_model_len: int = 64,
        delay: float = 0.0,
        speculative_method: str | None = None,
        lossy_when_sampling: bool = False,
    ):
        self.script = script
        self.max_model_len = max_model_len
        self.delay = delay  # seconds between tokens, so tests can disconnect mid-stream
        self.speculative_method = speculative_method
        self.lossy_when_sampling = lossy_when_sampling
        self.tokenizer = FakeTokenizer()
        self.running: set[str] = set()
        self.aborted: list[str] = []
        self.requests: list[tuple[list[int], SamplingSettings, AdapterRef | None]] = []
        self.started = False
        self.death: str | None = None

    async def start(self) -> None:
        self.started = True

    def die(self, reason: str = "EngineCore encountered an issue.") -> None:
        """Die now: every stream in flight fails at its next token; nothing more runs."""
        self.death = reason

    def dead(self) -> str | None:
        return self.death

    def _check_alive(self) -> None:
        if self.death is not None:
            raise EngineDead(self.death)

    async def warm_up(self, adapters: list[AdapterRef]) -> None:
        pass

    def check(self, settings: SamplingSettings) -> None:
        if settings.structured is not None:
            raise EngineRequestError("The scripted engine has no structured-output decoder.")
        bad = [i for i, _ in settings.logit_bias if not 0 <= i < VOCAB_SIZE]
        if bad:
            raise EngineRequestError(f"logit_bias has token ids outside the vocabulary: {bad}", "logit_bias")

    async def generate(
        self,
        prompt_token_ids: list[int],
        settings: SamplingSettings,
        request_id: str,
        adapter: AdapterRef | None = None,
    ) -> AsyncIterator[list[Delta]]:
        self._check_alive()
        self.requests.append((prompt_token_ids, settings, adapter))
        self.running.add(request_id)
        tokens = re.findall(r"\s*\S+", self.script)
        texts = [""] * settings.n
        done = [False] * settings.n
        prompt_logprobs = None
        if settings.prompt_logprobs is not None:  # every prompt token "had" probability 1/2
            words = self.tokenizer.convert_ids_to_tokens(prompt_token_ids)
            prompt_logprobs = [None] + [
                TokenLogprob(w, math.log(0.5), ((w, math.log(0.5)),), i, 1, (i,))
                for w, i in zip(words[1:], prompt_token_ids[1:])
            ]
        try:
            if settings.max_tokens == 0:
                await asyncio.sleep(0)
                yield [
                    Delta(i, "", [], None, "length", prompt_logprobs=prompt_logprobs if i == 0 else None)
                    for i in range(settings.n)
                ]
                done = [True] * settings.n
                return
            for step in range(len(tokens)):
                if self.delay:
                    await asyncio.sleep(self.delay)
                else:
                    await asyncio.sleep(0)
                self._check_alive()
                batch = []
                for i in range(settings.n):
                    if done[i]:
                        continue
                    piece = tokens[step]
                    texts[i] += piece
                    finish = None
                    stop = next((s for s in settings.stop if s in texts[i]), None)
                    if stop is not None:
                        cut = texts[i].index(stop)
                        piece = piece[: len(piece) - (len(texts[i]) - cut)]
                        finish = "stop"
                    elif step + 1 >= settings.max_tokens:
                        finish = "length"
                    elif step + 1 == len(tokens):
                        finish = "stop"
                    done[i] = finish is not None
                    logprobs = None
                    if settings.logprobs is not None:
                        top = tuple((t, math.log(0.5 ** (r + 1))) for r, t in enumerate(tokens[: settings.logprobs]))
                        logprobs = [TokenLogprob(piece, math.log(0.5), top)]
                    spec = None
                    if finish and self.speculative_method:
                        spec = SpeculativeFigures(self.speculative_method, 8, 6, 0.75, 2.5)
                    batch.append(Delta(i, piece, [step], logprobs, finish, spec))
                if step == 0 and batch:
                    batch[0].prompt_logprobs = prompt_logprobs
                yield batch
                if all(done):
                    return
        finally:
            if request_id in self.running and not all(done):
                self.aborted.append(request_id)
            self.running.discard(request_id)

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)
        self.running.discard(request_id)

    def stats(self) -> EngineStats:
        return EngineStats(running_requests=len(self.running))

    async def shutdown(self) -> None:
        self.started = False
