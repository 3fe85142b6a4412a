"""Fixtures for the agent tests: a signing key, signed bundles, a store, a real agent on loopback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.early import EarlyLoads
from agent.service import AgentService
from agent.settings import AgentSettings
from agent.store import ModelStore
from sdk import keys
from tests.agent.models import affine_bundle


@pytest.fixture
def key(tmp_path: Path) -> keys.Ed25519PrivateKey:
    k = keys.generate_key()
    keys.save_keypair(k, tmp_path / "keys" / "signer")
    return k


@pytest.fixture
def pub_path(tmp_path: Path, key: keys.Ed25519PrivateKey) -> Path:
    return tmp_path / "keys" / "signer.pub"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def store(data_dir: Path, key: keys.Ed25519PrivateKey) -> ModelStore:
    return ModelStore(data_dir, [key.public_key()])


@pytest.fixture
def make_affine(tmp_path: Path, key: keys.Ed25519PrivateKey) -> Callable[..., Path]:
    def make(version: str = "1", scale: float = 2.0, **kw: object) -> Path:
        return affine_bundle(tmp_path / "src", key, version=version, scale=scale, **kw)  # type: ignore[arg-type]

    return make


@pytest.fixture
def start_agent(data_dir: Path, pub_path: Path) -> Iterator[Callable[..., AgentService]]:
    started: list[AgentService] = []

    def start(early: EarlyLoads | None = None, **overrides: object) -> AgentService:
        """``early``: sessions started before the agent, as ``edge-agent serve`` does (agent.early)."""
        settings = AgentSettings(**{"data_dir": data_dir, "trust_keys": [pub_path], "port": 0, **overrides})  # type: ignore[arg-type]
        service = AgentService(settings, early).start_background()
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()
