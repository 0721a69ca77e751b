"""Generation log, ratings and preferences.

Revision ID: 0001
Revises:
Create Date: 2025-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "generations",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("stage", sa.String(255), nullable=False),
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("prompt_hash", sa.String(64), nullable=False),
        sa.Column("messages", sa.JSON(), nullable=True),
        sa.Column("prompt", sa.Text(), nullable=True),
        sa.Column("completion", sa.Text(), nullable=True),
        sa.Column("sampling", sa.JSON(), nullable=False),
        sa.Column("speculative_method", sa.String(64), nullable=True),
        sa.Column("speculative", sa.JSON(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("finish_reason", sa.String(32), nullable=True),
        sa.Column("ttft_ms", sa.Float(), nullable=True),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_generations_stage", "generations", ["stage"])
    op.create_index("ix_generations_prompt_hash", "generations", ["prompt_hash"])
    op.create_index("ix_generations_created_at", "generations", ["created_at"])

    op.create_table(
        "feedback",
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("response_id", sa.String(255), sa.ForeignKey("generations.id"), nullable=False),
        sa.Column("rater", sa.String(64), nullable=False),
        sa.Column("rating", sa.String(8), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("prompt", sa.JSON(), nullable=True),
        sa.Column("completion", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("response_id", "rater", name="uq_feedback_response_rater"),
    )
    op.create_index("ix_feedback_response_id", "feedback", ["response_id"])
    op.create_index("ix_feedback_updated_at", "feedback", ["updated_at"])

    op.create_table(
        "preferences",
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("response_a", sa.String(255), sa.ForeignKey("generations.id"), nullable=False),
        sa.Column("response_b", sa.String(255), sa.ForeignKey("generations.id"), nullable=False),
        sa.Column("choice", sa.String(16), nullable=False),
        sa.Column("rater", sa.String(64), nullable=False),
        sa.Column("prompt_hash", sa.String(64), nullable=False),
        sa.Column("prompt", sa.JSON(), nullable=True),
        sa.Column("completion_a", sa.Text(), nullable=True),
        sa.Column("completion_b", sa.Text(), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("response_a", "response_b", "rater", name="uq_preference_pair_rater"),
    )
    op.create_index("ix_preferences_prompt_hash", "preferences", ["prompt_hash"])
    op.create_index("ix_preferences_updated_at", "preferences", ["updated_at"])


def downgrade() -> None:
    op.drop_table("preferences")
    op.drop_table("feedback")
    op.drop_table("generations")
