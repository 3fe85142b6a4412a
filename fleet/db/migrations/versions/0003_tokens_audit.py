"""tokens expire and record when they were revoked; an audit log of every change

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 02:40:00

Device tokens whose device no longer exists are revoked here: before this revision, deleting a
device left its token valid, and a device registered again under the same id inherited it.
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("expires_at", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("revoked_at", sa.Float(), nullable=True))
    op.execute(
        sa.text(
            "UPDATE tokens SET revoked = :yes, revoked_at = :now WHERE role = 'device' AND revoked = :no "
            "AND (device_id IS NULL OR device_id NOT IN (SELECT id FROM devices))"
        ).bindparams(yes=True, no=False, now=time.time())
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("time", sa.Float(), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("target", sa.String(length=128), nullable=True),
        sa.Column("actor_token_id", sa.String(length=32), nullable=True),
        sa.Column("actor_role", sa.String(length=16), nullable=True),
        sa.Column("actor_device_id", sa.String(length=128), nullable=True),
        sa.Column("actor_name", sa.String(length=200), nullable=True),
        sa.Column("address", sa.String(length=64), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_audit_log_time", "audit_log", ["time"], unique=False)
    op.create_index("ix_audit_log_actor", "audit_log", ["actor_token_id"], unique=False)
    op.create_index(op.f("ix_audit_log_action"), "audit_log", ["action"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_audit_log_action"), table_name="audit_log")
    op.drop_index("ix_audit_log_actor", table_name="audit_log")
    op.drop_index("ix_audit_log_time", table_name="audit_log")
    op.drop_table("audit_log")
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.drop_column("revoked_at")
        batch_op.drop_column("expires_at")
