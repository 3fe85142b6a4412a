"""Bundle uploads: verified against the fleet's trusted keys before they are stored."""

from __future__ import annotations

import json
import logging
import secrets
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet.db.models import Bundle
from fleet.db.session import get_existing
from fleet.storage import BundleStorage
from sdk import keys
from sdk.bundle import file_sha256, verify_bundle
from sdk.errors import ConflictError, UntrustedSignerError

log = logging.getLogger(__name__)


def store_upload(
    session: Session,
    storage: BundleStorage,
    staged: Path,
    trusted: list[keys.Ed25519PublicKey],
) -> Bundle:
    """Verify a staged upload (signature against trusted keys, hashes, layout) and keep it."""
    try:
        if not trusted:
            raise UntrustedSignerError(
                "the fleet trusts no signing keys, so it accepts no bundles; start it with --trust-key PUB"
            )
        verified = verify_bundle(staged, trusted)
        m = verified.manifest
        existing = session.scalars(
            select(Bundle).where(
                Bundle.name == m.name, Bundle.version == m.version, Bundle.profile == m.profile
            )
        ).first()
        if existing is not None:
            raise ConflictError(
                f"bundle {m.name} {m.version} for {m.profile} is already uploaded ({existing.id})"
            )
        digest, size = file_sha256(staged)
        bundle_id = secrets.token_hex(8)
        key = f"{bundle_id}-{m.filename}"
        storage.put(key, staged)
    finally:
        staged.unlink(missing_ok=True)
    bundle = Bundle(
        id=bundle_id,
        name=m.name,
        version=m.version,
        profile=m.profile,
        sha256=digest,
        size=size,
        storage_key=key,
        signer=verified.signer,
        manifest=json.loads(verified.manifest_bytes),
    )
    session.add(bundle)
    session.flush()
    log.info(
        "stored bundle %s %s %s (%d bytes, signer %s)", m.name, m.version, m.profile, size, verified.signer
    )
    return bundle


def get(session: Session, bundle_id: str) -> Bundle:
    return get_existing(session, Bundle, bundle_id, "bundle")


def list_bundles(session: Session) -> list[Bundle]:
    return list(session.scalars(select(Bundle).order_by(Bundle.created_at.desc())))
