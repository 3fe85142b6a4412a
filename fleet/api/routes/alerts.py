"""/api/v1/alerts: the monitoring alerts (drift, accuracy, bias, latency) of every device, newest first."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from sqlalchemy import select

from fleet.api.deps import SessionDep, ViewerDep
from fleet.db.models import Alert
from fleet.schemas import AlertPublic

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
