"""Arena campaigns in the store: a prompt set with an overlap (raters per prompt), guidelines and gold
questions; each rater's queue through it, their progress, and their accuracy on gold.

What it knows: the `arena_campaigns` and `arena_campaign_items` tables and the campaign columns of
`arena_battles`. An item's two answers are written once (by the first rater's request) and every
rater of it gets a battle of their own over those same answers, so raters judge the same pair and
their agreement can be measured. A rater gets an item at most once (a unique index), a prompt item
only while fewer than `overlap` raters have it, a gold item always.

What it does not know: how answers are produced or sides drawn (`server/arena_campaigns.py`), HTTP.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from server.store.arena import _battle, new_battle_id
from server.store.base import StoreBase
from server.store.records import Battle, Campaign, CampaignItem, InvalidFeedback, UnknownItem, utcnow
from server.store.schema import ArenaVoteRow, BattleRow, CampaignItemRow, CampaignRow


def _campaign(row: CampaignRow, items: int, gold: int) -> Campaign:
    return Campaign(
        id=row.id,
        name=row.name,
        guidelines=row.guidelines,
        overlap=row.overlap,
        stages=list(row.stages) if row.stages else None,
        settings=dict(row.settings),
        items=items,
        gold=gold,
        created_at=row.created_at,
    )


def _item(row: CampaignItemRow) -> CampaignItem:
    return CampaignItem(
        id=row.id,
        campaign_id=row.campaign_id,
        position=row.position,
        messages=list(row.messages),
        gold_right=row.gold_right,
        gold_wrong=row.gold_wrong,
        stage_x=row.stage_x,
        stage_y=row.stage_y,
        answer_x=row.answer_x,
        answer_y=row.answer_y,
    )


class CampaignStore(StoreBase):
    """The store's campaign methods (a mixin of `Store`)."""

    def create_campaign(
        self,
        *,
        name: str,
        guidelines: str,
        overlap: int,
        stages: list[str] | None,
        settings: dict[str, Any],
        items: Sequence[dict[str, Any]],
    ) -> Campaign:
        """`items`, in queue order: {"messages"} for a prompt, plus {"gold_right", "gold_wrong"} for gold."""
        if overlap < 1:
            raise InvalidFeedback("'overlap' must be at least 1.", "overlap")
        now = utcnow()
        row = CampaignRow(
            id=f"camp-{secrets.token_hex(8)}",
            name=name,
            guidelines=guidelines,
            overlap=overlap,
            stages=stages,
            settings=settings,
            created_at=now,
        )
        with self._writing() as session:
            session.add(row)
            session.flush()
            for position, item in enumerate(items):
                session.add(
                    CampaignItemRow(
                        id=f"item-{secrets.token_hex(10)}",
                        campaign_id=row.id,
                        position=position,
                        messages=item["messages"],
                        gold_right=item.get("gold_right"),
                        gold_wrong=item.get("gold_wrong"),
                    )
                )
        gold = sum(1 for i in items if i.get("gold_right") is not None)
        return _campaign(row, len(items) - gold, gold)

    def get_campaign(self, campaign_id: str) -> Campaign:
        with self._read() as session:
            row = session.scalars(sa.select(CampaignRow).where(CampaignRow.id == campaign_id)).one_or_none()
            if row is None:
                raise UnknownItem(f"No arena campaign {campaign_id!r}.", "id")
            counts = dict(
                session.execute(
                    sa.select(CampaignItemRow.gold_right.is_not(None), sa.func.count())
                    .where(CampaignItemRow.campaign_id == campaign_id)
                    .group_by(CampaignItemRow.gold_right.is_not(None))
                )
                .tuples()
                .all()
            )
            return _campaign(row, counts.get(False, 0), counts.get(True, 0))

    def open_campaign_battle(self, campaign_id: str, *, rater: str) -> Battle | CampaignItem | None:
        """The rater's place in the queue: their unvoted battle of this campaign if they have one, else the
        next item they may take (to be answered, then `claim_item`), else None (the queue is done)."""
        with self._read() as session:
            pending = session.scalars(
                sa.select(BattleRow)
                .where(BattleRow.campaign_id == campaign_id, BattleRow.rater == rater, BattleRow.status == "ready")
                .order_by(BattleRow.seq)
                .limit(1)
            ).one_or_none()
            if pending is not None:
                return _battle(pending)
            taken = sa.select(BattleRow.item_id).where(BattleRow.campaign_id == campaign_id, BattleRow.rater == rater)
            raters = (
                sa.select(sa.func.count())
                .select_from(BattleRow)
                .where(BattleRow.item_id == CampaignItemRow.id)
                .scalar_subquery()
            )
            overlap = sa.select(CampaignRow.overlap).where(CampaignRow.id == campaign_id).scalar_subquery()
            row = session.scalars(
                sa.select(CampaignItemRow)
                .where(
                    CampaignItemRow.campaign_id == campaign_id,
                    CampaignItemRow.id.not_in(taken),
                    sa.or_(CampaignItemRow.gold_right.is_not(None), raters < overlap),
                )
                .order_by(CampaignItemRow.position)
                .limit(1)
            ).one_or_none()
            return _item(row) if row is not None else None

    def set_item_answers(
        self, item_id: str, *, stage_x: str, stage_y: str, answer_x: dict[str, Any], answer_y: dict[str, Any]
    ) -> CampaignItem:
        """Store an item's two answers unless another request did first; the item as stored."""
        with self._writing() as session:
            row = session.scalars(
                sa.select(CampaignItemRow).where(CampaignItemRow.id == item_id).with_for_update()
            ).one()
            if row.answer_x is None:
                row.stage_x, row.stage_y, row.answer_x, row.answer_y = stage_x, stage_y, answer_x, answer_y
            return _item(row)

    def claim_item(self, item: CampaignItem, *, rater: str, flip: bool) -> Battle | None:
        """A ready battle of `rater` over the item's answers (`flip`: y on side a). None when the item
        filled up (overlap reached) or the rater has it already, meanwhile: ask for the next one."""
        if item.is_gold:
            x = {"response_id": "gold-right", "content": item.gold_right, "finish_reason": "stop"}
            y = {"response_id": "gold-wrong", "content": item.gold_wrong, "finish_reason": "stop"}
            stage_x, stage_y = "gold:right", "gold:wrong"
        else:
            x, y, stage_x, stage_y = item.answer_x, item.answer_y, item.stage_x, item.stage_y
        (a, stage_a), (b, stage_b) = ((y, stage_y), (x, stage_x)) if flip else ((x, stage_x), (y, stage_y))
        now = utcnow()
        row = BattleRow(
            id=new_battle_id(),
            rater=rater,
            stage_a=stage_a,
            stage_b=stage_b,
            status="ready",
            messages=item.messages,
            settings={},
            turns=[{"user": None, "a": a, "b": b}],
            created_at=now,
            updated_at=now,
            campaign_id=item.campaign_id,
            item_id=item.id,
            gold=("b" if flip else "a") if item.is_gold else None,
        )
        try:
            with self._writing() as session:
                if not item.is_gold:
                    overlap = session.scalar(sa.select(CampaignRow.overlap).where(CampaignRow.id == item.campaign_id))
                    taken = session.scalar(
                        sa.select(sa.func.count()).select_from(BattleRow).where(BattleRow.item_id == item.id)
                    )
                    if taken >= overlap:
                        return None
                session.add(row)
        except IntegrityError:  # the same rater's other request took this item first
            return None
        return _battle(row)

    def campaign_progress(self, campaign_id: str) -> dict[str, dict[str, int]]:
        """Per rater: battles given, voted, gold voted and gold right."""
        query = (
            sa.select(BattleRow.rater, BattleRow.gold, ArenaVoteRow.winner)
            .outerjoin(ArenaVoteRow, ArenaVoteRow.battle_id == BattleRow.id)
            .where(BattleRow.campaign_id == campaign_id)
        )
        out: dict[str, dict[str, int]] = {}
        with self._read() as session:
            for rater, gold, winner in session.execute(query):
                p = out.setdefault(rater, {"assigned": 0, "voted": 0, "gold_voted": 0, "gold_right": 0})
                p["assigned"] += 1
                p["voted"] += winner is not None
                if gold is not None and winner is not None:
                    p["gold_voted"] += 1
                    p["gold_right"] += winner == gold
        return out

    def gold_accuracy(self) -> dict[str, tuple[int, int]]:
        """Per rater, over every campaign: (gold questions answered right, gold questions voted)."""
        query = (
            sa.select(ArenaVoteRow.rater, BattleRow.gold, ArenaVoteRow.winner)
            .join(BattleRow, BattleRow.id == ArenaVoteRow.battle_id)
            .where(BattleRow.gold.is_not(None))
        )
        out: dict[str, list[int]] = {}
        with self._read() as session:
            for rater, gold, winner in session.execute(query):
                counts = out.setdefault(rater, [0, 0])
                counts[0] += winner == gold
                counts[1] += 1
        return {r: (c[0], c[1]) for r, c in out.items()}
