"""API tokens and device broker passwords: random secrets, stored as sha256 only.

The secrets are 256 random bits, so a fast hash is enough (nothing to brute-force); a slow KDF
would only make 1,000 devices reconnecting at once expensive for the broker's auth plugin.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet import audit
from fleet.db.models import Device, Token
from fleet.db.session import get_existing
from fleet.errors import TokenRefusedError
from sdk.errors import AuthError, ConfigError, NotFoundError
from sdk.fsio import write_atomic

log = logging.getLogger(__name__)

Role = Literal["admin", "operator", "viewer", "device"]
ROLES: tuple[Role, ...] = ("admin", "operator", "viewer", "device")
#: what each role may do; a device token may only read its own device and download bundles.
_RANK = {"viewer": 1, "operator": 2, "admin": 3}


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def create_token(
    session: Session,
    role: Role,
    *,
    device_id: str | None = None,
    name: str | None = None,
    expires_at: float | None = None,
) -> str:
    """Store a new token and return its plaintext (shown once)."""
    if role not in ROLES:
        raise AuthError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    token_id = secrets.token_hex(8)
    secret = new_secret()
    session.add(
        Token(
            id=token_id,
            role=role,
            secret_sha256=sha256_hex(secret),
            device_id=device_id,
            name=name,
            expires_at=expires_at,
        )
    )
    return f"ef_{token_id}_{secret}"


def issue(
    session: Session,
    role: str,
    *,
    device_id: str | None = None,
    name: str | None = None,
    expires_at: float | None = None,
) -> str:
    """A token asked for by an admin (API or CLI), checked first: a device token names a registered
    device, no other role names one, and it does not expire in the past."""
    if role not in ROLES:
        raise ConfigError(f"role must be one of {', '.join(ROLES)}")
    if role == "device":
        if not device_id:
            raise ConfigError("a device token needs a device id")
        if session.get(Device, device_id) is None:
            raise NotFoundError(f"no device {device_id} is registered; register it first")
    elif device_id is not None:
        raise ConfigError("only a device token names a device")
    if expires_at is not None and expires_at <= time.time():
        raise ConfigError("the expiry time is in the past")
    return create_token(session, role, device_id=device_id, name=name, expires_at=expires_at)  # type: ignore[arg-type]


def token_id_of(plaintext: str) -> str:
    return plaintext.split("_", 2)[1]


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_token(session: Session, plaintext: str, *, now: float | None = None) -> Token:
    """The stored token for ``plaintext``; :class:`AuthError` if it is unknown, wrong, revoked or expired.

    Why a token is refused is said only to a caller that holds its secret.
    """
    parts = plaintext.split("_", 2)
    if len(parts) != 3 or parts[0] != "ef":
        raise AuthError("malformed token")
    token = session.get(Token, parts[1])
    if token is None or not hmac.compare_digest(token.secret_sha256, sha256_hex(parts[2])):
        raise AuthError("invalid or revoked token")
    if token.revoked:
        raise TokenRefusedError(f"token {token.id} was revoked")
    if token.expires_at is not None and token.expires_at <= (time.time() if now is None else now):
        raise TokenRefusedError(f"token {token.id} expired at {_utc(token.expires_at)}")
    # Belt and braces: decommissioning revokes a device's tokens, but a token of a device that is
    # gone must never authenticate (nor be inherited by a device registered again under its id).
    if token.role == "device" and (token.device_id is None or session.get(Device, token.device_id) is None):
        raise TokenRefusedError(
            f"token {token.id} belongs to device {token.device_id}, which is not registered"
        )
    return token


def list_tokens(
    session: Session,
    *,
    device_id: str | None = None,
    role: str | None = None,
    include_revoked: bool = True,
    limit: int | None = 1000,
    offset: int = 0,
) -> list[Token]:
    query = select(Token).order_by(Token.created_at, Token.id)
    if device_id is not None:
        query = query.where(Token.device_id == device_id)
    if role is not None:
        query = query.where(Token.role == role)
    if not include_revoked:
        query = query.where(Token.revoked.is_(False))
    return list(session.scalars(query.limit(limit).offset(offset)))


def revoke(session: Session, token_id: str) -> Token:
    """Revoke one token (a no-op on a revoked one); every later check refuses it."""
    token = get_existing(session, Token, token_id, "token")
    if not token.revoked:
        token.revoked, token.revoked_at = True, time.time()
    return token


def revoke_device_tokens(session: Session, device_id: str) -> list[str]:
    """Revoke every token of ``device_id``; returns their ids."""
    tokens = session.scalars(
        select(Token).where(Token.device_id == device_id, Token.revoked.is_(False))
    ).all()
    for token in tokens:
        token.revoked, token.revoked_at = True, time.time()
    return [t.id for t in tokens]


def kept_admin_token(session: Session, path: Path) -> tuple[str, bool]:
    """The admin token kept in ``path`` while the database still accepts it, else a new one kept there.

    Returns ``(token, created)``. ``edge-fleet up`` keeps its first token so a restart does not
    hand out another one each time (and leave the old ones valid); the file is readable by its owner only.
    """
    if path.exists():
        kept = path.read_text(encoding="utf-8").strip()
        try:
            if check_token(session, kept).role == "admin":
                os.chmod(path, 0o600)
                return kept, False
        except AuthError:
            pass
        log.warning("the admin token in %s is not valid in this database; replacing it with a new one", path)
    token = create_token(session, "admin", name="edge-fleet up")
    audit.record(
        session,
        audit.Actor.local("edge-fleet up"),
        audit.Action.TOKEN_CREATE,
        token_id_of(token),
        role="admin",
    )
    write_atomic(path, f"{token}\n".encode(), mode=0o600)
    return token, True


def role_allows(role: str, needed: Role) -> bool:
    """admin > operator > viewer; ``device`` only satisfies ``device``."""
    if needed == "device":
        return role in ("device", "admin", "operator", "viewer")
    return _RANK.get(role, 0) >= _RANK[needed]


def check_password(stored_sha256: str, password: str) -> bool:
    return hmac.compare_digest(stored_sha256, sha256_hex(password))
