"""The blind arena: two stages, drawn by the server, answer one conversation as anonymous sides
a and b; the rater votes, and only then learns which stage was which.

What it knows: the request bodies (pydantic: the chat decoding settings, no `model`), how a turn
runs (both sides through the one `StageService`, concurrently, each continuing its own side of the
conversation), what a rater may see before the vote (each side's text and finish reason — no stage,
no response id, no usage, no speculation figures, no timing, nothing a stage could be told from
except its words), and that an error from one side must not name the stage either.
The pair is drawn by `server/arena_pairs.py` from the blind votes' interval widths, refreshed off
the event loop at most every `REFRESH_SECONDS` (or after a vote, at most once a second).

What it does not know: HTTP or WebSocket frames (`server/routes/arena.py`), SQL (`server/store/arena.py`).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field

from server.arena_pairs import draw_pair, interval_widths
from server.errors import APIError, bad_request, not_ready
from server.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    MinP,
    Penalty,
    RepetitionPenalty,
    Temperature,
    TopK,
    TopP,
    _Strict,
)
from server.serving import Generation, StageService
from server.store.records import ArenaVote, Battle, BattleSide

REFRESH_SECONDS = 30.0
SIDES = ("a", "b")


class Decoding(_Strict):
    """The decoding settings of a chat completion that an arena battle takes (the same for both sides;
    a stage's own defaults fill what is not set)."""

    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: TopK | None = None
    min_p: MinP | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    repetition_penalty: RepetitionPenalty | None = None


class BattleRequest(Decoding):
    """`POST /v1/arena/battles`."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    stages: Annotated[list[str], Field(min_length=2)] | None = None  # draw from these only (default: all)


class TurnRequest(_Strict):
    """`POST /v1/arena/battles/{id}/turns`: the user's next message; both sides answer it."""

    content: Annotated[str, Field(min_length=1)]


class VoteRequest(_Strict):
    """`POST /v1/arena/battles/{id}/vote`."""

    winner: str  # checked by the store: a | b | tie | both_bad
    reasons: list[str] | None = None
    comment: str | None = None


@dataclass
class SideDelta:
    side: str  # "a" | "b"
    text: str
    finish_reason: str | None = None


def blind_side(side: dict[str, Any]) -> dict[str, Any]:
    """What the rater sees of one side's answer before the vote."""
    return {"content": side["content"], "finish_reason": side["finish_reason"]}


def blind_battle(battle: Battle) -> dict[str, Any]:
    """A battle as its rater sees it; stages only once voted (`reveal`)."""
    last = battle.turns[-1] if battle.turns else None
    body: dict[str, Any] = {
        "id": battle.id,
        "object": "arena.battle",
        "status": battle.status,
        "turns": len(battle.turns),
        "a": blind_side(last["a"]) if last else None,
        "b": blind_side(last["b"]) if last else None,
        "history": [{"user": t["user"], "a": blind_side(t["a"]), "b": blind_side(t["b"])} for t in battle.turns],
    }
    return body


def reveal(battle: Battle, vote: ArenaVote) -> dict[str, Any]:
    """The answer to a vote: both stages named, with the answers they gave."""
    last = battle.turns[-1]
    return {
        "id": battle.id,
        "object": "arena.vote",
        "vote_id": vote.id,
        "winner": vote.winner,
        "reasons": vote.reasons,
        "comment": vote.comment,
        "a": {"stage": battle.stage_a, "response_id": last["a"]["response_id"], **blind_side(last["a"])},
        "b": {"stage": battle.stage_b, "response_id": last["b"]["response_id"], **blind_side(last["b"])},
    }


class ArenaService:
    """Opens battles, runs their turns and takes their votes, over a `StageService` and a `Store`."""

    def __init__(self, service: StageService, store):
        self.service = service
        self.store = store
        self._widths: dict[str, float] = {}
        self._widths_at = float("-inf")
        self._stale = True
        self._refreshing: asyncio.Lock | None = None
        self.rng = random.SystemRandom()  # the pair and the sides: unpredictable (tests may seed their own)

    # -- the draw -------------------------------------------------------------------------------

    def stages(self) -> list[str]:
        return list(self.service.pool.registry.stages)

    async def widths(self) -> dict[str, float]:
        """The blind leaderboard's interval widths per stage (cached; CPU and SQL off the loop)."""
        if self._refreshing is None:
            self._refreshing = asyncio.Lock()
        age = time.monotonic() - self._widths_at
        if age > REFRESH_SECONDS or (self._stale and age > 1.0):
            async with self._refreshing:
                if time.monotonic() - self._widths_at > 1.0:
                    stages = self.stages()
                    self._widths = await asyncio.to_thread(
                        lambda: interval_widths(self.store.iter_arena_judgements(), stages)
                    )
                    self._widths_at, self._stale = time.monotonic(), False
        return self._widths

    async def draw(self, allowed: list[str] | None) -> tuple[str, str]:
        known = self.stages()
        if allowed is None:
            candidates = known
        else:
            unknown = [s for s in allowed if s not in known]
            if unknown:
                raise APIError(
                    404,
                    f"Unknown stage(s) in 'stages': {', '.join(map(repr, unknown))}. Stages: {', '.join(known)}.",
                    type="not_found_error",
                    param="stages",
                    code="model_not_found",
                )
            candidates = sorted(set(allowed))
        if len(candidates) < 2:
            raise bad_request("A battle needs two different stages to draw from.", param="stages")
        return draw_pair(candidates, await self.widths(), self.rng)

    # -- battles --------------------------------------------------------------------------------

    async def open(self, body: BattleRequest, rater: str) -> tuple[Battle, AsyncIterator[SideDelta]]:
        """Check, draw, start: the battle (generating) and the stream of its first turn's deltas.

        Everything that can refuse the request (the draw, each side's checks and admission) runs
        before the battle is stored, so a refused battle leaves nothing behind."""
        if not self.service.pool.ready:
            raise not_ready()
        stage_a, stage_b = await self.draw(body.stages)
        messages = [m.plain() for m in body.messages]
        settings = body.model_dump(exclude_none=True, exclude={"messages", "stages"})
        gens = await self.start_pair(stage_a, stage_b, messages, messages, settings, rater)
        battle = await asyncio.to_thread(
            self.store.open_battle, rater=rater, stage_a=stage_a, stage_b=stage_b, messages=messages, settings=settings
        )
        return battle, self._run(battle, gens, None)

    async def turn(self, battle_id: str, body: TurnRequest, rater: str) -> tuple[Battle, AsyncIterator[SideDelta]]:
        """The next turn: both sides answer the user's new message, each after its own earlier answers."""
        if not self.service.pool.ready:
            raise not_ready()
        battle = await asyncio.to_thread(self.store.start_turn, battle_id, rater=rater)
        user = {"role": "user", "content": body.content}
        try:
            conv = {side: self._conversation(battle, side) + [user] for side in SIDES}
            gens = await self.start_pair(battle.stage_a, battle.stage_b, conv["a"], conv["b"], battle.settings, rater)
        except BaseException:
            await asyncio.to_thread(self.store.abandon_turn, battle.id)
            raise
        return battle, self._run(battle, gens, user)

    @staticmethod
    def _conversation(battle: Battle, side: str) -> list[dict[str, Any]]:
        messages = list(battle.messages)
        for t in battle.turns:
            if t["user"] is not None:
                messages.append(t["user"])
            messages.append({"role": "assistant", "content": t[side]["content"]})
        return messages

    async def start_pair(
        self, stage_a: str, stage_b: str, messages_a: list, messages_b: list, settings: dict[str, Any], rater: str
    ) -> tuple[Generation, Generation]:
        """Both sides' generations, checked and admitted but not yet run; an error names neither stage."""
        gens = []
        for stage, messages in ((stage_a, messages_a), (stage_b, messages_b)):
            try:
                request = ChatCompletionRequest(model=stage, messages=messages, **settings)
                gens.append(await self.service.chat(request, rater))
            except APIError as exc:
                raise _anonymous(exc) from None
        return gens[0], gens[1]

    async def _run(
        self, battle: Battle, gens: tuple[Generation, Generation], user: dict[str, Any] | None
    ) -> AsyncIterator[SideDelta]:
        """Both sides' deltas as they come; the finished turn is stored before the last is yielded
        (so a vote right after finds the battle ready). Closing it early aborts both and gives the
        turn up."""
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(side: str, gen: Generation) -> None:
            try:
                async for batch in gen:
                    for d in batch:
                        if d.index == 0 and (d.text or d.finish_reason):
                            await queue.put(SideDelta(side, d.text, d.finish_reason))
                await queue.put((side, None))
            except BaseException as exc:
                await queue.put((side, exc))
                raise

        tasks = [asyncio.create_task(pump(side, gen)) for side, gen in zip(SIDES, gens)]
        finished = False
        try:
            running = 2
            while running:
                item = await queue.get()
                if isinstance(item, tuple):
                    if item[1] is not None:
                        error = item[1]
                        raise _anonymous(error) if isinstance(error, APIError) else error
                    running -= 1
                    continue
                yield item
            sides = [
                BattleSide(response_id=g.id, content=g.choices[0].text, finish_reason=g.choices[0].finish_reason)
                for g in gens
            ]
            await asyncio.to_thread(self.store.finish_turn, battle.id, user=user, a=sides[0], b=sides[1])
            finished = True
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if not finished:
                await asyncio.shield(asyncio.to_thread(self.store.abandon_turn, battle.id))

    @asynccontextmanager
    async def running(self, started: tuple[Battle, AsyncIterator[SideDelta]]):
        """Around consuming a started turn's deltas: closes them, and gives the turn up if they were never
        run to the end (a generator closed before its first step runs none of its own clean-up)."""
        battle, deltas = started
        done = False
        try:
            yield deltas
            done = True
        finally:
            await deltas.aclose()
            if not done:
                await asyncio.shield(asyncio.to_thread(self.store.abandon_turn, battle.id))

    async def complete(self, started: tuple[Battle, AsyncIterator[SideDelta]]) -> Battle:
        """Run a started turn to its end (the non-streaming API); the battle as stored after it."""
        battle, deltas = started
        async with self.running(started):
            async for _ in deltas:
                pass
        return await asyncio.to_thread(self.store.get_battle, battle.id, rater=battle.rater)

    async def vote(self, battle_id: str, body: VoteRequest, rater: str) -> dict[str, Any]:
        vote, battle = await asyncio.to_thread(
            self.store.vote, battle_id, body.winner, rater=rater, reasons=body.reasons or (), comment=body.comment
        )
        self._stale = True  # the next draw refits the intervals
        return reveal(battle, vote)


def arena_for(service: StageService) -> ArenaService | None:
    """The one `ArenaService` of this `StageService` (the API and the UI share its draw), or None
    without a store."""
    if service.store is None:
        return None
    arena = getattr(service, "arena", None)
    if arena is None:
        arena = service.arena = ArenaService(service, service.store)
    return arena


def _anonymous(exc: APIError) -> APIError:
    """The same error (status, type, code, parameter, Retry-After) with a fixed message: a side's own
    message may name its stage, or hint at it (a context length, an outage's reason), and must not
    reveal the pair. The code and parameter say what to change."""
    param = None if exc.param == "model" else exc.param
    what = f"'{exc.code or exc.type}'" + (f" on '{param}'" if param else "")
    message = (
        f"One side of the battle could not answer ({what}); its own message is withheld, as it could name the stage."
    )
    return APIError(exc.status, message, type=exc.type, param=param, code=exc.code, headers=exc.headers)
