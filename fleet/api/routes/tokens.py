"""/api/v1/tokens (admin) and /api/v1/health."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text

from fleet import auth
from fleet.api.deps import AdminDep, ContextDep, SessionDep, ViewerDep
from fleet.schemas import TokenCreate, TokenCreated
from sdk.errors import ConfigError

router = APIRouter(tags=["tokens"])


@router.post("/tokens", response_model=TokenCreated, status_code=201)
def create_token(data: TokenCreate, session: SessionDep, _: AdminDep) -> TokenCreated:
    if data.role not in auth.ROLES or data.role == "device":
        raise ConfigError("role must be admin, operator or viewer (device tokens come with registration)")
    token = auth.create_token(session, data.role, name=data.name)  # type: ignore[arg-type]
    return TokenCreated(id=token.split("_")[1], role=data.role, token=token)


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
