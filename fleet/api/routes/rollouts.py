"""/api/v1/rollouts: create, list, read with per-device progress, pause, resume, roll back."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet import audit
from fleet.api.deps import ActorDep, ContextDep, OperatorDep, SessionDep, ViewerDep
from fleet.db.models import Rollout
from fleet.rollout import service
from fleet.rollout.states import RolloutEvent, operator_actions
from fleet.schemas import RolloutCreate, RolloutDetail, RolloutDevicePublic, RolloutPublic

router = APIRouter(prefix="/rollouts", tags=["rollouts"])


def _public(session: Session, rollout: Rollout) -> RolloutPublic:
    out = RolloutPublic.model_validate(rollout)
    out.counts = service.counts(session, rollout.id)
    out.actions = operator_actions(rollout.state)
    return out


def _detail(session: Session, rollout: Rollout) -> RolloutDetail:
    return RolloutDetail(
        **_public(session, rollout).model_dump(),
        devices=[RolloutDevicePublic.model_validate(rd) for rd in service.devices_of(session, rollout.id)],
    )


@router.post("", response_model=RolloutDetail, status_code=201)
def create_rollout(
    data: RolloutCreate, session: SessionDep, actor: ActorDep, _: OperatorDep
) -> RolloutDetail:
    """Start a rollout; the controller moves it forward wave by wave within its health gates."""
    rollout = service.create(session, data)
    session.flush()
    audit.record(session, actor, audit.Action.ROLLOUT_CREATE, rollout.id, **data.model_dump())
    return _detail(session, rollout)


@router.get("", response_model=list[RolloutPublic])
def list_rollouts(session: SessionDep, _: ViewerDep) -> list[RolloutPublic]:
    return [_public(session, r) for r in session.scalars(select(Rollout).order_by(Rollout.created_at.desc()))]


@router.get("/{rollout_id}", response_model=RolloutDetail)
def get_rollout(rollout_id: str, session: SessionDep, _: ViewerDep) -> RolloutDetail:
    return _detail(session, service.get(session, rollout_id))


_ACTIONS = {
    RolloutEvent.PAUSE: audit.Action.ROLLOUT_PAUSE,
    RolloutEvent.RESUME: audit.Action.ROLLOUT_RESUME,
    RolloutEvent.ROLLBACK: audit.Action.ROLLOUT_ROLLBACK,
}


def _act(ctx: ContextDep, rollout_id: str, event: RolloutEvent, actor: audit.Actor) -> RolloutDetail:
    outbox: service.Outbox = []
    with ctx.db.session() as session:
        reason = f"{event.value} by token {actor.token_id}"
        rollout = service.act(session, rollout_id, event, outbox, reason=reason)
        audit.record(session, actor, _ACTIONS[event], rollout.id, state=rollout.state)
    ctx.publish_all(outbox)  # only after the commit: a device never sees state the database lacks
    with ctx.db.session() as session:
        return _detail(session, service.get(session, rollout.id))


@router.post("/{rollout_id}/pause", response_model=RolloutDetail)
def pause_rollout(rollout_id: str, ctx: ContextDep, actor: ActorDep, _: OperatorDep) -> RolloutDetail:
    return _act(ctx, rollout_id, RolloutEvent.PAUSE, actor)


@router.post("/{rollout_id}/resume", response_model=RolloutDetail)
def resume_rollout(rollout_id: str, ctx: ContextDep, actor: ActorDep, _: OperatorDep) -> RolloutDetail:
    return _act(ctx, rollout_id, RolloutEvent.RESUME, actor)


@router.post("/{rollout_id}/rollback", response_model=RolloutDetail)
def rollback_rollout(rollout_id: str, ctx: ContextDep, actor: ActorDep, _: OperatorDep) -> RolloutDetail:
    """Restore the previous desired state on every device this rollout touched."""
    return _act(ctx, rollout_id, RolloutEvent.ROLLBACK, actor)
