"""What the sync service needs from the rest of the agent, as typing Protocols.

The model store and the serving statistics are written elsewhere in ``agent/``; sync codes only
against these two ports, so tests can plug in a small fake and the real classes plug in unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from sdk.messages import ModelTelemetry


class InstalledModel(Protocol):
    """What the store returns after an install, an activation or a rollback."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def previous_version(self) -> str | None: ...


class StorePort(Protocol):
    def install(self, bundle_path: Path, *, allow_downgrade: bool = False) -> InstalledModel:
        """Verify (signature, hashes, smoke test) and activate atomically; raise EdgeError on failure.

        A version older than the newest this device activated is refused unless ``allow_downgrade``.
        """
        ...

    def activate(self, name: str, version: str, *, allow_downgrade: bool = False) -> InstalledModel: ...

    def rollback(self, name: str, *, allow_downgrade: bool = False) -> InstalledModel: ...

    def install_shadow(self, bundle_path: Path) -> InstalledModel:
        """Verify (signature, hashes, smoke test) and keep beside the active version as its shadow."""
        ...

    def set_shadow(self, name: str, version: str) -> InstalledModel: ...

    def clear_shadow(self, name: str) -> None: ...

    def shadow_versions(self) -> dict[str, str]: ...

    def active_profile(self) -> str | None:
        """The hardware profile of the active bundles, when they agree on one."""
        ...

    def has_version(self, name: str, version: str) -> bool: ...

    def active_versions(self) -> dict[str, str]: ...

    def add_listener(self, fn: Callable[[str], None]) -> None:
        """``fn(model_name)`` is called after the store changed which version of a model is active."""
        ...


class StatsPort(Protocol):
    def telemetry_snapshot(self) -> list[ModelTelemetry]:
        """Per-model counters since the previous snapshot, and latency percentiles and drift."""
        ...
