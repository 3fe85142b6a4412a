"""bundle_downloads: which device's token fetched which bundle (a rollout believes reports by it)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 02:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bundle_downloads",
        sa.Column("device_id", sa.String(length=128), nullable=False),
        sa.Column("bundle_id", sa.String(length=32), nullable=False),
        sa.Column("first_at", sa.Float(), nullable=False),
        sa.Column("last_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("device_id", "bundle_id"),
    )


def downgrade() -> None:
    op.drop_table("bundle_downloads")
