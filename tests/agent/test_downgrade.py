"""Downgrade protection (issue 14, finding 2): a device never activates a version older than the
newest it has activated, unless the rollback is authorized (``allow_downgrade``: a signed desired
state, or ``edge-agent install --allow-downgrade`` by the local operator)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.store import ModelStore
from agent.update import State
from sdk.errors import ModelStoreError
from tests.agent.test_cli import edge_agent


def test_installing_an_older_signed_bundle_is_refused(
    store: ModelStore, make_affine: Callable[..., Path]
) -> None:
    old = make_affine("1.0")
    store.install(make_affine("2.0", scale=3.0))
    with pytest.raises(ModelStoreError, match="older than 2.0"):
        store.install(old)
    assert store.active_versions() == {"affine": "2.0"}
    assert store.installed_versions("affine") == ["2.0"]  # nothing of 1.0 left behind
    assert store.journal.record.state is State.FAILED


def test_an_authorized_downgrade_is_applied(store: ModelStore, make_affine: Callable[..., Path]) -> None:
    old = make_affine("1.0")
    store.install(make_affine("2.0", scale=3.0))
    assert store.install(old, allow_downgrade=True).version == "1.0"
    assert store.active_versions() == {"affine": "1.0"}
    # the newest version seen stays the floor: 1.5 is still older than 2.0
    with pytest.raises(ModelStoreError, match="older than 2.0"):
        store.install(make_affine("1.5", scale=4.0))


def test_activating_or_rolling_back_to_an_older_installed_version_needs_authorization(
    store: ModelStore, make_affine: Callable[..., Path]
) -> None:
    store.install(make_affine("1.0"))
    store.install(make_affine("2.0", scale=3.0))
    with pytest.raises(ModelStoreError, match="older than 2.0"):
        store.activate("affine", "1.0")
    with pytest.raises(ModelStoreError, match="older than 2.0"):
        store.rollback("affine")
    assert store.active_versions() == {"affine": "2.0"}
    assert store.activate("affine", "1.0", allow_downgrade=True).version == "1.0"
    # going forward again needs nothing
    assert store.activate("affine", "2.0").version == "2.0"


def test_the_newest_version_survives_a_restart(
    data_dir: Path, store: ModelStore, make_affine: Callable[..., Path], key
) -> None:  # type: ignore[no-untyped-def]
    store.install(make_affine("1.0"))
    store.install(make_affine("2.0", scale=3.0))
    store.rollback("affine", allow_downgrade=True)  # authorized: 1.0 active, 2.0 is still the newest
    reopened = ModelStore(data_dir, [key.public_key()])
    assert reopened.pointer("affine").newest == "2.0"  # type: ignore[union-attr]
    with pytest.raises(ModelStoreError, match="older than 2.0"):
        reopened.install(make_affine("1.5", scale=4.0))


def test_a_store_from_before_takes_its_active_version_as_the_floor(
    data_dir: Path, store: ModelStore, make_affine: Callable[..., Path]
) -> None:
    store.install(make_affine("2.0", scale=3.0))
    pointer = data_dir / "models" / "affine" / "active.json"
    pointer.write_text(json.dumps({"version": "2.0", "previous": None}))  # as an older agent wrote it
    with pytest.raises(ModelStoreError, match="older than 2.0"):
        store.install(make_affine("1.0"))


def test_cli_install_refuses_an_older_bundle_unless_the_operator_allows_it(
    make_affine: Callable[..., Path], data_dir: Path, pub_path: Path
) -> None:
    common = ("--data-dir", data_dir, "--trust-key", pub_path)
    assert edge_agent("install", make_affine("2.0", scale=3.0), *common).returncode == 0
    old = make_affine("1.0")
    refused = edge_agent("install", old, *common)
    assert refused.returncode == 1
    assert "refusing to activate affine 1.0: it is older than 2.0" in refused.stderr.strip().splitlines()[-1]
    assert (
        json.loads(edge_agent("status", "--data-dir", data_dir, "--json").stdout)["models"]["affine"][
            "active"
        ]
        == "2.0"
    )
    allowed = edge_agent("install", old, *common, "--allow-downgrade", "--json")
    assert allowed.returncode == 0, allowed.stderr
    assert json.loads(allowed.stdout)["version"] == "1.0"
