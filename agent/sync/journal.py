"""The reconcile journal: what the sync service applied and what it is in the middle of, on disk.

Saved (write, fsync, rename) *before* each step runs, so after a crash or power cut the service
knows which revision it was applying, which step each model was in, and how many times it has
tried; see :mod:`agent.sync.reconcile`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from agent.sync.reserve import DiskReserve
from agent.sync.states import State
from sdk.fsio import write_atomic
from sdk.messages import DesiredState

log = logging.getLogger(__name__)


class ModelRecord(BaseModel):
    name: str
    #: the version the desired state asks for.
    version: str
    state: State = State.IDLE
    #: the version that was active before the last successful step (rollback target).
    previous_version: str | None = None
    error: str | None = None
    #: a shadow version (DesiredModel.shadow): the same steps, but "active" means installed beside
    #: the active version and answering mirrored requests, never serving callers.
    shadow: bool = False


class JournalData(BaseModel):
    applied_revision: int = -1
    #: the desired state being applied, until it is done (applied or failed).
    pending: DesiredState | None = None
    #: how many times ``pending`` has been started; the loop guard stops at a maximum.
    attempts: int = 0
    models: dict[str, ModelRecord] = Field(default_factory=dict)
    last_error: str | None = None


class Journal:
    def __init__(self, path: Path, reserve: DiskReserve | None = None) -> None:
        self.path = path
        #: a full disk must not keep a failed step from being recorded (see agent.sync.reserve)
        self._reserve = reserve
        self.data = self._load()

    def _load(self) -> JournalData:
        try:
            return JournalData.model_validate_json(self.path.read_bytes())
        except FileNotFoundError:
            return JournalData()
        except (OSError, ValidationError) as exc:
            # Writes are atomic, so this is a damaged disk or a hand edit: start afresh rather than
            # refuse to run; the retained desired state brings the device back to where it should be.
            log.error("ignoring unreadable sync journal %s: %s", self.path, exc)
            return JournalData()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = self.data.model_dump_json(by_alias=True).encode("utf-8")
        if self._reserve is None:
            write_atomic(self.path, data)
        else:
            self._reserve.retry_when_full(lambda: write_atomic(self.path, data))
