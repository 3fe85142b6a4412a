"""A minimal, thread-safe Prometheus metrics registry and the text exposition format 0.0.4.

Why not prometheus_client: importing it costs ~17 ms of the agent's start (its exposition module
imports http.server, http.client, ssl and mimetypes), and the agent must be ready within 0.5 s on a
slow 2-core device. The agent only keeps counters, gauges and histograms with labels and renders
them as text, so this module does that with the standard library alone.

The text is the one prometheus_client writes with ``_created`` series disabled (the tests parse both
and compare): HELP and TYPE lines, counters exposed with the ``_total`` suffix, label pairs sorted
by name, values written as Go writes floats (``1.0``, ``+Inf``, ``NaN``, ``2.5e+07``), and the
process metrics of its ProcessCollector read from ``/proc/self`` at exposition time. Format:
https://prometheus.io/docs/instrumenting/exposition_formats/#text-based-format
"""

from __future__ import annotations

import math
import os
import re
import threading
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import Generic, Protocol, TypeVar

__all__ = [
    "CONTENT_TYPE",
    "Counter",
    "CounterChild",
    "Gauge",
    "GaugeChild",
    "Histogram",
    "HistogramChild",
    "ProcessMetrics",
    "Registry",
    "format_float",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def format_float(value: float) -> str:
    """``value`` as Go's strconv writes it, which is what Prometheus (and prometheus_client) expect."""
    d = float(value)
    if d == math.inf:
        return "+Inf"
    if d == -math.inf:
        return "-Inf"
    if d != d:
        return "NaN"
    s = repr(d)
    dot = s.find(".")
    # Go switches to an exponent from 1e21 down to 1e7; Python's repr only from 1e16.
    if d > 0 and dot > 6:
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return s


def _escape_label_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _label_string(pairs: Iterable[tuple[str, str]]) -> str:
    """``{a="x",b="y"}`` with the pairs sorted by name, as prometheus_client orders them; "" for none."""
    body = ",".join(f'{name}="{_escape_label_value(value)}"' for name, value in sorted(pairs))
    return "{" + body + "}" if body else ""


def _header(name: str, documentation: str, kind: str) -> str:
    return f"# HELP {name} {_escape_help(documentation)}\n# TYPE {name} {kind}\n"


class Collector(Protocol):
    """What a registry renders: a fixed set of series names and their text, on demand."""

    def names(self) -> set[str]: ...

    def render(self, out: list[str]) -> None: ...


class Registry:
    """The collectors of one exposition, rendered in the order they were registered."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._collectors: list[Collector] = []
        self._names: set[str] = set()

    def register(self, collector: Collector) -> None:
        names = collector.names()
        with self._lock:
            # Two families writing the same series make the scrape fail as a whole.
            taken = self._names & names
            if taken:
                raise ValueError(f"duplicated series names in the registry: {sorted(taken)}")
            self._names |= names
            self._collectors.append(collector)

    def exposition(self) -> bytes:
        with self._lock:
            collectors = list(self._collectors)
        out: list[str] = []
        for collector in collectors:
            collector.render(out)
        return "".join(out).encode("utf-8")


class _ValueChild:
    """One labelled series holding one value."""

    __slots__ = ("_lock", "_prefix", "_value")

    def __init__(self, prefix: str) -> None:
        self._lock = threading.Lock()
        self._prefix = prefix
        self._value = 0.0

    def inc(self, amount: float = 1) -> None:
        with self._lock:
            self._value += amount

    def get(self) -> float:
        with self._lock:
            return self._value

    def _render(self, out: list[str]) -> None:
        out.append(f"{self._prefix}{format_float(self.get())}\n")


class CounterChild(_ValueChild):
    """One labelled series of a counter."""

    __slots__ = ()

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError(f"a counter only goes up: cannot increase it by {amount}")
        with self._lock:
            self._value += amount


class GaugeChild(_ValueChild):
    """One labelled series of a gauge."""

    __slots__ = ()

    def dec(self, amount: float = 1) -> None:
        with self._lock:
            self._value -= amount

    def set(self, value: float) -> None:
        value = float(value)
        with self._lock:
            self._value = value


class HistogramChild:
    """One labelled series of a histogram: a count per bucket (not cumulative) and the sum."""

    __slots__ = ("_bounds", "_count_prefix", "_counts", "_lock", "_prefixes", "_sum", "_sum_prefix")

    def __init__(self, bounds: list[float], prefixes: list[str], count_prefix: str, sum_prefix: str) -> None:
        self._lock = threading.Lock()
        self._bounds = bounds
        self._prefixes = prefixes
        self._count_prefix = count_prefix
        self._sum_prefix = sum_prefix
        self._counts = [0] * (len(bounds) + 1)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        # The last slot is +Inf. NaN goes there too, as in the Go client: bisect would put it in the
        # first bucket, which claims it was below every bound.
        i = bisect_left(self._bounds, value) if value == value else len(self._bounds)
        with self._lock:
            self._counts[i] += 1
            self._sum += value

    def get(self) -> tuple[list[int], float]:
        """The count per bucket (the last one +Inf, none cumulative) and the sum, read together."""
        with self._lock:
            return list(self._counts), self._sum

    def _render(self, out: list[str]) -> None:
        counts, total = self.get()
        cumulative = 0
        for prefix, count in zip(self._prefixes, counts):
            cumulative += count
            out.append(f"{prefix}{format_float(cumulative)}\n")
        out.append(f"{self._count_prefix}{format_float(cumulative)}\n")
        out.append(f"{self._sum_prefix}{format_float(total)}\n")


ChildT = TypeVar("ChildT", CounterChild, GaugeChild, HistogramChild)


class _Metric(Generic[ChildT]):
    """A family of series that share a name and label names, one child per tuple of label values."""

    _kind = ""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        registry: Registry | None = None,
    ) -> None:
        name = self._base_name(name)
        if not _METRIC_NAME.fullmatch(name):
            raise ValueError(f"invalid metric name: {name!r}")
        for label in labelnames:
            if not _LABEL_NAME.fullmatch(label) or label.startswith("__"):
                raise ValueError(f"invalid label name: {label!r}")
        if len(set(labelnames)) != len(labelnames):
            raise ValueError(f"duplicated label names: {list(labelnames)}")
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()
        self._children: dict[tuple[str, ...], ChildT] = {}
        if not self.labelnames:
            # An unlabelled family shows at 0 from the start, as prometheus_client's does.
            self.labels()
        if registry is not None:
            registry.register(self)

    @property
    def family(self) -> str:
        """The name on the HELP and TYPE lines."""
        return self.name

    @staticmethod
    def _base_name(name: str) -> str:
        """The family's name as declared; a kind may drop a suffix it adds itself."""
        return name

    def labels(self, *values: object) -> ChildT:
        """The series of these label values (in ``labelnames`` order), made on first use.

        Callers on a hot path keep the child: this lookup converts and hashes the values.
        """
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes {len(self.labelnames)} label values, got {len(values)}")
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            with self._lock:
                child = self._children.get(key)
                if child is None:
                    child = self._children[key] = self._new_child(list(zip(self.labelnames, key)))
        return child

    def _new_child(self, pairs: list[tuple[str, str]]) -> ChildT:
        raise NotImplementedError

    def names(self) -> set[str]:
        return {self.name}

    def render(self, out: list[str]) -> None:
        with self._lock:
            children = list(self._children.values())
        out.append(_header(self.family, self.documentation, self._kind))
        for child in children:
            child._render(out)


class Counter(_Metric[CounterChild]):
    """A value that only goes up, exposed as ``<name>_total``."""

    _kind = "counter"

    @staticmethod
    def _base_name(name: str) -> str:
        # prometheus_client takes either spelling and exposes ``_total`` once.
        return name.removesuffix("_total")

    @property
    def family(self) -> str:
        return self.name + "_total"

    def names(self) -> set[str]:
        return {self.name, self.name + "_total"}

    def _new_child(self, pairs: list[tuple[str, str]]) -> CounterChild:
        return CounterChild(f"{self.name}_total{_label_string(pairs)} ")


class Gauge(_Metric[GaugeChild]):
    """A value that goes up and down."""

    _kind = "gauge"

    def _new_child(self, pairs: list[tuple[str, str]]) -> GaugeChild:
        return GaugeChild(f"{self.name}{_label_string(pairs)} ")


class Histogram(_Metric[HistogramChild]):
    """Observations counted in buckets by upper bound, with their count and sum."""

    _kind = "histogram"

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float],
        registry: Registry | None = None,
    ) -> None:
        bounds = [float(b) for b in buckets]
        if bounds and bounds[-1] == math.inf:
            bounds.pop()
        if not bounds or bounds != sorted(set(bounds)):
            raise ValueError(f"histogram buckets must be increasing, one at least: {list(buckets)}")
        if "le" in labelnames:
            raise ValueError("a histogram cannot have a label named le: its buckets use it")
        self._bounds = bounds
        self._le = [format_float(b) for b in bounds] + ["+Inf"]
        super().__init__(name, documentation, labelnames, registry=registry)

    def names(self) -> set[str]:
        return {self.name + suffix for suffix in ("", "_bucket", "_count", "_sum")}

    def _new_child(self, pairs: list[tuple[str, str]]) -> HistogramChild:
        labels = _label_string(pairs)
        return HistogramChild(
            self._bounds,
            [f"{self.name}_bucket{_label_string([*pairs, ('le', le)])} " for le in self._le],
            f"{self.name}_count{labels} ",
            f"{self.name}_sum{labels} ",
        )


