"""The model store: atomic activation, rollback, pruning, refusals, and recovery after a crash."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.store import ModelStore
from agent.update import MAX_FAILURES, Event, State
from sdk import keys
from sdk.bundle import verify_directory
from sdk.errors import IntegrityError, ModelStoreError, SignatureError, UntrustedSignerError

REPO = Path(__file__).resolve().parents[2]


def test_install_activates_and_keeps_previous(store: ModelStore, make_affine: Callable[..., Path]) -> None:
    first = store.install(make_affine("1"))
    assert (first.name, first.version, first.previous_version) == ("affine", "1", None)
    second = store.install(make_affine("2", scale=3.0))
    assert (second.version, second.previous_version) == ("2", "1")
    assert store.active_versions() == {"affine": "2"}
    assert store.installed_versions("affine") == ["1", "2"]
    assert store.journal.record.state is State.IDLE


def test_older_versions_are_pruned(store: ModelStore, make_affine: Callable[..., Path]) -> None:
    for i, v in enumerate(["1", "2", "3", "4"]):
        store.install(make_affine(v, scale=2.0 + i))
    assert store.installed_versions("affine") == ["3", "4"]
    assert store.pointer("affine").previous == "3"  # type: ignore[union-attr]


def test_rollback_and_activate_again(store: ModelStore, make_affine: Callable[..., Path]) -> None:
    store.install(make_affine("1"))
    store.install(make_affine("2", scale=3.0))
    back = store.rollback("affine", allow_downgrade=True)
    assert (back.version, back.previous_version) == ("1", "2")
    assert store.active_versions() == {"affine": "1"}
    again = store.activate("affine", "2")
    assert (again.version, again.previous_version) == ("2", "1")


def test_rollback_without_previous_is_refused(store: ModelStore, make_affine: Callable[..., Path]) -> None:
    store.install(make_affine("1"))
    with pytest.raises(ModelStoreError, match="no previous version"):
        store.rollback("affine", allow_downgrade=True)
    assert store.active_versions() == {"affine": "1"}


def test_listeners_hear_every_change(store: ModelStore, make_affine: Callable[..., Path]) -> None:
    heard: list[tuple[str, str]] = []
    store.add_listener(lambda name: heard.append((name, store.active_versions()[name])))
    store.install(make_affine("1"))
    store.install(make_affine("2", scale=3.0))
    store.rollback("affine", allow_downgrade=True)
    assert heard == [("affine", "1"), ("affine", "2"), ("affine", "1")]


def _assert_refused_keeps(store: ModelStore, active: str, error: str) -> None:
    assert store.active_versions() == {"affine": active}
    status = store.status()["models"]["affine"]  # type: ignore[index]
    assert error in status["last_error"]
    assert store.journal.record.state is State.FAILED
    assert list(store.staging_dir.iterdir()) == []


def test_failing_smoke_test_keeps_old_version(store: ModelStore, make_affine: Callable[..., Path]) -> None:
    store.install(make_affine("1"))
    with pytest.raises(ModelStoreError, match="smoke test"):
        store.install(make_affine("2", wrong_smoke=True))
    _assert_refused_keeps(store, "1", "smoke test")
    assert store.installed_versions("affine") == ["1"]


def test_untrusted_key_keeps_old_version(
    store: ModelStore, make_affine: Callable[..., Path], tmp_path: Path
) -> None:
    from tests.agent.models import affine_bundle

    store.install(make_affine("1"))
    stranger = affine_bundle(tmp_path / "stranger", keys.generate_key(), version="2")
    with pytest.raises(UntrustedSignerError):
        store.install(stranger)
    _assert_refused_keeps(store, "1", "not among the trusted keys")


def test_tampered_bundle_keeps_old_version(store: ModelStore, make_affine: Callable[..., Path]) -> None:
    import gzip
    import io
    import tarfile

    store.install(make_affine("1"))
    good = make_affine("2", scale=3.0)
    # Rewrite the model member with other bytes of the same size: the manifest hash no longer matches.
    members = []
    with tarfile.open(good, "r:gz") as tar:
        for m in tar.getmembers():
            data = tar.extractfile(m).read()  # type: ignore[union-attr]
            if m.name == "model.onnx":
                data = data[:-1] + bytes([data[-1] ^ 0xFF])
            members.append((m, data))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for m, data in members:
            tar.addfile(m, io.BytesIO(data))
    good.write_bytes(gzip.compress(buf.getvalue()))
    with pytest.raises(IntegrityError):
        store.install(good)
    _assert_refused_keeps(store, "1", "does not match the manifest")


def test_no_trusted_keys_refuses(data_dir: Path, make_affine: Callable[..., Path]) -> None:
    store = ModelStore(data_dir, [])
    with pytest.raises(ModelStoreError, match="no trusted keys"):
        store.install(make_affine("1"))
    assert store.active_versions() == {}


def test_same_version_with_other_content_is_refused(
    store: ModelStore, make_affine: Callable[..., Path]
) -> None:
    store.install(make_affine("1"))
    with pytest.raises(ModelStoreError, match="already installed with different content"):
        store.install(make_affine("1", scale=5.0))
    assert store.active_versions() == {"affine": "1"}


def test_loop_guard_stops_retrying_a_failing_version(
    store: ModelStore, make_affine: Callable[..., Path]
) -> None:
    store.install(make_affine("1"))
    bad = make_affine("2", wrong_smoke=True)
    for _ in range(MAX_FAILURES):
        with pytest.raises(ModelStoreError, match="smoke test"):
            store.install(bad)
    with pytest.raises(ModelStoreError, match="not trying it again"):
        store.install(bad)
    # An operator can override it.
    with pytest.raises(ModelStoreError, match="smoke test"):
        store.install(bad, force=True)


def test_damaged_active_version_falls_back_at_start(
    data_dir: Path, key: keys.Ed25519PrivateKey, make_affine: Callable[..., Path]
) -> None:
    store = ModelStore(data_dir, [key.public_key()])
    store.install(make_affine("1"))
    store.install(make_affine("2", scale=3.0))
    model = store.version_dir("affine", "2") / "model.onnx"
    model.write_bytes(model.read_bytes()[:-10])  # bit rot / a torn write
    reopened = ModelStore(data_dir, [key.public_key()])
    assert reopened.verify_active() == {"affine": "1"}
    assert "failed verification" in reopened.status()["models"]["affine"]["last_error"]  # type: ignore[index]


# ---------------------------------------------------------------------------------- crashes

_CRASH = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from sdk import keys
    import agent.store as store_mod

    data_dir, pub, bundle, where = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]

    def die(*args, **kwargs):
        os._exit(9)  # like a power cut: no cleanup, no finally blocks

    if where == "pointer-rename":
        real = os.replace
        def replace(src, dst, *a, **k):
            if str(dst).endswith("active.json"):
                die()
            return real(src, dst, *a, **k)
        os.replace = replace
    elif where == "after-pointer":
        real_prune = store_mod.ModelStore._prune
        store_mod.ModelStore._prune = lambda self, name: die()
    else:
        setattr(store_mod.ModelStore, where, die)
    store = store_mod.ModelStore(data_dir, [keys.load_public_key(pub)])
    store.install(bundle)
    """
)


