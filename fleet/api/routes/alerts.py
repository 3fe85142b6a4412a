"""/api/v1/alerts: the monitoring alerts (drift, accuracy, bias, latency) of every device, newest
first, and /api/v1/alerts/policies: their thresholds per selector (labels, model)."""

from __future__ import annotations

import time
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from sqlalchemy import func, select

from fleet import audit
from fleet.alerts.store import MAX_POLICIES
from fleet.api.deps import ActorDep, OperatorDep, SessionDep, ViewerDep
from fleet.db.models import Alert, AlertPolicy
from fleet.schemas import AlertPolicyIn, AlertPolicyPublic, AlertPublic
from sdk.errors import ConflictError, NotFoundError

router = APIRouter(prefix="/alerts", tags=["alerts"])
MAX_PAGE = 1000


@router.get("", response_model=list[AlertPublic])
def list_alerts(
    session: SessionDep,
    _: ViewerDep,
    state: Annotated[
        Literal["pending", "firing", "resolved", "open"] | None,
        Query(description="one state, or open (pending and firing)"),
    ] = None,
    rule: Annotated[Literal["drift", "accuracy", "bias", "latency"] | None, Query()] = None,
    device_id: Annotated[str | None, Query(max_length=128)] = None,
    model: Annotated[str | None, Query(max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 200,
) -> list[AlertPublic]:
    q = select(Alert)
    if state == "open":
        q = q.where(Alert.open.is_(True))
    elif state is not None:
        q = q.where(Alert.state == state)
    if rule is not None:
        q = q.where(Alert.rule == rule)
    if device_id is not None:
        q = q.where(Alert.device_id == device_id)
    if model is not None:
        q = q.where(Alert.model == model)
    rows = session.scalars(q.order_by(Alert.since.desc(), Alert.id.desc()).limit(limit))
    return [AlertPublic.model_validate(a) for a in rows]


@router.get("/policies", response_model=list[AlertPolicyPublic])
def list_policies(session: SessionDep, _: ViewerDep) -> list[AlertPolicyPublic]:
    """Alert thresholds per selector; older first (a later one overrides an earlier one it overlaps)."""
    rows = session.scalars(select(AlertPolicy).order_by(AlertPolicy.created_at))
    return [AlertPolicyPublic.model_validate(p) for p in rows]


@router.put("/policies/{name}", response_model=AlertPolicyPublic)
def set_policy(
    name: Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")],
    data: AlertPolicyIn,
    session: SessionDep,
    actor: ActorDep,
    _: OperatorDep,
) -> AlertPolicyPublic:
    """Create or replace the thresholds for the devices (and model) ``selector`` matches."""
    policy = session.get(AlertPolicy, name)
    if policy is None:
        if session.scalar(select(func.count()).select_from(AlertPolicy)) >= MAX_POLICIES:
            raise ConflictError(f"at most {MAX_POLICIES} alert policies; delete one first")
        policy = AlertPolicy(name=name, created_at=time.time())
        session.add(policy)
    policy.labels = dict(data.selector.labels)
    policy.model = data.selector.model
    policy.thresholds = data.thresholds.model_dump(exclude_none=True)
    policy.updated_at = time.time()
    session.flush()
    audit.record(session, actor, audit.Action.ALERT_POLICY_SET, name, **data.model_dump())
    return AlertPolicyPublic.model_validate(policy)


@router.delete("/policies/{name}", status_code=204)
def delete_policy(name: str, session: SessionDep, actor: ActorDep, _: OperatorDep) -> None:
    policy = session.get(AlertPolicy, name)
    if policy is None:
        raise NotFoundError(f"no alert policy {name}")
    session.delete(policy)
    audit.record(session, actor, audit.Action.ALERT_POLICY_DELETE, name)
