"""Where an agent's update stands, read from its data folder: for tests that kill it mid-update.

The sync journal (``sync/journal.json``) and the store's update journal (``update.json``) are
saved *before* each step runs, so what they say at the moment of a SIGKILL is the step it hit:

- ``download``: the sync journal has the model ``downloading`` (bytes going to ``.part``);
- ``install``: the store is ``unpacking`` (signature checked, files hashed as they stream into
  staging), or the bundle is downloaded and the store has not begun;
- ``verify``: the store is ``smoke_testing`` (hashes and signature again, then the smoke test);
- ``activate``: the store is ``activating`` (placing the folder, switching ``active.json``,
  pruning), or the pointer names the new version and the sync journal has not yet recorded it;
- ``idle``: no update in progress.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PHASES = ("download", "install", "verify", "activate")
_STORE = {"unpacking": "install", "smoke_testing": "verify", "activating": "activate"}


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # not there yet, or caught between write and rename: the next read tells


def active_version(data_dir: Path, model: str) -> str | None:
    return _read(data_dir / "models" / model / "active.json").get("version")


def update_phase(data_dir: Path, model: str, version: str) -> str:
    """The step of the update of ``model`` to ``version`` in progress, or ``idle``."""
    store = _read(data_dir / "update.json").get("state")
    if store in _STORE:
        return _STORE[store]
    sync = _read(data_dir / "sync" / "journal.json")
    record = (sync.get("models") or {}).get(model) or {}
    if not sync.get("pending") or record.get("version") != version:
        return "idle"
    state = record.get("state")
    if state == "downloading":
        return "download"
    if state in ("installing", "activating"):
        return "activate" if active_version(data_dir, model) == version else "install"
    return "idle"
