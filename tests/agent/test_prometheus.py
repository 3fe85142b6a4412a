"""agent.prometheus: its text parses to what was recorded and matches prometheus_client's own."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from agent import prometheus as ours
from agent.metrics import CONTENT_TYPE, AgentMetrics

BUCKETS = (0.001, 0.01, 0.1, 1.0, 2.5)
#: a quote, a backslash and a newline: the three characters a label value must escape
ODD = 'say "hi"\\ then\nbye'
#: one line per operation: (metric, label values, method, argument)
RECORDING = [
    ("requests", ("m", "1"), "inc", 1),
    ("requests", ("m", "1"), "inc", 2.5),
    ("requests", (ODD, "2"), "inc", 1),
    ("temperature", ("m", "1"), "set", 41.5),
    ("temperature", ("m", "1"), "dec", 1.5),
    ("temperature", (ODD, "2"), "inc", 3),
    ("latency", ("m", "1"), "observe", 0.0005),
    ("latency", ("m", "1"), "observe", 0.01),  # on a bound: counted in that bucket (le)
    ("latency", ("m", "1"), "observe", 0.3),
    ("latency", ("m", "1"), "observe", 7.0),  # above every bound: only +Inf
    ("latency", (ODD, "2"), "observe", 2),
]
HELP = {
    "requests": "Requests served.",
    "temperature": 'Degrees, with a \\ backslash, a "quote"\nand a second line.',
    "latency": "Seconds per request.",
}


def record(make: Callable[..., dict[str, object]]) -> None:
    metrics = make()
    for name, labels, method, argument in RECORDING:
        getattr(metrics[name].labels(*labels), method)(argument)  # type: ignore[attr-defined]


def ours_registry() -> ours.Registry:
    registry = ours.Registry()

    def make() -> dict[str, object]:
        return {
            "requests": ours.Counter("t_requests", HELP["requests"], ["model", "version"], registry=registry),
            "temperature": ours.Gauge(
                "t_temperature_celsius", HELP["temperature"], ["model", "version"], registry=registry
            ),
            "latency": ours.Histogram(
                "t_latency_seconds", HELP["latency"], ["model", "version"], buckets=BUCKETS, registry=registry
            ),
        }

    record(make)
    return registry


def reference_text() -> str:
    """The same recording, written by prometheus_client, ``_created`` series left out as the agent does."""
    registry = prometheus_client.CollectorRegistry()

    def make() -> dict[str, object]:
        return {
            "requests": prometheus_client.Counter(
                "t_requests", HELP["requests"], ["model", "version"], registry=registry
            ),
            "temperature": prometheus_client.Gauge(
                "t_temperature_celsius", HELP["temperature"], ["model", "version"], registry=registry
            ),
            "latency": prometheus_client.Histogram(
                "t_latency_seconds", HELP["latency"], ["model", "version"], buckets=BUCKETS, registry=registry
            ),
        }

    record(make)
    text = prometheus_client.generate_latest(registry).decode()
    # Whether prometheus_client writes them is process-wide state (disable_created_metrics), which
    # other tests in this process may have set: drop them rather than depend on it.
    return "".join(
        line for line in text.splitlines(keepends=True) if not re.match(r"(# \w+ )?\w+_created[ {]", line)
    )


def families(text: str) -> list[tuple[str, str, str, list[tuple[str, dict[str, str], float]]]]:
    return [
        (f.name, f.type, f.documentation, [(s.name, s.labels, s.value) for s in f.samples])
        for f in text_string_to_metric_families(text)
    ]


def test_the_exposition_parses_to_the_values_recorded() -> None:
    text = ours_registry().exposition().decode()
    m1, odd = {"model": "m", "version": "1"}, {"model": ODD, "version": "2"}

    def buckets(labels: dict[str, str], counts: list[float]) -> list[tuple[str, dict[str, str], float]]:
        bounds = ["0.001", "0.01", "0.1", "1.0", "2.5", "+Inf"]
        return [("t_latency_seconds_bucket", {**labels, "le": b}, c) for b, c in zip(bounds, counts)]

    assert families(text) == [
        (
            "t_requests",
            "counter",
            HELP["requests"],
            [("t_requests_total", m1, 3.5), ("t_requests_total", odd, 1.0)],
        ),
        (
            "t_temperature_celsius",
            "gauge",
            HELP["temperature"],
            [("t_temperature_celsius", m1, 40.0), ("t_temperature_celsius", odd, 3.0)],
        ),
        (
            "t_latency_seconds",
            "histogram",
            HELP["latency"],
            [
                *buckets(m1, [1, 2, 2, 3, 3, 4]),
                ("t_latency_seconds_count", m1, 4.0),
                ("t_latency_seconds_sum", m1, 0.0005 + 0.01 + 0.3 + 7.0),
                *buckets(odd, [0, 0, 0, 0, 1, 1]),
                ("t_latency_seconds_count", odd, 1.0),
                ("t_latency_seconds_sum", odd, 2.0),
            ],
        ),
    ]
    assert "# TYPE t_requests_total counter\n" in text  # the _total name, as prometheus_client writes it
    assert r'model="say \"hi\"\\ then\nbye"' in text
    assert r"# HELP t_temperature_celsius Degrees, with a \\ backslash, a " in text


def test_the_exposition_is_prometheus_clients() -> None:
    text = ours_registry().exposition().decode()
    reference = reference_text()
    assert families(text) == families(reference)
    # Byte for byte too: label order, float spelling and line order are what scrapers and diffs see.
    assert text == reference


@pytest.mark.parametrize(
    "value",
    [
        0,
        1,
        3,
        -2,
        0.1,
        1e-9,
        0.0005,
        123456.0,
        1234567.0,
        2.9298688e7,
        1e16,
        1.5e300,
        math.inf,
        -math.inf,
        math.nan,
    ],
)
def test_floats_are_spelt_as_prometheus_client_spells_them(value: float) -> None:
    assert ours.format_float(value) == floatToGoString(value)


def test_counters_refuse_to_go_down() -> None:
    counter = ours.Counter("t_things", "Things.", ["kind"])
    with pytest.raises(ValueError, match="only goes up"):
        counter.labels("a").inc(-1)
    assert counter.labels("a").get() == 0.0


def test_labels_are_checked_and_their_children_cached() -> None:
    histogram = ours.Histogram("t_h", "H.", ["a", "b"], buckets=[1, 2])
    assert histogram.labels("x", 1) is histogram.labels("x", "1")
    with pytest.raises(ValueError, match="takes 2 label values"):
        histogram.labels("x")
    with pytest.raises(ValueError, match="le"):
        ours.Histogram("t_h", "H.", ["le"], buckets=[1])
    with pytest.raises(ValueError, match="increasing"):
        ours.Histogram("t_h", "H.", buckets=[2, 1])
    with pytest.raises(ValueError, match="invalid label name"):
        ours.Gauge("t_g", "G.", ["a-b"])
    with pytest.raises(ValueError, match="invalid metric name"):
        ours.Gauge("t g", "G.")
    registry = ours.Registry()
    ours.Counter("t_c", "C.", registry=registry)
    with pytest.raises(ValueError, match="duplicated"):
        ours.Gauge("t_c_total", "G.", registry=registry)


def test_unlabelled_metrics_show_at_zero_from_the_start() -> None:
    registry = ours.Registry()
    ours.Counter("t_c_total", "C.", registry=registry)  # the suffix given or not, exposed once
    ours.Gauge("t_g", "G.", registry=registry)
    assert registry.exposition().decode() == (
        "# HELP t_c_total C.\n# TYPE t_c_total counter\nt_c_total 0.0\n"
        "# HELP t_g G.\n# TYPE t_g gauge\nt_g 0.0\n"
    )


def test_nan_is_counted_in_the_inf_bucket_only() -> None:
    child = ours.Histogram("t_h", "H.", buckets=[1, 2]).labels()
    child.observe(math.nan)
    counts, total = child.get()
    assert counts == [0, 0, 1] and math.isnan(total)


class _One:
    """1.0, added by a Python method: the interpreter may switch threads inside ``+=`` with it.

    With a plain float, CPython 3.11 never switches between the read and the write of ``+=``, so a
    missing lock would lose nothing here; with this, it loses about a third of the updates.
    """

    def __lt__(self, other: float) -> bool:
        return other > 1.0

    def __gt__(self, other: float) -> bool:
        return other < 1.0

    def __radd__(self, other: float) -> float:
        return other + 1.0

    def __rsub__(self, other: float) -> float:
        return other - 1.0


def test_concurrent_updates_are_not_lost() -> None:
    counter = ours.Counter("t_c", "C.", ["k"]).labels("a")
    gauge = ours.Gauge("t_g", "G.", ["k"]).labels("a")
    histogram = ours.Histogram("t_h", "H.", ["k"], buckets=[0.5, 1.5]).labels("a")
    threads, rounds = 8, 10_000
    start = threading.Barrier(threads)
    one = _One()

    def work() -> None:
        start.wait()
        for _ in range(rounds):
            counter.inc(one)  # type: ignore[arg-type]
            counter.inc()
            gauge.inc(one)  # type: ignore[arg-type]
            gauge.dec(one)  # type: ignore[arg-type]
            gauge.inc()
            histogram.observe(one)  # type: ignore[arg-type]

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        workers = [threading.Thread(target=work) for _ in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    finally:
        sys.setswitchinterval(interval)
    total = threads * rounds
    assert counter.get() == 2 * total
    assert gauge.get() == total
    assert histogram.get() == ([0, total, 0], float(total))


def test_children_made_while_exposing_do_not_break_it() -> None:
    registry = ours.Registry()
    counter = ours.Counter("t_c", "C.", ["k"], registry=registry)
    # A fixed number: an adder that runs until told to stop makes each exposition longer than the
    # last, and on a busy host the two never finish.
    children = 5_000

    def add() -> None:
        for i in range(children):
            counter.labels(str(i)).inc()

    adder = threading.Thread(target=add)
    adder.start()
    while adder.is_alive():
        registry.exposition()
    adder.join()
    assert registry.exposition().count(b"\nt_c_total{") == children


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="no /proc")
def test_the_process_metrics_are_there_and_plausible() -> None:
    registry = ours.Registry()
    ours.ProcessMetrics(registry=registry)
    parsed = {f.name: (f.type, f.documentation, f.samples) for f in families_of(registry)}
    reference = {
        f.name: (f.type, f.documentation)
        for f in text_string_to_metric_families(
            prometheus_client.generate_latest(prometheus_client.ProcessCollector(registry=None)).decode()
        )
    }
    assert {name: (kind, doc) for name, (kind, doc, _) in parsed.items()} == reference
    value = {name: samples[0].value for name, (_, _, samples) in parsed.items()}
    assert value["process_resident_memory_bytes"] > 1 << 20
    assert value["process_virtual_memory_bytes"] >= value["process_resident_memory_bytes"]
    assert time.time() - 7 * 86400 < value["process_start_time_seconds"] <= time.time()
    assert 0 < value["process_cpu_seconds"] < time.process_time() + 1
    assert 3 <= value["process_open_fds"] <= value["process_max_fds"]


def families_of(registry: ours.Registry) -> list[prometheus_client.Metric]:
    return list(text_string_to_metric_families(registry.exposition().decode()))


def test_without_proc_the_process_metrics_are_left_out(tmp_path: Path) -> None:
    registry = ours.Registry()
    ours.ProcessMetrics(proc=str(tmp_path / "nowhere"), registry=registry)
    assert registry.exposition() == b""


def test_agent_metrics_keep_their_interface() -> None:
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"
    metrics = AgentMetrics()
    version = metrics.for_version("affine", "1")
    version.requests.inc()
    version.latency.observe(0.003)
    version.failed("invalid_input")
    metrics.set_active("affine", "2", "1")
    text = metrics.exposition().decode()
    assert 'edgefleet_agent_inference_requests_total{model="affine",version="1"} 1.0\n' in text
    assert (
        'edgefleet_agent_inference_duration_seconds_bucket{le="0.004",model="affine",version="1"} 1.0\n'
        in text
    )
    assert (
        'edgefleet_agent_inference_failures_total{model="affine",reason="invalid_input",version="1"} 1.0\n'
        in text
    )
    assert 'edgefleet_agent_model_active_info{model="affine",version="2"} 1.0\n' in text
    assert 'edgefleet_agent_model_active_info{model="affine",version="1"} 0.0\n' in text
    assert "_created" not in text


def test_no_agent_module_imports_prometheus_client() -> None:
    """Its import costs the agent's start ~17 ms (http.server, http.client, ssl): agent.prometheus stands in."""
    code = (
        "import sys, pkgutil, importlib, agent\n"
        "for m in pkgutil.walk_packages(agent.__path__, 'agent.'):\n"
        "    importlib.import_module(m.name)\n"
        "print('LOADED', sorted(m for m in sys.modules if m.split('.')[0] == 'prometheus_client'))\n"
    )
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)
    assert "LOADED []" in proc.stdout, proc.stdout + proc.stderr
