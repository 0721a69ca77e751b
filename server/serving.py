"""The serving layer: one service behind every front door (HTTP, WebSocket, UI).

It turns a validated OpenAI request into a prompt for the right engine (chat template, stage
defaults, context-length checks), streams the engine's deltas back, keeps the figures (usage,
timings, speculation), has a reward model score the answers when asked (`server.rewards`; the
finishing deltas wait for the scores, so a stream's final chunk carries them), records every answer
in the store (a log that cannot be written is logged and counted, never fails the answer), and
updates metrics. An engine failing mid-way finishes the unfinished answers with "error" before the
error reaches the front door (a dead engine: reported to the pool, a 503). It knows nothing
about SSE, WebSocket frames or Gradio: front doors render `Generation` deltas their own way.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
import weakref
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from server import metrics
from server.engine import Delta, EngineDead, EngineRequestError, SamplingSettings, SpeculativeFigures, TokenLogprob
from server.errors import APIError, bad_request, not_ready
from server.generation_log import GenerationLog
from server.limits import Lease, Limiter
from server.pool import EnginePool, Route
from server.prefill import PLAIN_STOP, chat_text, has_template, template_options
from server.protocol import ChatCompletionRequest, CompletionRequest
from server.rewards import RewardService, Score
from server.spec_marks import SpecMarks, align
from server.store.records import GenerationRecord, prompt_hash
from server.supervisor import unavailable
from server.tools import template_tools

log = logging.getLogger(__name__)


@dataclass
class Choice:
    index: int
    text: str = ""
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    speculative: SpeculativeFigures | None = None
    tokens: int = 0
    reward: Score | None = None  # the reward model's score, when the request asked for one
    groups: list[int] = field(default_factory=list)  # tokens per delta: where engine steps may end
    marks: SpecMarks | None = None  # speculation token by token, when the engine reported its steps


@dataclass
class Generation:
    """One request in flight: iterate it for batches of deltas; afterwards its fields hold the result."""

    id: str
    kind: str  # "chat" | "completion"
    stage: str
    created: int
    prompt_token_ids: list[int]
    settings: SamplingSettings
    route: Route
    prompt: list[dict[str, str]] | str  # chat messages, or completion text
    client_id: str
    choices: list[Choice] = field(default_factory=list)
    ttft_ms: float | None = None
    duration_ms: float = 0.0
    _service: StageService | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None  # when asked for: one per prompt token
    lease: Lease | None = None  # the admission limits' slot, released when the generation ends
    reward_model: str | None = None  # scores every answer once all have finished

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def completion_tokens(self) -> int:
        return sum(c.tokens for c in self.choices)

    @property
    def speculative(self) -> SpeculativeFigures | None:
        """Speculation figures summed over the choices (None when speculation did not run)."""
        figures = [c.speculative for c in self.choices if c.speculative]
        if not figures:
            return None
        drafted = sum(f.draft_tokens for f in figures)
        accepted = sum(f.accepted_tokens for f in figures)
        mean_len = sum(f.mean_acceptance_length * f.draft_tokens for f in figures) / max(drafted, 1)
        return SpeculativeFigures(
            figures[0].method, drafted, accepted, accepted / drafted if drafted else 0.0, mean_len if drafted else 1.0
        )

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }

    def __aiter__(self) -> AsyncIterator[list[Delta]]:
        return self._service._run(self)


async def drain(*gens: Generation) -> None:
    """Run generations to their end, side by side: for answers sent whole, not streamed."""

    async def one(gen: Generation) -> None:
        async for _ in gen:
            pass

    await asyncio.gather(*(one(gen) for gen in gens))


class StageService:
    def __init__(
        self,
        *,
        pool: EnginePool,
        store=None,
        log_prompts: bool = True,
        allow_lossy_speculation: bool = False,
        limiter: Limiter | None = None,
        rewards: RewardService | None = None,
    ):
        self.pool = pool
        self.rewards = rewards
        self.limiter = limiter
        self.store = store
        self._log = GenerationLog(store) if store is not None else None
        self.log_prompts = log_prompts
        self.allow_lossy_speculation = allow_lossy_speculation
        self._background: set[asyncio.Task] = set()

    # -- what is served --------------------------------------------------------------------------

    def stages(self) -> list[dict[str, Any]]:
        registry = self.pool.registry
        return [
            {
                "id": name,
                "description": stage.description,
                "parent": registry.parent(name),
                "speculative": list(registry.speculative_methods(name)),
                "default_speculative": stage.default_speculative,
                "kind": "stage",  # extension: /v1/models lists reward models too (kind "reward_model")
                "reward_model": stage.reward_model,
            }
            for name, stage in registry.stages.items()
        ]

    # -- starting a generation -------------------------------------------------------------------

    async def chat(self, request: ChatCompletionRequest, client_id: str = "anonymous") -> Generation:
        reward_model = self._reward_model(request)
        route = await self._route(request.model, request.speculative)
        messages = [m.plain() for m in request.messages]
        tokenizer = route.engine.tokenizer
        tools = template_tools(
            request,
            self.pool.registry.stages[request.model].tool_parser,
            getattr(tokenizer, "chat_template", None),
            request.model,
        )
        size = sum(len(str(m.get("content") or "")) for m in messages)
        options = template_options(request, tokenizer)  # prefill (a 400 where the template cannot)
        ids, stop = await _off_loop(size, render_chat, tokenizer, messages, tools, options)
        settings = self._settings(request, route, ids, param="messages")
        if stop:
            settings = _with_stop(settings, stop)
        await self._engine_check(route, settings, request)
        gen = self._generation("chatcmpl", "chat", request.model, ids, settings, route, messages, client_id)
        gen.reward_model = reward_model
        return gen

    async def complete(self, request: CompletionRequest, client_id: str = "anonymous") -> Generation:
        reward_model = self._reward_model(request)
        route = await self._route(request.model, request.speculative)
        text = request.prompt_text()
        ids = request.prompt_ids() or await _off_loop(len(text), route.engine.tokenizer.encode, text)
        if not ids:
            raise bad_request("The prompt is empty.", param="prompt")
        if not text:  # a token-id prompt: its text, for echo and the log
            text = await _off_loop(len(ids), route.engine.tokenizer.decode, ids)
        settings = self._settings(request, route, ids, param="prompt")
        await self._engine_check(route, settings, request)
        gen = self._generation("cmpl", "completion", request.model, ids, settings, route, text, client_id)
        gen.reward_model = reward_model
        return gen

    def _reward_model(self, request) -> str | None:
        """The reward model that scores this request's answers (asked for, or the stage's default).

        A reward model's name as `model` is a 400: it scores answers, it does not write them."""
        registry = self.pool.registry
        if request.model in registry.reward_models:
            raise bad_request(
                f"'{request.model}' is a reward model: it scores answers (POST /v1/rewards, or "
                '"reward_model" on a stage\'s request) but does not generate.',
                param="model",
                code="model_is_reward_model",
            )
        name = request.reward_model
        if name is None and request.model in registry.stages:
            name = registry.stages[request.model].reward_model
        if name is None:
            return None
        if name not in registry.reward_models:
            raise bad_request(
                f"Unknown reward_model '{name}'. Reward models: {', '.join(registry.reward_models) or 'none'}.",
                param="reward_model",
                code="model_not_found",
            )
        if self.rewards is None:
            raise bad_request("This server scores no answers (no reward service).", param="reward_model")
        return name

    async def _route(self, stage: str, speculative: str | None) -> Route:
        self.pool.resolve(stage, speculative)  # 404 / 400 before anything waits
        if not self.pool.ready:
            raise not_ready()
        return await self.pool.route(stage, speculative)

    def _settings(self, request, route: Route, ids: list[int], *, param: str) -> SamplingSettings:
        limit = route.engine.max_model_len
        room = limit - len(ids)
        if room < 1:
            raise bad_request(
                f"This model's maximum context length is {limit} tokens; the prompt has {len(ids)}.",
                param=param,
                code="context_length_exceeded",
            )
        defaults = self.pool.registry.stages[request.model].sampling
        asked = request.requested_max_tokens()
        if asked is not None and asked > room:
            raise bad_request(
                f"This model's maximum context length is {limit} tokens: {len(ids)} in the prompt leave room "
                f"for {room}, but max_tokens is {asked}.",
                param="max_tokens",
                code="context_length_exceeded",
            )
        max_tokens = asked if asked is not None else min(defaults.max_tokens or room, room)
        settings = request.to_settings(defaults, max_tokens)
        if settings.temperature > 0 and route.engine.lossy_when_sampling and not self.allow_lossy_speculation:
            # Speculation must never change what a request gets; where the engine is known to, say so.
            raise bad_request(
                f"Speculative method '{route.speculative_method}' changes the sampled output on this backend "
                "(vLLM CPU, draft model); use temperature 0, or speculative 'off' or another method.",
                param="speculative",
                code="speculation_not_lossless",
            )
        return settings

    async def _engine_check(self, route: Route, settings: SamplingSettings, request) -> None:
        """The engine's own validation (say, a JSON schema its structured-output backend cannot
        compile) as a 400 before anything starts. Compiling a grammar is CPU work: off the loop."""
        check = getattr(route.engine, "check", None)
        if check is None:  # an engine without its own validation (it answers errors itself)
            return
        try:
            if settings.structured is not None:
                await asyncio.to_thread(check, settings)
            else:
                check(settings)
        except EngineRequestError as exc:
            raise bad_request(
                str(exc), param=exc.param or request.structured_param(), code="invalid_request_for_engine"
            ) from None

    def _generation(self, prefix, kind, stage, ids, settings, route, prompt, client_id) -> Generation:
        # Admission comes last, after every check that could refuse the request, and before anything
        # reaches the engine: a 429 starts nothing.
        lease = self.limiter.admit(client_id, len(ids) + settings.max_tokens * settings.n) if self.limiter else None
        gen = Generation(
            id=f"{prefix}-{uuid.uuid4().hex}",
            kind=kind,
            stage=stage,
            created=int(time.time()),
            prompt_token_ids=ids,
            settings=settings,
            route=route,
            prompt=prompt,
            client_id=client_id,
            choices=[Choice(i) for i in range(settings.n)],
            _service=self,
            lease=lease,
        )
        if lease is not None:  # a generation dropped without being run still frees its slot
            weakref.finalize(gen, lease.release)
        return gen

    # -- running it ------------------------------------------------------------------------------

    async def _run(self, gen: Generation) -> AsyncIterator[list[Delta]]:
        stage = gen.stage
        itl = metrics.ITL.labels(stage)  # resolved once: this loop runs once per streamed batch
        speculative = gen.route.speculative_method is not None
        began = time.perf_counter()
        last = began
        outcome = "error"
        metrics.RUNNING.labels(stage).inc()
        stream = gen.route.engine.generate(gen.prompt_token_ids, gen.settings, gen.id, gen.route.adapter)
        held: list[Delta] = []  # finishing deltas wait for the reward scores, which the final chunk carries
        failed: Exception | None = None
        try:
            async for batch in stream:
                now = time.perf_counter()
                if gen.ttft_ms is None:
                    gen.ttft_ms = (now - began) * 1000
                    metrics.TTFT.labels(stage).observe(now - began)
                else:
                    itl.observe(now - last)
                last = now
                for delta in batch:
                    choice = gen.choices[delta.index]
                    choice.text += delta.text
                    choice.tokens += len(delta.token_ids)
                    if delta.token_ids and speculative:  # only speculation's marks read them
                        choice.groups.append(len(delta.token_ids))
                    if delta.logprobs:
                        choice.logprobs.extend(delta.logprobs)
                    if delta.prompt_logprobs is not None:
                        gen.prompt_logprobs = delta.prompt_logprobs
                    if delta.finish_reason:
                        choice.finish_reason = delta.finish_reason
                        choice.speculative = delta.speculative
                        if delta.speculative is not None and delta.speculative.steps:
                            choice.marks = align(choice.groups, delta.speculative.steps)
                if gen.reward_model is not None:
                    held += [d for d in batch if d.finish_reason]
                    batch = [d for d in batch if not d.finish_reason]
                    if all(c.finish_reason for c in gen.choices):
                        await self._score(gen)
                        batch, held = batch + held, []
                    if not batch:
                        continue
                yield batch
            outcome = "ok"
        except Exception as exc:  # ended below, in-band: the front doors say so, never a bare reset
            failed = exc
        except (asyncio.CancelledError, GeneratorExit):
            outcome = "cancelled"
            # A stopped answer can still be rated: record it, without holding up the cancellation.
            self._background.add(task := asyncio.get_running_loop().create_task(self._record(gen)))
            task.add_done_callback(self._background.discard)
            raise
        finally:
            await stream.aclose()  # aborts in the engine when the consumer left early
            gen.duration_ms = (time.perf_counter() - began) * 1000
            metrics.RUNNING.labels(stage).dec()
            if gen.lease is not None:
                gen.lease.release(gen.prompt_tokens + gen.completion_tokens)
            metrics.REQUESTS.labels(stage, gen.kind, outcome).inc()
            metrics.PROMPT_TOKENS.labels(stage).inc(gen.prompt_tokens)
            metrics.COMPLETION_TOKENS.labels(stage).inc(gen.completion_tokens)
            spec = gen.speculative
            if spec:
                metrics.SPEC_DRAFT.labels(stage, spec.method).inc(spec.draft_tokens)
                metrics.SPEC_ACCEPTED.labels(stage, spec.method).inc(spec.accepted_tokens)
        if failed is not None:
            async for batch in self._failed(gen, failed, held):
                yield batch
        # Recorded before the caller sends its final frame, so a rating right after always finds it.
        await self._record(gen)

    async def _failed(self, gen: Generation, exc: Exception, held: list[Delta]) -> AsyncIterator[list[Delta]]:
        """The engine failed under `gen`: its unfinished answers finish with "error" (one last batch, which
        the front doors render as usual), then the caller gets the error. An engine that died is a 503
        while the pool restarts it; anything else goes on as it was (the front doors log it, with an id)."""
        outage = None
        if isinstance(exc, EngineDead):
            log.error("generation %s (stage %s) broken: its engine died: %s", gen.id, gen.stage, exc)
            outage = self.pool.engine_died(gen.route.engine, str(exc))
        unfinished = [c for c in gen.choices if not c.finish_reason]
        for choice in unfinished:
            choice.finish_reason = "error"
        await self._record(gen)  # what was served is kept, marked "error"
        yield held + [Delta(c.index, "", [], finish_reason="error") for c in unfinished]
        if not isinstance(exc, EngineDead):
            raise exc
        if outage is not None:
            raise unavailable(f"Stage '{gen.stage}'", outage)
        raise APIError(
            503,
            f"Stage '{gen.stage}' is unavailable: its engine died during the generation; retry shortly.",
            type="service_unavailable",
            code="engine_restarting",
            headers={"Retry-After": "1"},
        )

    async def _score(self, gen: Generation) -> None:
        """Every answer's reward; a failure leaves the answers unscored (and says why), never fails them."""
        try:
            scores = await self.rewards.score_answers(gen.reward_model, gen.prompt, [c.text for c in gen.choices])
        except Exception as exc:
            log.exception("could not score generation %s", gen.id)
            scores = [Score(gen.reward_model, None, f"scoring failed: {exc}")] * len(gen.choices)
        for choice, score in zip(gen.choices, scores):
            choice.reward = score

    async def _record(self, gen: Generation) -> None:
        if self.store is None:
            return
        records = []
        for choice in gen.choices:
            spec = choice.speculative
            records.append(
                GenerationRecord(
                    id=gen.id if choice.index == 0 else f"{gen.id}:{choice.index}",
                    stage=gen.stage,
                    client_id=gen.client_id,
                    kind=gen.kind,
                    prompt_hash=prompt_hash(gen.prompt),
                    messages=gen.prompt if (self.log_prompts and gen.kind == "chat") else None,
                    prompt=gen.prompt if (self.log_prompts and gen.kind == "completion") else None,
                    completion=choice.text if self.log_prompts else None,
                    sampling=asdict(gen.settings),
                    speculative_method=gen.route.speculative_method,
                    # the per-step pairs (marks) stay out of the log: the figures are what it has always kept
                    speculative={k: v for k, v in asdict(spec).items() if k != "steps"} if spec else None,
                    prompt_tokens=gen.prompt_tokens,
                    completion_tokens=choice.tokens,
                    finish_reason=choice.finish_reason,
                    ttft_ms=gen.ttft_ms,
                    duration_ms=gen.duration_ms,
                    created_at=datetime.fromtimestamp(gen.created, timezone.utc),
                    reward_model=choice.reward.model if choice.reward else None,
                    reward_score=choice.reward.score if choice.reward else None,
                )
            )
        try:
            # Bounded: an unreachable database must not hold the answer's last frame. The write goes on
            # in the background (shielded), so a store that is only slow still gets the row.
            await asyncio.wait_for(asyncio.shield(self._log.write(records)), GENERATION_LOG_WAIT)
        except Exception as exc:  # the answer was served; a failed log must not turn it into an error
            metrics.GENERATION_LOG_FAILURES.inc()
            if isinstance(exc, TimeoutError):
                log.error(
                    "could not record generation %s within %.0f s (is the database down?); the answer "
                    "is served unrecorded",
                    gen.id,
                    GENERATION_LOG_WAIT,
                )
            else:
                log.exception("could not record generation %s; the answer is served unrecorded", gen.id)


# Seconds an answer's last frame waits for its generation-log row before going out without it.
GENERATION_LOG_WAIT = 10.0

# Prompts longer than this (characters) are templated and tokenised in a worker thread: a big one
# takes seconds of CPU (16 MB froze /health for 22 s), while a short one costs less than the hop.
OFF_LOOP_CHARS = 8192


async def _off_loop(size: int, fn, *args):
    if size > OFF_LOOP_CHARS:
        return await asyncio.to_thread(fn, *args)
    return fn(*args)


def render_chat(
    tokenizer, messages: list[dict[str, str]], tools: list[dict] | None = None, options: dict[str, Any] | None = None
) -> tuple[list[int], tuple[str, ...]]:
    """The prompt's token ids for a chat (`server.prefill.chat_text`), and the stop strings its format
    needs (the plain transcript's next user turn)."""
    stop = () if has_template(tokenizer) else (PLAIN_STOP,)
    return tokenizer.encode(chat_text(tokenizer, messages, tools, options), add_special_tokens=False), stop


def _with_stop(settings: SamplingSettings, extra: tuple[str, ...]) -> SamplingSettings:
    from dataclasses import replace

    return replace(settings, stop=settings.stop + tuple(s for s in extra if s not in settings.stop))
