"""/api/v1/audit (admin): every change, who made it, when and from where; newest first, paged."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from fleet import audit
from fleet.api.deps import AdminDep, SessionDep
from fleet.schemas import AuditEntry, AuditPage

router = APIRouter(prefix="/audit", tags=["audit"])


@router.get("", response_model=AuditPage)
def read_audit(
    session: SessionDep,
    _: AdminDep,
    since: Annotated[float | None, Query(description="unix time, inclusive")] = None,
    until: Annotated[float | None, Query(description="unix time, exclusive")] = None,
    actor: Annotated[str | None, Query(description="a token id or device id")] = None,
    action: Annotated[audit.Action | None, Query()] = None,
    target: Annotated[str | None, Query(description="a device, bundle, rollout or token id")] = None,
    before_id: Annotated[
        int | None, Query(ge=0, le=2**63 - 1, description="the last id of the previous page")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=audit.MAX_PAGE)] = 100,
) -> AuditPage:
    rows = audit.entries(
        session,
        since=since,
        until=until,
        actor=actor,
        action=action.value if action else None,
        target=target,
        before_id=before_id,
        limit=limit,
    )
    return AuditPage(
        entries=[AuditEntry.model_validate(r) for r in rows],
        next_before_id=rows[-1].id if len(rows) == limit else None,
    )
