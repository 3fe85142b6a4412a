"""One telemetry sample of the device: CPU, memory, temperature, disk, and per-model serving stats."""

from __future__ import annotations

import glob
import logging
import time
from pathlib import Path

import psutil

from agent.sync.ports import StatsPort
from sdk.messages import Telemetry
from sdk.topics import MAX_PAYLOAD_BYTES

log = logging.getLogger(__name__)

_THERMAL_ZONES = "/sys/class/thermal/thermal_zone*/temp"


def read_temperature_c(zones_glob: str = _THERMAL_ZONES) -> float | None:
    """The hottest sensor in °C, or None when the board has none (most VMs and containers)."""
    readings: list[float] = []
    for path in glob.glob(zones_glob):
        try:
            readings.append(int(Path(path).read_text().strip()) / 1000.0)  # millidegrees
        except (OSError, ValueError):
            continue
    if not readings:
        sensors = getattr(psutil, "sensors_temperatures", None)
        try:
            found = sensors() if sensors else {}
        except (OSError, RuntimeError):
            found = {}
        readings = [entry.current for entries in found.values() for entry in entries if entry.current]
    return max(readings) if readings else None


#: monitoring details dropped, in this order, from a sample that would pass the payload cap
_DETAILS = (("confusion", "classes"), ("groups",), ("quality", "shadow"))


def fit_payload(telemetry: Telemetry, limit: int = MAX_PAYLOAD_BYTES) -> Telemetry:
    """The sample, cut to fit one MQTT message: per-class figures and confusion matrices go first,
    then per-group figures, then the monitoring blocks; the device's own figures always stay."""
    if len(telemetry.to_bytes()) <= limit:
        return telemetry
    for fields in _DETAILS:
        for model in telemetry.models:
            for name in fields:
                if name in ("quality", "shadow"):
                    setattr(model, name, None)
                elif model.quality is not None:
                    setattr(model.quality, name, [] if name != "confusion" else None)
        if len(telemetry.to_bytes()) <= limit:
            break
    log.warning("telemetry sample over %d bytes: left out monitoring details (%s)", limit, ", ".join(fields))
    return telemetry


class TelemetrySampler:
    def __init__(self, data_dir: Path, stats: StatsPort, interval_s: float) -> None:
        self._data_dir = data_dir
        self._stats = stats
        self._interval_s = interval_s
        # cpu_percent(None) measures since the previous call: the first call only starts the clock.
        psutil.cpu_percent(None)

    def sample(self, seq: int) -> Telemetry:
        memory = psutil.virtual_memory()
        try:
            disk = psutil.disk_usage(str(self._data_dir))
            disk_free, disk_used = disk.free, disk.percent
        except OSError:
            disk_free, disk_used = None, None
        try:
            models = self._stats.telemetry_snapshot()
        except Exception:  # serving statistics must never stop telemetry of the device itself
            log.exception("serving statistics unavailable for this sample")
            models = []
        return fit_payload(
            Telemetry(
                time=time.time(),
                seq=seq,
                interval_s=self._interval_s,
                cpu_percent=psutil.cpu_percent(None),
                memory_bytes=memory.used,
                memory_percent=memory.percent,
                temperature_c=read_temperature_c(),
                disk_free_bytes=disk_free,
                disk_used_percent=disk_used,
                models=models,
            )
        )
