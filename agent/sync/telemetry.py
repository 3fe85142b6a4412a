"""One telemetry sample of the device: CPU, memory, temperature, disk, and per-model serving stats."""

from __future__ import annotations

import glob
import logging
import time
from pathlib import Path

import psutil

from agent.sync.ports import StatsPort
from sdk.messages import Telemetry

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
        return Telemetry(
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
