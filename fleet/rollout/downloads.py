"""What the fleet saw itself: which device's token fetched which bundle.

A device's report is only its word. Before a rollout counts a device as updated, the controller
asks :func:`fetched`: did this device's own token download the bundle (recorded here by the
download route, also when it was redirected to a presigned S3 URL), or had the fleet already given
it this exact bundle (same sha256) before the rollout, so it may have it without downloading again?
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from fleet.db.models import Bundle, BundleDownload


def record(session: Session, device_id: str, bundle_id: str, now: float | None = None) -> None:
    """Note that ``device_id``'s token fetched ``bundle_id`` (an upsert: resumed downloads repeat it)."""
    now = time.time() if now is None else now
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(BundleDownload).values(
        device_id=device_id, bundle_id=bundle_id, first_at=now, last_at=now
    )
    session.execute(
        stmt.on_conflict_do_update(index_elements=["device_id", "bundle_id"], set_={"last_at": now})
    )


def fetched(session: Session, device_id: str, bundle: Bundle, previous_models: list[Any] | None) -> bool:
    """Whether the fleet has evidence of its own that ``device_id`` can hold ``bundle``."""
    if any(m.get("sha256") == bundle.sha256 for m in previous_models or ()):
        return True
    found = session.scalar(
        select(BundleDownload.first_at).where(
            BundleDownload.device_id == device_id, BundleDownload.bundle_id == bundle.id
        )
    )
    return found is not None
