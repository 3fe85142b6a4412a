"""The agent's side of the MQTT protocol: status, desired → reconcile → reported/events, telemetry."""

from agent.sync.service import SyncConfig, SyncService

__all__ = ["SyncConfig", "SyncService"]
