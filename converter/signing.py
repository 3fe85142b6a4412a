"""Which key signs a bundle: ``--sign-key``, else ``$EDGEFLEET_SIGN_KEY``, else a per-user key.

The per-user key is created once under ``$XDG_CONFIG_HOME/edgefleet/signing-key`` (default
``~/.config``), with a warning naming the public key file devices must trust.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from sdk import keys

log = logging.getLogger(__name__)

SIGN_KEY_ENV = "EDGEFLEET_SIGN_KEY"


def default_key_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "edgefleet" / "signing-key"


def signing_key(explicit: str | None) -> keys.Ed25519PrivateKey:
    chosen = explicit or os.environ.get(SIGN_KEY_ENV)
    if chosen:
        return keys.load_private_key(chosen)
    path = default_key_path()
    if path.is_file():
        return keys.load_private_key(path)
    key = keys.generate_key()
    _, pub = keys.save_keypair(key, path)
    log.warning(
        "no --sign-key or $%s given: created a signing key at %s; devices must trust %s",
        SIGN_KEY_ENV,
        path,
        pub,
    )
    return key
