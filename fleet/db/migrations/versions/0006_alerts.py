"""alerts: one open row per (rule, device, model, version); alert thresholds per selector and per rollout

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 04:40:00

Monitoring (issue 9): the fleet evaluates drift, accuracy, bias and latency rules as telemetry is
ingested. ``open`` is NULL on resolved rows so the unique index holds only open alerts.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("rule", sa.String(length=16), nullable=False),
        sa.Column("device_id", sa.String(length=128), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("version", sa.String(length=128), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("open", sa.Boolean(), nullable=True),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("since", sa.Float(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("streak", sa.Integer(), nullable=False),
        sa.Column("last_window", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ux_alerts_open", "alerts", ["rule", "device_id", "model", "version", "open"], unique=True
    )
    op.create_index("ix_alerts_device", "alerts", ["device_id"])
    op.create_index("ix_alerts_state", "alerts", ["state"])
    op.create_table(
        "alert_policies",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=True),
        sa.Column("thresholds", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("alert_thresholds", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.drop_column("alert_thresholds")
    op.drop_table("alert_policies")
    op.drop_index("ix_alerts_state", table_name="alerts")
    op.drop_index("ix_alerts_device", table_name="alerts")
    op.drop_index("ux_alerts_open", table_name="alerts")
    op.drop_table("alerts")
