"""Reward scoring: the registry's reward models, each on its own engine, scoring (prompt, answer) pairs.

What it knows: which reward models the registry names (`reward_models:`), one engine per model
(started with the server, so `/ready` covers them; `reload` starts new ones and stops removed
ones), and how an answer is shown to a reward model — exactly as TRL's `RewardTrainer` and
`RLOOTrainer` show it in training: the chat template over the prompt's messages plus the answer as
an assistant message (a plain transcript when the checkpoint has no template), or, for a text
prompt, prompt + answer + EOS. Tokenising runs in a worker thread and the engine in its own
processes, so scoring never holds up the event loop. A reward engine that dies is restarted by a
`Supervisor` (server/supervisor.py) with backoff; meanwhile scoring with it is a 503 naming the model.

What it does not know: HTTP, OpenAI bodies, or how answers are generated (`server.serving` asks
it to score finished answers; `server.routes.rewards` serves `POST /v1/rewards`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from server import metrics
from server.engine import EngineDead
from server.errors import APIError, bad_request, not_found
from server.prefill import chat_text
from server.registry import Registry
from server.supervisor import Supervisor, unavailable

log = logging.getLogger(__name__)

Prompt = list[dict[str, Any]] | str  # chat messages, or a completion's text


class RewardEngine(Protocol):
    max_model_len: int
    tokenizer: Any

    async def start(self) -> None: ...

    async def score(self, prompts: list[list[int]]) -> list[float]: ...

    async def shutdown(self) -> None: ...


RewardEngineFactory = Callable[[str, dict[str, Any]], RewardEngine]


def vllm_reward_factory(model: str, engine_args: dict[str, Any]) -> RewardEngine:
    from server.reward_engine import VllmRewardEngine

    return VllmRewardEngine(model, engine_args=engine_args)


class TooLong(ValueError):
    """An input does not fit the reward model's context."""

    def __init__(self, index: int, tokens: int, limit: int):
        super().__init__(f"input {index} has {tokens} tokens; the reward model's context is {limit}")
        self.index, self.tokens, self.limit = index, tokens, limit


@dataclass(frozen=True)
class Score:
    """One answer's reward, or why there is none (an answer that outgrew the reward model's context)."""

    model: str
    score: float | None
    error: str | None = None


def render(tokenizer, prompt: Prompt, completion: str) -> list[int]:
    """The token ids a reward model scores for `completion` as the answer to `prompt`."""
    if isinstance(prompt, str):  # TRL adds EOS to non-conversational rows
        return tokenizer.encode(prompt + completion + (tokenizer.eos_token or ""), add_special_tokens=False)
    messages = [{"role": m["role"], "content": m.get("content") or ""} for m in prompt]
    messages.append({"role": "assistant", "content": completion})
    # The whole exchange, the answer closed: the template's rendering, or the plain transcript.
    text = chat_text(tokenizer, messages, add_generation_prompt=False)
    return tokenizer.encode(text, add_special_tokens=False)