def _clock_ticks() -> float:
    try:
        return float(os.sysconf("SC_CLK_TCK"))
    except (ValueError, OSError, AttributeError):
        return 100.0


def _page_size() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4096


class ProcessMetrics:
    """The process figures prometheus_client's ProcessCollector gives on Linux, same names and help.

    Read from ``/proc/self`` at each exposition; left out where ``/proc`` cannot be read.
    """

    _NAMES = (
        "process_virtual_memory_bytes",
        "process_resident_memory_bytes",
        "process_start_time_seconds",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_max_fds",
    )

    def __init__(self, *, proc: str = "/proc", registry: Registry | None = None) -> None:
        self._self = os.path.join(proc, "self")
        self._ticks = _clock_ticks()
        self._page_size = _page_size()
        # The start time is in ticks since boot, so without the boot time there is nothing to add.
        self._boot_time: float | None = None
        try:
            with open(os.path.join(proc, "stat"), "rb") as stat:
                for line in stat:
                    if line.startswith(b"btime "):
                        self._boot_time = float(line.split()[1])
                        break
        except OSError:
            pass
        if registry is not None:
            registry.register(self)

    def names(self) -> set[str]:
        return set(self._NAMES)

    def render(self, out: list[str]) -> None:
        if self._boot_time is None:
            return
        try:
            with open(os.path.join(self._self, "stat"), "rb") as f:
                # The command name in parentheses may hold spaces: the fields start after it.
                fields = f.read().rsplit(b")", 1)[-1].split()
            figures = [
                ("process_virtual_memory_bytes", "Virtual memory size in bytes.", "gauge", float(fields[20])),
                (
                    "process_resident_memory_bytes",
                    "Resident memory size in bytes.",
                    "gauge",
                    float(fields[21]) * self._page_size,
                ),
                (
                    "process_start_time_seconds",
                    "Start time of the process since unix epoch in seconds.",
                    "gauge",
                    float(fields[19]) / self._ticks + self._boot_time,
                ),
                (
                    "process_cpu_seconds_total",
                    "Total user and system CPU time spent in seconds.",
                    "counter",
                    (float(fields[11]) + float(fields[12])) / self._ticks,
                ),
            ]
        except (OSError, IndexError, ValueError):
            figures = []
        try:
            figures.append(
                (
                    "process_open_fds",
                    "Number of open file descriptors.",
                    "gauge",
                    len(os.listdir(os.path.join(self._self, "fd"))),
                )
            )
            with open(os.path.join(self._self, "limits"), "rb") as limits:
                for line in limits:
                    if line.startswith(b"Max open file"):
                        # The soft limit: the one the process runs into.
                        max_fds = float(line.split()[3])
                        figures.append(
                            ("process_max_fds", "Maximum number of open file descriptors.", "gauge", max_fds)
                        )
                        break
        except (OSError, IndexError, ValueError):
            pass
        for name, documentation, kind, value in figures:
            out.append(f"{_header(name, documentation, kind)}{name} {format_float(value)}\n")
