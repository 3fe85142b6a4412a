"""Typed dependencies for the routes: the fleet context, a database session, the caller's token."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from fleet import auth
from fleet.context import FleetContext
from fleet.db.models import Token
from fleet.errors import ForbiddenError
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


def get_token(
    ctx: ContextDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Token:
    if credentials is None:
        raise AuthError("missing Authorization: Bearer TOKEN")
    with ctx.db.session() as s:
        return auth.check_token(s, credentials.credentials)


TokenDep = Annotated[Token, Depends(get_token)]


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
