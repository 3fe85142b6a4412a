"""The audit log: every change to the fleet, who made it, when and from where, kept in the database.

Routes call :func:`record` with the :class:`Actor` of the request (``deps.ActorDep``) in the same
transaction as the change, so a change that fails leaves no entry and a stored change always has
one. The CLI, which works on the database directly, records as :meth:`Actor.local`.
"""

from __future__ import annotations

import getpass
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet.db.models import AuditRecord, Token

#: the most entries one read returns.
MAX_PAGE = 1000


class Action(StrEnum):
    DEVICE_REGISTER = "device.register"
    DEVICE_UPDATE = "device.update"
    DEVICE_DELETE = "device.delete"
    BUNDLE_UPLOAD = "bundle.upload"
    ROLLOUT_CREATE = "rollout.create"
    ROLLOUT_PAUSE = "rollout.pause"
    ROLLOUT_RESUME = "rollout.resume"
    ROLLOUT_ROLLBACK = "rollout.rollback"
    TOKEN_CREATE = "token.create"
    TOKEN_REVOKE = "token.revoke"
    ALERT_POLICY_SET = "alert_policy.set"
    ALERT_POLICY_DELETE = "alert_policy.delete"


@dataclass(frozen=True)
class Actor:
    """Who made a change: the token used (or the local user of the CLI) and the client's address."""

    token_id: str | None
    role: str | None
    device_id: str | None
    name: str | None
    address: str | None

    @classmethod
    def of_token(cls, token: Token, address: str | None) -> Actor:
        return cls(token.id, token.role, token.device_id, token.name, address)

    @classmethod
    def local(cls, program: str) -> Actor:
        """The CLI on the database host: the OS user who ran ``program``."""
        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # no passwd entry (a container with a bare uid)
            user = "unknown user"
        return cls(None, None, None, f"{program} ({user})", "local")


def record(session: Session, actor: Actor, action: Action, target: str | None, **detail: Any) -> None:
    """Add one entry for ``action`` on ``target`` to the caller's transaction."""
    session.add(
        AuditRecord(
            time=time.time(),
            action=action.value,
            target=target,
            actor_token_id=actor.token_id,
            actor_role=actor.role,
            actor_device_id=actor.device_id,
            actor_name=actor.name,
            address=actor.address,
            detail=detail,
        )
    )


def entries(
    session: Session,
    *,
    since: float | None = None,
    until: float | None = None,
    actor: str | None = None,
    action: str | None = None,
    target: str | None = None,
    before_id: int | None = None,
    limit: int = 100,
) -> list[AuditRecord]:
    """Newest first, at most ``min(limit, MAX_PAGE)``; page on with ``before_id`` = the last id seen.

    ``actor`` matches the token id or the device id of whoever made the change.
    """
    query = select(AuditRecord).order_by(AuditRecord.id.desc()).limit(max(1, min(limit, MAX_PAGE)))
    if since is not None:
        query = query.where(AuditRecord.time >= since)
    if until is not None:
        query = query.where(AuditRecord.time < until)
    if actor is not None:
        query = query.where((AuditRecord.actor_token_id == actor) | (AuditRecord.actor_device_id == actor))
    if action is not None:
        query = query.where(AuditRecord.action == action)
    if target is not None:
        query = query.where(AuditRecord.target == target)
    if before_id is not None:
        query = query.where(AuditRecord.id < before_id)
    return list(session.scalars(query))
