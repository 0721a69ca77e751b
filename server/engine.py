"""The `Engine` protocol: what the serving layer needs from a text-generation engine.

An engine knows token ids, sampling and adapters; it knows nothing about HTTP, OpenAI types, chat
templates or stages. Two implementations: `server.vllm_engine.VllmEngine` (a real vLLM `AsyncLLM`)
and `server.fake_engine.ScriptedEngine` (scripted tokens, for unit tests of the serving logic).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class StructuredOutput:
    """A constraint on what may be generated, decoded by the engine's structured-output backend.

    kind: "json" (value: a JSON schema, serialised), "json_object" (any JSON object), "regex",
    "choice" (value: a JSON list of strings) or "grammar" (an EBNF / Lark grammar)."""

    kind: str
    value: str = ""


class EngineRequestError(ValueError):
    """The engine refuses a request's settings (say, a JSON schema its decoder cannot compile)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class EngineDead(RuntimeError):
    """The engine died (its process was killed, its core crashed): nothing it was running will finish,
    and nothing more will run on it until it is restarted. `generate` raises it mid-stream; the pool's
    supervisor (`server.supervisor`) restarts the engine."""


@dataclass(frozen=True)
class SamplingSettings:
    """Decoding settings of one request, already validated (plain data, engine-neutral)."""

    max_tokens: int  # 0: generate nothing, only score the prompt (with prompt_logprobs)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    n: int = 1
    logprobs: int | None = None  # None = none; k = the sampled token plus the top k alternatives
    ignore_eos: bool = False
    prompt_logprobs: int | None = None  # None = none; k = each prompt token plus its top k alternatives
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit)
    structured: StructuredOutput | None = None


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()  # the k most likely tokens at this position
    token_id: int | None = None
    rank: int | None = None  # 1 = the most likely token at this position
    top_ids: tuple[int, ...] = ()  # the token ids of `top`, in the same order


@dataclass(frozen=True)
class SpeculativeFigures:
    """What speculation did for one sequence (from vLLM's per-request metrics)."""

    method: str
    draft_tokens: int
    accepted_tokens: int
    acceptance_rate: float
    mean_acceptance_length: float
    # (drafted, accepted) per verify step in order, when the engine reports them (`server.spec_marks`)
    steps: tuple[tuple[int, int], ...] = ()


@dataclass
class Delta:
    """New output of one sequence (`index` < n) since the last delta."""

    index: int
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None  # "stop" | "length" | None while running
    speculative: SpeculativeFigures | None = None  # on the finishing delta, when speculation ran
    # On the first delta of index 0, when asked for: one entry per prompt token, the first None
    # (nothing precedes it to predict it).
    prompt_logprobs: list[TokenLogprob | None] | None = None


@dataclass(frozen=True)
class AdapterRef:
    """A LoRA adapter served on an engine's checkpoint, per request."""

    name: str
    path: str
    int_id: int  # vLLM's LoRARequest needs a stable positive integer per adapter


@dataclass
class EngineStats:
    running_requests: int = 0
    waiting_requests: int = 0
    extra: dict[str, float] = field(default_factory=dict)


class Tokenizer(Protocol):
    """The part of a Hugging Face tokenizer the serving layer uses."""

    chat_template: str | None
    eos_token: str | None

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, token_ids: list[int], skip_special_tokens: bool = ...) -> str: ...

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]: ...

    def apply_chat_template(self, conversation, **kwargs): ...


class Engine(Protocol):
    max_model_len: int
    tokenizer: Tokenizer
    speculative_method: str | None  # None when this engine runs without speculation
    # True when this engine's speculation is known to change what sampling (temperature > 0) returns
    lossy_when_sampling: bool

    async def start(self) -> None:
        """Load the model and warm it up; returns when the engine can serve."""

    def check(self, settings: SamplingSettings) -> None:
        """Raise `EngineRequestError` if this engine cannot run `settings` (blocking: may compile a
        grammar, so callers run it off the event loop)."""

    def generate(
        self,
        prompt_token_ids: list[int],
        settings: SamplingSettings,
        request_id: str,
        adapter: AdapterRef | None = None,
    ) -> AsyncIterator[list[Delta]]:
        """Stream batches of deltas until every sequence has finished.

        Closing the iterator early (a client went away) aborts the request in the engine."""

    async def abort(self, request_id: str) -> None: ...

    def stats(self) -> EngineStats: ...

    def dead(self) -> str | None:
        """None while the engine can serve; once it has died, why (cheap: the pool polls it)."""

    async def shutdown(self) -> None: ...
