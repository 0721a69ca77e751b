"""Reward scores of judged answers: one reward model's score of one logged answer, for the
leaderboard's reward-agreement figures (server/store/reward_scores.py).

Revision ID: 0006
Revises: 0005 (the arena)
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "reward_scores",
        sa.Column("generation_id", sa.String(255), nullable=False),
        sa.Column("reward_model", sa.String(255), nullable=False),
        sa.Column("checkpoint", sa.Text(), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("scored_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("generation_id", "reward_model"),
    )


def downgrade() -> None:
    op.drop_table("reward_scores")
