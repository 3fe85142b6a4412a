"""Signed desired states: the fleet signs, the device verifies against the key pinned at registration.

The signature covers the *canonical bytes* of the message: every field except ``signature``, as
JSON with sorted keys, no whitespace and UTF-8 (:func:`canonical_bytes`). Both sides compute them
from the parsed JSON object, so a newer fleet's extra fields are signed too and nothing depends on
how a serializer spaces or orders its output.

What a signed state binds, and the attack each stops (see docs/security.md):

- ``device_id``: a state signed for one device is refused by every other (mix-and-match, replay);
- ``revision``: the device refuses a revision below the highest it accepted (rollback of the state);
- ``expires``: the device refuses a state past its expiry (an attacker replaying an old, validly
  signed state forever: indefinite freeze). The fleet re-signs every state well before it expires;
  a device that cannot hear the fleet keeps serving what it has, it just applies nothing new;
- ``allow_downgrade`` per model: only a signed state can authorize activating an older version.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from typing import Any

from sdk.errors import ProtocolError
from sdk.keys import Ed25519PrivateKey, Ed25519PublicKey, key_id
from sdk.messages import DesiredState, parse_message

#: how long a signed desired state is valid; the fleet re-signs after half of it.
DEFAULT_VALIDITY_S = 7 * 24 * 3600.0


class DesiredStateRefused(ProtocolError):
    """A desired state the device must not apply (unsigned, wrongly signed, expired, another device's)."""


def canonical_bytes(fields: dict[str, Any]) -> bytes:
    body = {k: v for k, v in fields.items() if k != "signature"}
    try:
        return json.dumps(
            body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode("utf-8")
    except ValueError as exc:  # NaN or infinity: no canonical form
        raise DesiredStateRefused(f"desired state has no canonical form: {exc}") from None


def sign_desired(
    key: Ed25519PrivateKey,
    state: DesiredState,
    *,
    device_id: str,
    validity_s: float = DEFAULT_VALIDITY_S,
    now: float | None = None,
) -> DesiredState:
    """A copy of ``state`` bound to ``device_id``, expiring ``validity_s`` from now, and signed."""
    now = time.time() if now is None else now
    unsigned = state.model_copy(
        update={"device_id": device_id, "expires": now + validity_s, "key_id": key_id(key), "signature": None}
    )
    # Signed over what the device will parse: the JSON this message is sent as, read back.
    fields = json.loads(unsigned.to_bytes())
    signature = base64.b64encode(key.sign(canonical_bytes(fields))).decode("ascii")
    return unsigned.model_copy(update={"signature": signature})


def verify_desired(
    payload: bytes | str,
    fleet_key: Ed25519PublicKey | None,
    *,
    device_id: str,
    now: float | None = None,
) -> DesiredState:
    """Parse a ``desired`` payload and check what the device can check; raise DesiredStateRefused.

    With a pinned ``fleet_key`` the state must be signed by it, name this device and carry an
    expiry. Without one (credentials from before keys were pinned) nothing can be authenticated:
    the state is still refused if it names another device or has expired, and its
    ``allow_downgrade`` marks are dropped, since only a verified signature can authorize a rollback.
    """
    now = time.time() if now is None else now
    state = parse_message(DesiredState, payload)
    if fleet_key is not None:
        if not state.signature:
            raise DesiredStateRefused("desired state is not signed, and this device has a pinned fleet key")
        if state.key_id != key_id(fleet_key):
            raise DesiredStateRefused(
                f"desired state is signed by key {state.key_id}, not by the pinned fleet key {key_id(fleet_key)}"
            )
        try:
            signature = base64.b64decode(state.signature, validate=True)
        except (binascii.Error, ValueError):
            raise DesiredStateRefused("desired state signature is not base64") from None
        try:
            fields = json.loads(payload)
        except ValueError as exc:
            raise DesiredStateRefused(f"desired state is not JSON: {exc}") from None
        try:
            fleet_key.verify(signature, canonical_bytes(fields))
        except DesiredStateRefused:
            raise
        except Exception:  # cryptography's InvalidSignature, or a wrong-length signature
            raise DesiredStateRefused(
                "desired state signature does not verify against the pinned fleet key"
            ) from None
        if state.device_id is None or state.expires is None:
            raise DesiredStateRefused("signed desired state names no device or no expiry")
    if state.device_id is not None and state.device_id != device_id:
        raise DesiredStateRefused(f"desired state is for device {state.device_id}, not {device_id}")
    if state.expires is not None and state.expires <= now:
        raise DesiredStateRefused(
            f"desired revision {state.revision} expired {now - state.expires:.0f} s ago"
            " (the fleet re-signs states before they expire; an old one was replayed, or the clock is wrong)"
        )
    if fleet_key is None and any(m.allow_downgrade for m in state.models):
        state = state.model_copy(
            update={"models": [m.model_copy(update={"allow_downgrade": False}) for m in state.models]}
        )
    return state
