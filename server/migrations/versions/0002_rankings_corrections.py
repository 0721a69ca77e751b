"""Rankings of K answers to one conversation, and corrections of answers.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rankings",
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("rater", sa.String(64), nullable=False),
        sa.Column("set_key", sa.String(64), nullable=False),
        sa.Column("prompt_hash", sa.String(64), nullable=False),
        sa.Column("response_ids", sa.JSON(), nullable=False),
        sa.Column("ranking", sa.JSON(), nullable=False),
        sa.Column("stages", sa.JSON(), nullable=False),
        sa.Column("prompt", sa.JSON(), nullable=True),
        sa.Column("completions", sa.JSON(), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("set_key", "rater", name="uq_ranking_set_rater"),
    )
    op.create_index("ix_rankings_prompt_hash", "rankings", ["prompt_hash"])
    op.create_index("ix_rankings_updated_at", "rankings", ["updated_at"])

    op.create_table(
        "corrections",
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("response_id", sa.String(255), sa.ForeignKey("generations.id"), nullable=False),
        sa.Column("rater", sa.String(64), nullable=False),
        sa.Column("completion", sa.Text(), nullable=False),
        sa.Column("prompt", sa.JSON(), nullable=True),
        sa.Column("original", sa.Text(), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("response_id", "rater", name="uq_correction_response_rater"),
    )
    op.create_index("ix_corrections_response_id", "corrections", ["response_id"])
    op.create_index("ix_corrections_updated_at", "corrections", ["updated_at"])


def downgrade() -> None:
    op.drop_table("corrections")
    op.drop_table("rankings")