@pytest.mark.parametrize(
    ("where", "expected_active", "expected_state"),
    [
        ("_unpack", "1", State.FAILED),  # killed while unpacking
        ("_check", "1", State.FAILED),  # killed during verification / smoke test
        ("_place", "1", State.FAILED),  # killed before the version moved into place
        ("pointer-rename", "1", State.FAILED),  # killed with the new pointer written but not renamed
        ("after-pointer", "2", State.IDLE),  # killed right after the pointer switched
    ],
)
def test_crash_at_any_step_leaves_a_verified_model_active(
    data_dir: Path,
    key: keys.Ed25519PrivateKey,
    pub_path: Path,
    make_affine: Callable[..., Path],
    where: str,
    expected_active: str,
    expected_state: State,
) -> None:
    ModelStore(data_dir, [key.public_key()]).install(make_affine("1"))
    new = make_affine("2", scale=3.0)
    proc = subprocess.run(
        [sys.executable, "-c", _CRASH, str(data_dir), str(pub_path), str(new), where],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 9, proc.stderr
    journal = json.loads((data_dir / "update.json").read_text())
    assert journal["state"] not in ("idle", "failed")  # the crash really interrupted an update

    reopened = ModelStore(data_dir, [key.public_key()])
    assert reopened.journal.record.state is expected_state
    assert reopened.verify_active() == {"affine": expected_active}
    assert list((data_dir / "staging").iterdir()) == []
    assert not list((data_dir / "models" / "affine").glob(".active.json*"))
    # And the store works on: the interrupted version installs cleanly afterwards.
    assert reopened.install(new).version == "2"


def test_start_without_trusted_keys_still_verifies_and_serves(
    data_dir: Path, key: keys.Ed25519PrivateKey, make_affine: Callable[..., Path]
) -> None:
    ModelStore(data_dir, [key.public_key()]).install(make_affine("1"))
    keyless = ModelStore(data_dir, [])
    assert keyless.verify_active() == {"affine": "1"}
    manifest = keyless.version_dir("affine", "1") / "manifest.json"
    manifest.write_bytes(manifest.read_bytes().replace(b'"fp32"', b'"fp16"'))  # a hand edit
    with pytest.raises(SignatureError):
        verify_directory(keyless.version_dir("affine", "1"))
    assert keyless.verify_active() == {}  # nothing verified to fall back to: not served at all
    assert "nothing verified is left" in keyless.status()["models"]["affine"]["last_error"]  # type: ignore[index]


def test_status_reads_without_recovering(
    data_dir: Path, key: keys.Ed25519PrivateKey, make_affine: Callable[..., Path]
) -> None:
    store = ModelStore(data_dir, [key.public_key()])
    store.install(make_affine("1"))
    # As if another process were unpacking right now: a read-only look must not settle its journal.
    store.journal.post(Event.INSTALL, model="affine", version="2", previous="1")
    status = ModelStore(data_dir, [], recover=False).status()
    assert status["update"]["state"] == "unpacking"  # type: ignore[index]
    assert json.loads((data_dir / "update.json").read_text())["state"] == "unpacking"


def test_activate_respects_the_loop_guard(store: ModelStore, make_affine: Callable[..., Path]) -> None:
    store.install(make_affine("1"))
    store.install(make_affine("2", scale=3.0))
    for attempt in range(MAX_FAILURES):
        store.rollback("affine", allow_downgrade=True)  # away from 2: counts against it
        if attempt < MAX_FAILURES - 1:
            store.activate("affine", "2")
    with pytest.raises(ModelStoreError, match="not trying it again"):
        store.activate("affine", "2")
    assert store.active_versions() == {"affine": "1"}
