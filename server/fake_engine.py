"""`ScriptedEngine`: a fake `Engine` that replays scripted text, for unit tests of the serving logic.

It "generates" the words of a script one token at a time (a token is a word with its leading
space), honours max_tokens, stop strings, n, logprobs and abort, and counts running requests like
vLLM does. It knows no model: what it says is the script, whatever the prompt. Integration tests
use `VllmEngine` on a real checkpoint instead.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import AsyncIterator

from server.engine import AdapterRef, Delta, EngineStats, SamplingSettings, SpeculativeFigures, TokenLogprob


class FakeTokenizer:
    """Whitespace tokenizer with a tiny chat template, enough for prompt-length checks."""

    chat_template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}<|assistant|>"
    eos_token = "</s>"

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [hash(w) % 1000 for w in text.split()]

    def apply_chat_template(self, conversation, tokenize=False, add_generation_prompt=True, **kwargs):
        import jinja2

        return jinja2.Template(self.chat_template).render(messages=conversation)


class ScriptedEngine:
    def __init__(self, script: str = "The capital of Kenya is Nairobi.", *, max_model_len: int = 64,
                 delay: float = 0.0, speculative_method: str | None = None, lossy_when_sampling: bool = False):
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

    async def start(self) -> None:
        self.started = True

    async def warm_up(self, adapters: list[AdapterRef]) -> None:
        pass

    async def generate(self, prompt_token_ids: list[int], settings: SamplingSettings, request_id: str,
                       adapter: AdapterRef | None = None) -> AsyncIterator[list[Delta]]:
        self.requests.append((prompt_token_ids, settings, adapter))
        self.running.add(request_id)
        tokens = re.findall(r"\s*\S+", self.script)
        texts = [""] * settings.n
        done = [False] * settings.n
        try:
            for step in range(len(tokens)):
                if self.delay:
                    await asyncio.sleep(self.delay)
                else:
                    await asyncio.sleep(0)
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
