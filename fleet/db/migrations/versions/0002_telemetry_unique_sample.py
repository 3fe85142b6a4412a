"""telemetry: one row per (device, time, seq), so a resent message is never stored twice

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 22:00:00

The unique index replaces ``ix_telemetry_device_time``: its leading columns are the same, so the
health queries (one device, a time window) use it as before.
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Duplicates stored before this migration would make the unique index fail: keep the first copy.
    op.execute(
        "DELETE FROM telemetry WHERE id NOT IN (SELECT MIN(id) FROM telemetry GROUP BY device_id, time, seq)"
    )
    with op.batch_alter_table("telemetry", schema=None) as batch_op:
        batch_op.drop_index("ix_telemetry_device_time")
        batch_op.create_index("ux_telemetry_device_time_seq", ["device_id", "time", "seq"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("telemetry", schema=None) as batch_op:
        batch_op.drop_index("ux_telemetry_device_time_seq")
        batch_op.create_index("ix_telemetry_device_time", ["device_id", "time"], unique=False)
