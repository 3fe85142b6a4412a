"""Typed dependencies for the routes: the fleet context, a database session, the caller's token."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException

from fleet import auth
from fleet.audit import Actor
from fleet.context import FleetContext
from fleet.db.models import Token
from fleet.errors import ForbiddenError, TokenRefusedError
from sdk.errors import AuthError

_bearer = HTTPBearer(auto_error=False, description="An edgefleet token: `edge-fleet token create --role ...`")


def get_context(request: Request) -> FleetContext:
    return request.app.state.fleet


ContextDep = Annotated[FleetContext, Depends(get_context)]


def get_session(ctx: ContextDep) -> Iterator[Session]:
    with ctx.db.session() as s:
        yield s


# "function": commit before the response is sent. With FastAPI's default ("request") the commit
# ran after it, so a client could get 201 for a rollout and then 404 reading it back.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def get_token(
    request: Request,
    ctx: ContextDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Token:
    if credentials is None:
        raise AuthError("missing Authorization: Bearer TOKEN")
    address = client_address(request)
    wait = ctx.auth_failures.retry_after(address)
    if wait is not None:
        # Not checked at all while refused: a guesser learns nothing from the answer.
        raise HTTPException(
            429,
            f"too many wrong tokens from {address}; try again in {wait} s",
            headers={"Retry-After": str(wait)},
        )
    try:
        with ctx.db.session() as s:
            return auth.check_token(s, credentials.credentials)
    except TokenRefusedError:
        # A stale credential, not a guess: one decommissioned device behind a site's NAT must not
        # get every other device there refused.
        raise
    except AuthError:
        ctx.auth_failures.failed(address)
        raise


TokenDep = Annotated[Token, Depends(get_token)]


def get_actor(request: Request, token: TokenDep) -> Actor:
    """Who makes this request, for the audit log (the token is checked once per request)."""
    return Actor.of_token(token, client_address(request))


ActorDep = Annotated[Actor, Depends(get_actor)]


def require(role: auth.Role) -> Callable[[Token], Token]:
    def check(token: TokenDep) -> Token:
        if not auth.role_allows(token.role, role):
            raise ForbiddenError(f"this needs the {role} role; the token has {token.role}")
        return token

    return check


ViewerDep = Annotated[Token, Depends(require("viewer"))]
OperatorDep = Annotated[Token, Depends(require("operator"))]
AdminDep = Annotated[Token, Depends(require("admin"))]
DeviceOrViewerDep = Annotated[Token, Depends(require("device"))]
