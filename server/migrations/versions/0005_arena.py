"""The blind arena: battles (two stages, sides a and b, the turns), one vote per battle, and campaigns
(prompt sets with overlap and gold questions).

Revision ID: 0005
Revises: 0004 (conversations)
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "arena_battles",
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("rater", sa.String(64), nullable=False),
        sa.Column("stage_a", sa.String(255), nullable=False),
        sa.Column("stage_b", sa.String(255), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("messages", sa.JSON(), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("turns", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("campaign_id", sa.String(64), nullable=True),
        sa.Column("item_id", sa.String(64), nullable=True),
        sa.Column("gold", sa.String(1), nullable=True),
        sa.UniqueConstraint("item_id", "rater", name="uq_arena_battle_item_rater"),
    )
    op.create_index("ix_arena_battles_rater", "arena_battles", ["rater"])
    op.create_index("ix_arena_battles_campaign_id", "arena_battles", ["campaign_id"])

    op.create_table(
        "arena_campaigns",
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("guidelines", sa.Text(), nullable=False),
        sa.Column("overlap", sa.Integer(), nullable=False),
        sa.Column("stages", sa.JSON(), nullable=True),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "arena_campaign_items",
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("campaign_id", sa.String(64), sa.ForeignKey("arena_campaigns.id"), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("messages", sa.JSON(), nullable=False),
        sa.Column("gold_right", sa.Text(), nullable=True),
        sa.Column("gold_wrong", sa.Text(), nullable=True),
        sa.Column("stage_x", sa.String(255), nullable=True),
        sa.Column("stage_y", sa.String(255), nullable=True),
        sa.Column("answer_x", sa.JSON(), nullable=True),
        sa.Column("answer_y", sa.JSON(), nullable=True),
        sa.UniqueConstraint("campaign_id", "position", name="uq_campaign_item_position"),
    )

    op.create_table(
        "arena_votes",
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("battle_id", sa.String(64), sa.ForeignKey("arena_battles.id"), nullable=False, unique=True),
        sa.Column("rater", sa.String(64), nullable=False),
        sa.Column("winner", sa.String(16), nullable=False),
        sa.Column("stage_a", sa.String(255), nullable=False),
        sa.Column("stage_b", sa.String(255), nullable=False),
        sa.Column("response_a", sa.String(255), nullable=False),
        sa.Column("response_b", sa.String(255), nullable=False),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_arena_votes_rater", "arena_votes", ["rater"])
    op.create_index("ix_arena_votes_created_at", "arena_votes", ["created_at"])


def downgrade() -> None:
    op.drop_table("arena_votes")
    op.drop_table("arena_campaign_items")
    op.drop_table("arena_campaigns")
    op.drop_table("arena_battles")