class RewardService:
    def __init__(self, registry: Registry, factory: RewardEngineFactory = vllm_reward_factory):
        self.registry = registry
        self.factory = factory
        self._engines: dict[str, RewardEngine] = {}  # by checkpoint path: two names may share one
        self._lock = asyncio.Lock()
        self.ready = not registry.reward_models
        self.supervisor = Supervisor()

    # -- what is served ------------------------------------------------------------------------------

    def names(self) -> list[str]:
        return list(self.registry.reward_models)

    def models(self) -> list[dict[str, Any]]:
        return [{"id": name, "description": rm.description} for name, rm in self.registry.reward_models.items()]

    def check(self, name: str, *, param: str = "model") -> None:
        """404 unless `name` is a reward model."""
        if name not in self.registry.reward_models:
            known = ", ".join(self.registry.reward_models) or "none"
            raise not_found(
                f"The reward model '{name}' does not exist. Reward models: {known}.",
                param=param,
                code="model_not_found",
            )

    def starting(self) -> list[str]:
        """The reward models not started yet (before `start` has reached them)."""
        if self.ready:
            return []
        return [name for name, rm in self.registry.reward_models.items() if rm.model not in self._engines]

    # -- life cycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        for name in self.registry.reward_models:
            await self._engine(name)
        self.ready = True
        self.supervisor.watch(lambda: dict(self._engines), self.engine_died)

    # -- healing -------------------------------------------------------------------------------------

    def engine_died(self, engine: RewardEngine, reason: str) -> None:
        """`engine` died: out of service now; the supervisor restarts it (a second report is ignored)."""
        model = next((m for m, e in self._engines.items() if e is engine), None)
        if model is None or not self.ready:  # not ours any more, or shutting down
            return
        del self._engines[model]

        async def restart() -> None:
            async with self._lock:
                fresh = self.factory(model, dict(self.registry.engine))
                await fresh.start()
                self._engines[model] = fresh

        self.supervisor.died(model, f"reward:{model}", reason, engine, restart)

    def down(self) -> list[dict[str, Any]]:
        """The reward engines that are down, with the reward models they serve."""
        return [
            {
                **outage.describe(),
                "model": model,
                "reward_models": [n for n, rm in self.registry.reward_models.items() if rm.model == model],
            }
            for model, outage in self.supervisor.down.items()
        ]

    async def reload(self, registry: Registry) -> list[str]:
        """Adopt a changed registry: start engines for new reward models, stop unused ones; returns
        the reward models added."""
        added = [n for n in registry.reward_models if n not in self.registry.reward_models]
        wanted = {rm.model for rm in registry.reward_models.values()}
        old = self.registry
        self.registry = registry
        try:
            for name, rm in registry.reward_models.items():
                if self.supervisor.outage(rm.model) is None:  # one that is down comes back by itself
                    await self._engine(name)
        except Exception:
            self.registry = old
            raise
        async with self._lock:
            for model in [m for m in self._engines if m not in wanted]:
                await self._engines.pop(model).shutdown()
        self.ready = True
        return added

    async def _engine(self, name: str) -> RewardEngine:
        model = self.registry.reward_models[name].model
        if (outage := self.supervisor.outage(model)) is not None:
            raise unavailable(f"Reward model '{name}'", outage)
        async with self._lock:  # one engine starts at a time: two starting at once starve each other
            if model not in self._engines:
                log.info("starting reward engine %s (%s)", name, model)
                engine = self.factory(model, dict(self.registry.engine))
                await engine.start()
                self._engines[model] = engine
                metrics.ENGINE_RESTARTS.labels(f"reward:{model}")  # listed in /metrics from the start, at 0
            return self._engines[model]

    async def shutdown(self) -> None:
        self.ready = False
        await self.supervisor.shutdown()
        for engine in self._engines.values():
            await engine.shutdown()
        self._engines.clear()

    # -- scoring -------------------------------------------------------------------------------------

    async def score(self, name: str, items: list[tuple[Prompt, str]]) -> list[float]:
        """Scores of (prompt, answer) pairs; raises `TooLong` naming the first input over the context."""
        self.check(name)
        if not self.ready:
            raise APIError(
                503,
                "The reward models are still starting; retry shortly.",
                type="service_unavailable",
                code="not_ready",
            )
        engine = await self._engine(name)

        def tokenise() -> list[list[int]]:
            prompts = [render(engine.tokenizer, prompt, answer) for prompt, answer in items]
            for i, ids in enumerate(prompts):
                if len(ids) > engine.max_model_len:
                    raise TooLong(i, len(ids), engine.max_model_len)
            return prompts

        prompts = await asyncio.to_thread(tokenise)  # chat templates and tokenisers are CPU work
        try:
            return await engine.score(prompts)
        except EngineDead as exc:
            log.error("reward model %s: its engine died: %s", name, exc)
            self.engine_died(engine, str(exc))
            outage = self.supervisor.outage(self.registry.reward_models[name].model)
            if outage is None:  # reported already, and restarted since
                raise APIError(
                    503,
                    f"Reward model '{name}' is unavailable: its engine died; retry shortly.",
                    type="service_unavailable",
                    code="engine_restarting",
                    headers={"Retry-After": "1"},
                ) from None
            raise unavailable(f"Reward model '{name}'", outage) from None

    async def score_answers(self, name: str, prompt: Prompt, answers: list[str]) -> list[Score]:
        """Scores of a generation's answers; one that does not fit gets a Score with the reason."""
        try:
            scores = await self.score(name, [(prompt, a) for a in answers])
            return [Score(name, s) for s in scores]
        except TooLong:
            pass
        results = []
        for answer in answers:  # only some may be too long: score the rest one by one
            try:
                results.append(Score(name, (await self.score(name, [(prompt, answer)]))[0]))
            except TooLong as exc:
                results.append(
                    Score(
                        name,
                        None,
                        f"prompt + answer has {exc.tokens} tokens; the reward model's context is {exc.limit}",
                    )
                )
        return results


def too_long_error(exc: TooLong, param: str = "input") -> APIError:
    return bad_request(
        f"Input {exc.index} has {exc.tokens} tokens (prompt + completion as the reward model "
        f"reads them); the reward model's maximum context length is {exc.limit}.",
        param=f"{param}[{exc.index}]",
        code="context_length_exceeded",
    )
