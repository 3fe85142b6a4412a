"""A device as its own process, so tests can kill it with SIGKILL: ``python -m tests.agent.sync.device_main CONFIG.json``.

CONFIG holds the SyncConfig fields plus ``trusted_key`` (a public key file for the FakeStore).
Prints ``started`` once the service runs, then waits to be killed.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from pathlib import Path

from agent.sync import SyncConfig, SyncService
from sdk import keys
from tests.agent.sync.conftest import FAST
from tests.agent.sync.support import FakeStore, NoStats


def main(config_path: str) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    raw = json.loads(Path(config_path).read_text())
    store = FakeStore(trusted=[keys.load_public_key(raw.pop("trusted_key"))])
    config = SyncConfig(
        **{**raw, "credentials_file": Path(raw["credentials_file"]), "data_dir": Path(raw["data_dir"])}
    )
    SyncService(config, store, NoStats(), FAST).start()
    print("started", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1])
