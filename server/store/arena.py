"""The blind arena's store: battles (two stages on sides a and b, the turns of the conversation) and
their votes, one per battle; read back as blind judgements for the leaderboard.

What it knows: the `arena_battles` and `arena_votes` tables; a battle's life (generating → ready →
(generating → ready)* → voted, or failed when its first turn could not be answered); that a battle
belongs to the rater who opened it (anyone else's look-up is `UnknownItem`, as if it did not exist);
that a vote needs a ready battle (`BattleConflict` while a turn is generating or once voted), and that
the unique `battle_id` of a vote keeps a second one out even when two arrive at once.

What it does not know: how stages are drawn or answers produced (`server/arena.py`), or HTTP.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from server.store.base import StoreBase
from server.store.records import (
    WINNERS,
    ArenaVote,
    Battle,
    BattleConflict,
    BattleSide,
    InvalidFeedback,
    Judgement,
    UnknownItem,
    utcnow,
)
from server.store.schema import ArenaVoteRow, BattleRow, GenerationRow

_GROUPS = {"a": [[0], [1]], "b": [[1], [0]], "tie": [[0, 1]], "both_bad": [[0, 1]]}
MAX_REASONS = 16


def new_battle_id() -> str:
    """192 random bits, URL-safe: a battle id cannot be guessed (nor its stages told from it)."""
    return secrets.token_urlsafe(24)


def _battle(row: BattleRow) -> Battle:
    return Battle(
        id=row.id,
        rater=row.rater,
        stage_a=row.stage_a,
        stage_b=row.stage_b,
        status=row.status,
        messages=list(row.messages),
        settings=dict(row.settings),
        turns=list(row.turns),
        created_at=row.created_at,
        updated_at=row.updated_at,
        campaign_id=row.campaign_id,
        item_id=row.item_id,
        gold=row.gold,
    )


def _vote(row: ArenaVoteRow) -> ArenaVote:
    return ArenaVote(
        id=row.id,
        battle_id=row.battle_id,
        rater=row.rater,
        winner=row.winner,
        stage_a=row.stage_a,
        stage_b=row.stage_b,
        response_a=row.response_a,
        response_b=row.response_b,
        reasons=list(row.reasons or []),
        comment=row.comment,
        created_at=row.created_at,
    )


class ArenaStore(StoreBase):
    """The store's arena methods (a mixin of `Store`)."""

    # -- battles --------------------------------------------------------------------------------

    def open_battle(
        self, *, rater: str, stage_a: str, stage_b: str, messages: list[dict[str, Any]], settings: dict[str, Any]
    ) -> Battle:
        """A new battle, generating its first turn."""
        now = utcnow()
        row = BattleRow(
            id=new_battle_id(),
            rater=rater,
            stage_a=stage_a,
            stage_b=stage_b,
            status="generating",
            messages=messages,
            settings=settings,
            turns=[],
            created_at=now,
            updated_at=now,
        )
        with self._writing() as session:
            session.add(row)
        return _battle(row)

    def get_battle(self, battle_id: str, *, rater: str) -> Battle:
        with self._read() as session:
            return _battle(self._own(session, battle_id, rater))

    @staticmethod
    def _own(session: Session, battle_id: Any, rater: str, *, lock: bool = False) -> BattleRow:
        query = sa.select(BattleRow).where(BattleRow.id == str(battle_id))
        if lock:  # PostgreSQL: one writer per battle at a time (SQLite's IMMEDIATE already serialises)
            query = query.with_for_update()
        row = session.scalars(query).one_or_none()
        if row is None or row.rater != rater:  # someone else's battle reads as no battle at all
            raise UnknownItem(f"No arena battle {battle_id!r}.", "id")
        return row

    def start_turn(self, battle_id: str, *, rater: str) -> Battle:
        """Mark a ready battle generating its next turn (`BattleConflict` if it is not ready)."""
        with self._writing() as session:
            row = self._own(session, battle_id, rater, lock=True)
            _need_ready(row, "go on")
            if row.campaign_id is not None:  # raters of an item must judge the same answers
                raise BattleConflict("A campaign's battle is one turn: vote on it.", "id")
            row.status, row.updated_at = "generating", utcnow()
            return _battle(row)

    def finish_turn(self, battle_id: str, *, user: dict[str, Any] | None, a: BattleSide, b: BattleSide) -> Battle:
        """Append a finished turn (both answers) and make the battle ready for a vote or a next turn."""
        with self._writing() as session:
            row = session.scalars(sa.select(BattleRow).where(BattleRow.id == battle_id).with_for_update()).one()
            row.turns = [*row.turns, {"user": user, "a": asdict(a), "b": asdict(b)}]
            row.status, row.updated_at = "ready", utcnow()
            return _battle(row)

    def abandon_turn(self, battle_id: str) -> None:
        """A turn that could not finish: the battle goes back to ready (or to failed, with no turn yet)."""
        with self._writing() as session:
            row = session.scalars(sa.select(BattleRow).where(BattleRow.id == battle_id).with_for_update()).one()
            if row.status == "generating":
                row.status, row.updated_at = ("ready" if row.turns else "failed"), utcnow()

    # -- votes ----------------------------------------------------------------------------------

    def vote(
        self, battle_id: str, winner: Any, *, rater: str, reasons: Iterable[Any] = (), comment: Any = None
    ) -> tuple[ArenaVote, Battle]:
        """Store the rater's verdict on their ready battle; the battle is then finished."""
        if winner not in WINNERS:
            raise InvalidFeedback(f"'winner' must be one of {', '.join(WINNERS)}; got {winner!r}.", "winner")
        reasons = list(reasons or [])
        if len(reasons) > MAX_REASONS or not all(isinstance(r, str) and len(r) <= 200 for r in reasons):
            raise InvalidFeedback(f"'reasons' must be a list of at most {MAX_REASONS} short strings.", "reasons")
        if comment is not None and not isinstance(comment, str):
            raise InvalidFeedback("'comment' must be a string.", "comment")
        now = utcnow()
        try:
            with self._writing() as session:
                battle = self._own(session, battle_id, rater, lock=True)
                _need_ready(battle, "vote on")
                last = battle.turns[-1]
                row = ArenaVoteRow(
                    id=f"vote-{secrets.token_hex(12)}",
                    battle_id=battle.id,
                    rater=rater,
                    winner=winner,
                    stage_a=battle.stage_a,
                    stage_b=battle.stage_b,
                    response_a=last["a"]["response_id"],
                    response_b=last["b"]["response_id"],
                    reasons=reasons,
                    comment=comment,
                    created_at=now,
                )
                session.add(row)
                battle.status, battle.updated_at = "voted", now
                session.flush()
                return _vote(row), _battle(battle)
        except IntegrityError:  # a vote on this battle committed between our read and our insert
            raise BattleConflict("This battle has a vote already: one vote per battle.", "id") from None

    def get_arena_vote(self, battle_id: str, *, rater: str) -> ArenaVote | None:
        with self._read() as session:
            self._own(session, battle_id, rater)
            row = session.scalars(sa.select(ArenaVoteRow).where(ArenaVoteRow.battle_id == battle_id)).one_or_none()
            return _vote(row) if row else None

    def count_arena_votes(self) -> int:
        """Arena votes between stages (votes on gold questions not counted)."""
        with self._read() as session:
            return (
                session.scalar(
                    sa.select(sa.func.count())
                    .select_from(ArenaVoteRow)
                    .join(BattleRow, BattleRow.id == ArenaVoteRow.battle_id)
                    .where(BattleRow.gold.is_(None))
                )
                or 0
            )

    def iter_arena_judgements(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        rater: str | None = None,
        campaign_id: str | None = None,
        exclude_raters: Iterable[str] = (),
    ) -> Iterator[Judgement]:
        """Every arena vote between stages as a blind judgement: index 0 is side a, index 1 side b.
        Votes on gold questions are no judgements of stages and are left out."""
        query = (
            sa.select(ArenaVoteRow)
            .join(BattleRow, BattleRow.id == ArenaVoteRow.battle_id)
            .where(BattleRow.gold.is_(None))
            .order_by(ArenaVoteRow.seq)
        )
        if campaign_id is not None:
            query = query.where(BattleRow.campaign_id == campaign_id)
        if exclude_raters:
            query = query.where(ArenaVoteRow.rater.not_in(list(exclude_raters)))
        if since is not None:
            query = query.where(ArenaVoteRow.created_at >= since)
        if until is not None:
            query = query.where(ArenaVoteRow.created_at < until)
        if rater is not None:
            query = query.where(ArenaVoteRow.rater == rater)
        with self._read() as session:
            for row in session.scalars(query.execution_options(yield_per=1000)):
                yield Judgement(
                    row.id,
                    row.rater,
                    [row.response_a, row.response_b],
                    [row.stage_a, row.stage_b],
                    _GROUPS[row.winner],
                    row.created_at,
                    blind=True,
                )

    def completions_of(self, response_ids: Iterable[str]) -> dict[str, str]:
        """The logged text of these answers (those logged with text), for the style covariates."""
        ids = sorted(set(response_ids))
        out: dict[str, str] = {}
        with self._read() as session:
            for start in range(0, len(ids), 500):
                query = sa.select(GenerationRow.id, GenerationRow.completion).where(
                    GenerationRow.id.in_(ids[start : start + 500]), GenerationRow.completion.is_not(None)
                )
                out.update(dict(session.execute(query).tuples().all()))
        return out


def _need_ready(row: BattleRow, action: str) -> None:
    if row.status == "ready":
        return
    why = {
        "generating": "its answers are still being written",
        "voted": "it has a vote already (finished)",
        "failed": "its first answers could not be written",
    }[row.status]
    raise BattleConflict(f"Cannot {action} this battle: {why}.", "id")
