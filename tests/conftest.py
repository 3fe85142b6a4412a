"""Fixtures shared by every test package."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.mosquitto import Mosquitto, run_mosquitto


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """An anonymous Mosquitto on a free port, for this test only."""
    with run_mosquitto(tmp_path / "mosquitto") as broker:
        yield broker


@pytest.fixture
def signing_key(tmp_path: Path):
    """A fresh Ed25519 key written as tmp/keys/signing and signing.pub."""
    from sdk import keys

    key = keys.generate_key()
    keys.save_keypair(key, tmp_path / "keys" / "signing")
    return key
