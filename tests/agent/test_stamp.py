"""Start-up verification: the quick check against the stamp, and the full check behind it."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from agent.service import AgentService
from agent.stamp import STAMP_NAME, read_stamped
from agent.store import ModelStore
from sdk import keys


def _rot(model: Path) -> None:
    """Flip a byte and make the stamp match again: damage the file system never saw (bit rot)."""
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF
    model.write_bytes(bytes(data))
    stamp_path = model.parent / STAMP_NAME
    stamp = json.loads(stamp_path.read_bytes())
    st = model.stat()
    stamp["files"][model.name] = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
    stamp_path.write_text(json.dumps(stamp))


def test_install_stamps_and_the_quick_check_accepts_an_unchanged_folder(
    store: ModelStore, make_affine: Callable[..., Path]
) -> None:
    store.install(make_affine("1"))
    folder = store.version_dir("affine", "1")
    manifest = read_stamped(folder, store.trusted_keys)
    assert manifest is not None and manifest.version == "1"


def test_any_change_through_the_file_system_fails_the_quick_check(
    store: ModelStore, make_affine: Callable[..., Path]
) -> None:
    store.install(make_affine("1"))
    folder = store.version_dir("affine", "1")
    model = folder / "model.onnx"
    before = model.stat()
    time.sleep(0.01)
    # Same bytes, same mtime put back: only the ctime tells, and it is enough.
    model.write_bytes(model.read_bytes())
    os.utime(model, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert read_stamped(folder, store.trusted_keys) is None
    # A full verification passes (the bytes are right) and stamps the folder again.
    assert store.verify_active(full=False) == {"affine": "1"}
    assert read_stamped(folder, store.trusted_keys) is not None


def test_a_signer_no_longer_trusted_fails_the_quick_check(
    data_dir: Path, store: ModelStore, make_affine: Callable[..., Path]
) -> None:
    store.install(make_affine("1"))
    other = ModelStore(data_dir, [keys.generate_key().public_key()])
    assert read_stamped(other.version_dir("affine", "1"), other.trusted_keys) is None
    assert other.verify_active(full=False) == {}  # the full check refuses it: not served


def test_bit_rot_passes_the_quick_check_and_the_full_check_falls_back(
    data_dir: Path, key: keys.Ed25519PrivateKey, make_affine: Callable[..., Path]
) -> None:
    store = ModelStore(data_dir, [key.public_key()])
    store.install(make_affine("1"))
    store.install(make_affine("2", scale=3.0))
    _rot(store.version_dir("affine", "2") / "model.onnx")
    reopened = ModelStore(data_dir, [key.public_key()])
    assert reopened.verify_active(full=False) == {"affine": "2"}
    assert reopened.verify_active(full=True) == {"affine": "1"}


def test_poll_changes_reports_a_model_that_stopped_being_served(
    data_dir: Path, key: keys.Ed25519PrivateKey, make_affine: Callable[..., Path]
) -> None:
    store = ModelStore(data_dir, [key.public_key()])
    store.install(make_affine("1"))
    heard: list[str] = []
    store.add_listener(heard.append)
    _rot(store.version_dir("affine", "1") / "model.onnx")
    assert store.verify_active(full=True) == {}
    assert store.poll_changes() == ["affine"]
    assert heard == ["affine"]


def test_agent_serves_at_once_then_replaces_a_rotten_version_in_the_background(
    data_dir: Path,
    key: keys.Ed25519PrivateKey,
    make_affine: Callable[..., Path],
    start_agent: Callable[..., AgentService],
) -> None:
    store = ModelStore(data_dir, [key.public_key()])
    store.install(make_affine("1"))
    store.install(make_affine("2", scale=3.0))
    _rot(store.version_dir("affine", "2") / "model.onnx")
    agent = start_agent()
    deadline = time.monotonic() + 30
    while True:
        # Until the full check is done, the rotten version may be served or (unloadable) not at all.
        reply = httpx.get(agent.url + "/v2/models/affine")
        version = reply.json()["versions"][0] if reply.status_code == 200 else None
        if version == "1" or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert version == "1"
    status = agent.store.status()["models"]["affine"]  # type: ignore[index]
    assert "failed verification" in status["last_error"]
