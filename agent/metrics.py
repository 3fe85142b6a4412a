"""Prometheus metrics of the agent, on a registry of its own (so tests can run several agents).

Names follow Prometheus conventions: ``edgefleet_agent_`` prefix, base units in the name
(``_seconds``), ``_total`` on counters; process CPU and memory are the standard process metrics
(``process_cpu_seconds_total``, ``process_resident_memory_bytes``). Kept by agent.prometheus, not
prometheus_client, whose import would slow the agent's start.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.prometheus import (
    CONTENT_TYPE,
    Counter,
    CounterChild,
    Gauge,
    Histogram,
    HistogramChild,
    ProcessMetrics,
    Registry,
)

__all__ = ["CONTENT_TYPE", "AgentMetrics"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.0, 2.5)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
_LOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True)
class VersionMetrics:
    """The per model version series, bound once so the request path skips label lookups."""

    requests: CounterChild
    latency: HistogramChild
    queue: HistogramChild
    batch: HistogramChild
    failures: Counter
    labels: tuple[str, str]

    def failed(self, reason: str) -> None:
        self.failures.labels(*self.labels, reason).inc()


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = Registry()
        ProcessMetrics(registry=self.registry)
        labels = ["model", "version"]
        self.requests = Counter(
            "edgefleet_agent_inference_requests",
            "Inference requests received, per model version.",
            labels,
            registry=self.registry,
        )
        self.failures = Counter(
            "edgefleet_agent_inference_failures",
            "Inference requests that failed, by reason.",
            [*labels, "reason"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "edgefleet_agent_inference_duration_seconds",
            "Time from request decoded to response ready, queueing included.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue = Histogram(
            "edgefleet_agent_queue_duration_seconds",
            "Time a request waited before its model ran.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch = Histogram(
            "edgefleet_agent_batch_size_requests",
            "Requests per model execution (1 without batching).",
            labels,
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.load = Histogram(
            "edgefleet_agent_model_load_duration_seconds",
            "Time to load a model version into its runtime.",
            labels,
            buckets=_LOAD_BUCKETS,
            registry=self.registry,
        )
        self.active = Gauge(
            "edgefleet_agent_model_active_info",
            "1 for the version of each model that serves requests.",
            labels,
            registry=self.registry,
        )
        self.feedback = Counter(
            "edgefleet_agent_feedback_labels",
            "Labels fed back, by outcome (accepted, unknown, expired, invalid).",
            ["model", "outcome"],
            registry=self.registry,
        )
        self.shadow = Counter(
            "edgefleet_agent_shadow_requests",
            "Answered requests offered to a shadow version, by outcome (mirrored, dropped: queue full).",
            ["model", "outcome"],
            registry=self.registry,
        )
        self.http_errors = Counter(
            "edgefleet_agent_http_errors",
            "HTTP requests answered with an error status, by status code.",
            ["code"],
            registry=self.registry,
        )

    def for_version(self, model: str, version: str) -> VersionMetrics:
        return VersionMetrics(
            requests=self.requests.labels(model, version),
            latency=self.latency.labels(model, version),
            queue=self.queue.labels(model, version),
            batch=self.batch.labels(model, version),
            failures=self.failures,
            labels=(model, version),
        )

    def set_active(self, model: str, version: str, old_version: str | None) -> None:
        if old_version is not None and old_version != version:
            self.active.labels(model, old_version).set(0)
        self.active.labels(model, version).set(1)

    def exposition(self) -> bytes:
        return self.registry.exposition()
