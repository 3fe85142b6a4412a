"""/api/v1/tokens (admin): list, create, revoke; and /api/v1/health."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import text

from fleet import audit, auth
from fleet.api.deps import ActorDep, AdminDep, ContextDep, SessionDep, ViewerDep
from fleet.schemas import TokenCreate, TokenCreated, TokenPublic

router = APIRouter(tags=["tokens"])


@router.get("/tokens", response_model=list[TokenPublic])
def list_tokens(
    session: SessionDep,
    _: AdminDep,
    device_id: str | None = None,
    role: str | None = None,
    include_revoked: bool = True,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    # bounded: a huge offset overflowed SQLite's 64-bit integer binding and answered 500 (schemathesis)
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> list[TokenPublic]:
    """Every token without its secret, oldest first."""
    tokens = auth.list_tokens(
        session, device_id=device_id, role=role, include_revoked=include_revoked, limit=limit, offset=offset
    )
    return [TokenPublic.model_validate(t) for t in tokens]


@router.post("/tokens", response_model=TokenCreated, status_code=201)
def create_token(data: TokenCreate, session: SessionDep, actor: ActorDep, _: AdminDep) -> TokenCreated:
    """A new token, shown only in this answer. A device token needs the id of a registered device."""
    expires_at = time.time() + data.expires_in if data.expires_in is not None else data.expires_at
    token = auth.issue(session, data.role, device_id=data.device_id, name=data.name, expires_at=expires_at)
    token_id = auth.token_id_of(token)
    audit.record(
        session, actor, audit.Action.TOKEN_CREATE, token_id, role=data.role, device_id=data.device_id
    )
    return TokenCreated(
        id=token_id, role=data.role, token=token, device_id=data.device_id, expires_at=expires_at
    )


@router.delete("/tokens/{token_id}", status_code=204)
def revoke_token(token_id: str, session: SessionDep, actor: ActorDep, _: AdminDep) -> None:
    """Revoke a token: every later request with it gets 401 (revoking a revoked one changes nothing)."""
    token = auth.revoke(session, token_id)
    audit.record(
        session, actor, audit.Action.TOKEN_REVOKE, token_id, role=token.role, device_id=token.device_id
    )


@router.get("/health", tags=["health"])
def fleet_health(ctx: ContextDep, _: ViewerDep) -> dict[str, object]:
    """This replica's view: database reachable, broker connected, whether it runs the controller."""
    with ctx.db.session() as s:
        s.execute(text("SELECT 1"))
    return {
        "database": ctx.db.engine.dialect.name,
        "broker_connected": bool(ctx.mqtt and ctx.mqtt.connected.is_set()),
        "controller_leader": bool(ctx.controller and ctx.controller.is_leader),
        "trusted_keys": len(ctx.trusted_keys),
    }
