"""events: the device's seq and time, one row per (device, sent_at, seq), so a resent event is stored once

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 02:50:00

Agents now keep events in their disk outbox until the fleet acknowledges them (``ack`` topic)
and send them again otherwise. Rows from before carry NULLs, which never conflict.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("seq", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("sent_at", sa.Float(), nullable=True))
        batch_op.create_index("ux_events_device_sent_seq", ["device_id", "sent_at", "seq"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ux_events_device_sent_seq")
        batch_op.drop_column("sent_at")
        batch_op.drop_column("seq")
