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
from pathlib import Path
from typing import Literal

from sqlalchemy.orm import Session

from fleet.db.models import Token
from sdk.errors import AuthError
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
    session: Session, role: Role, *, device_id: str | None = None, name: str | None = None
) -> str:
    """Store a new token and return its plaintext (shown once)."""
    if role not in ROLES:
        raise AuthError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    token_id = secrets.token_hex(8)
    secret = new_secret()
    session.add(
        Token(id=token_id, role=role, secret_sha256=sha256_hex(secret), device_id=device_id, name=name)
    )
    return f"ef_{token_id}_{secret}"


def check_token(session: Session, plaintext: str) -> Token:
    parts = plaintext.split("_", 2)
    if len(parts) != 3 or parts[0] != "ef":
        raise AuthError("malformed token")
    token = session.get(Token, parts[1])
    if token is None or token.revoked or not hmac.compare_digest(token.secret_sha256, sha256_hex(parts[2])):
        raise AuthError("invalid or revoked token")
    return token


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
    write_atomic(path, f"{token}\n".encode(), mode=0o600)
    return token, True


def role_allows(role: str, needed: Role) -> bool:
    """admin > operator > viewer; ``device`` only satisfies ``device``."""
    if needed == "device":
        return role in ("device", "admin", "operator", "viewer")
    return _RANK.get(role, 0) >= _RANK[needed]


def check_password(stored_sha256: str, password: str) -> bool:
    return hmac.compare_digest(stored_sha256, sha256_hex(password))
