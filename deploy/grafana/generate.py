"""Writes the Grafana dashboards in dashboards/ from the panel lists below (the JSON is committed).

Run ``python deploy/grafana/generate.py`` after changing a panel; tests/deploy/test_grafana.py checks
the JSON is in sync and that every metric a panel names exists on a real fleet's or agent's /metrics.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
#: the data source uid provisioning/datasources/prometheus.yml creates
DATASOURCE = {"type": "prometheus", "uid": "edgefleet-prometheus"}
WIDTH = 24


def panel(
    title: str, kind: str, *exprs: str | tuple[str, str], unit: str = "short", width: int = 12
) -> dict[str, Any]:
    """One panel; an expr may be (expr, legend)."""
    targets = []
    for i, e in enumerate(exprs):
        expr, legend = e if isinstance(e, tuple) else (e, "")
        targets.append(
            {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend, "datasource": DATASOURCE}
        )
    return {
        "title": title,
        "type": kind,
        "datasource": DATASOURCE,
        "targets": targets,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {},
        "gridPos": {"w": width, "h": 4 if kind == "stat" else 8},
    }


def variable(name: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": name},
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "current": {"text": "All", "value": "$__all"},
    }


def dashboard(
    uid: str, title: str, panels: list[dict[str, Any]], variables: list[dict[str, Any]]
) -> dict[str, Any]:
    x = y = row_h = 0
    for i, p in enumerate(panels, start=1):
        w, h = p["gridPos"]["w"], p["gridPos"]["h"]
        if x + w > WIDTH:
            x, y, row_h = 0, y + row_h, 0
        p["id"] = i
        p["gridPos"].update(x=x, y=y)
        x, row_h = x + w, max(row_h, h)
    return {
        "uid": uid,
        "title": title,
        "tags": ["edgefleet"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": variables},
        "annotations": {"list": []},
        "panels": panels,
    }


FLEET = dashboard(
    "edgefleet-overview",
    "edgefleet / Fleet overview",
    [
        panel("Devices online", "stat", 'sum(edgefleet:devices:count{online="true"})', width=6),
        panel("Devices offline", "stat", 'sum(edgefleet:devices:count{online="false"})', width=6),
        panel("Rollouts running", "stat", 'sum(edgefleet:rollouts:count{state="running"})', width=6),
        panel("Rollouts paused", "stat", 'sum(edgefleet:rollouts:count{state="paused"})', width=6),
        panel("Fleet replicas up", "timeseries", ('sum(up{job="edge-fleet"})', "replicas up")),
        panel(
            "Offline share", "timeseries", ("edgefleet:devices_offline:ratio", "offline"), unit="percentunit"
        ),
        panel(
            "Device messages ingested",
            "timeseries",
            ("edgefleet:mqtt_messages_ingested:rate5m", "{{kind}}"),
            unit="reqps",
        ),
        panel(
            "Device messages dropped",
            "timeseries",
            ("sum(rate(edgefleet_mqtt_messages_rejected_total[5m]))", "rejected (malformed, unknown device)"),
            ("sum by (reason) (rate(edgefleet_ingest_rejected_total[5m]))", "dropped: {{reason}}"),
            ("sum(rate(edgefleet_ingest_failed_messages_total[5m]))", "lost to a failed database batch"),
            unit="reqps",
        ),
        panel(
            "Devices in open rollouts",
            "timeseries",
            ("max without (instance, pod) (edgefleet_rollout_devices)", "{{state}}"),
        ),
        panel(
            "Desired states and telemetry",
            "timeseries",
            ("sum(rate(edgefleet_desired_published_total[5m]))", "desired states published"),
            ("sum(rate(edgefleet_telemetry_samples_stored_total[5m]))", "telemetry samples stored"),
            unit="reqps",
        ),
    ],
    [],
)

AGENT = 'job="edge-agent",instance=~"$instance"'
DEVICES = dashboard(
    "edgefleet-device-health",
    "edgefleet / Device health",
    [
        panel("Agents up", "timeseries", (f"up{{{AGENT}}}", "{{instance}}")),
        panel(
            "Agent CPU",
            "timeseries",
            (f"rate(process_cpu_seconds_total{{{AGENT}}}[5m])", "{{instance}}"),
            unit="percentunit",
        ),
        panel(
            "Agent resident memory",
            "timeseries",
            (f"process_resident_memory_bytes{{{AGENT}}}", "{{instance}}"),
            unit="bytes",
        ),
        panel("Agent open files", "timeseries", (f"process_open_fds{{{AGENT}}}", "{{instance}}")),
        panel("Active model versions", "table", f"edgefleet_agent_model_active_info{{{AGENT}}} == 1"),
        panel(
            "Model load time (p90, 1 h)",
            "timeseries",
            (
                f"histogram_quantile(0.9, sum by (instance, model, le) (rate(edgefleet_agent_model_load_duration_seconds_bucket{{{AGENT}}}[1h])))",
                "{{instance}} {{model}}",
            ),
            unit="s",
        ),
        panel(
            "HTTP errors by status",
            "timeseries",
            (
                f"sum by (instance, code) (rate(edgefleet_agent_http_errors_total{{{AGENT}}}[5m]))",
                "{{instance}} {{code}}",
            ),
            unit="reqps",
            width=24,
        ),
    ],
    [variable("instance", 'label_values(up{job="edge-agent"}, instance)')],
)

MODEL = 'model=~"$model"'
MODELS = dashboard(
    "edgefleet-model-latency",
    "edgefleet / Model latency and errors",
    [
        panel(
            "Requests",
            "timeseries",
            (f"edgefleet:agent_inference_requests:rate5m{{{MODEL}}}", "{{model}} {{version}}"),
            unit="reqps",
        ),
        panel(
            "Error ratio",
            "timeseries",
            (f"edgefleet:agent_inference_error:ratio_rate5m{{{MODEL}}}", "{{model}} {{version}}"),
            unit="percentunit",
        ),
        panel(
            "Latency p50 and p99 (all devices)",
            "timeseries",
            (f"edgefleet:agent_inference_duration_seconds:p50_5m{{{MODEL}}}", "p50 {{model}} {{version}}"),
            (f"edgefleet:agent_inference_duration_seconds:p99_5m{{{MODEL}}}", "p99 {{model}} {{version}}"),
            unit="s",
        ),
        panel(
            "Failures by reason",
            "timeseries",
            (
                f"sum by (model, version, reason) (rate(edgefleet_agent_inference_failures_total{{{MODEL}}}[5m]))",
                "{{model}} {{version}} {{reason}}",
            ),
            unit="reqps",
        ),
        panel(
            "Queue wait p99",
            "timeseries",
            (
                f"histogram_quantile(0.99, sum by (model, version, le) (rate(edgefleet_agent_queue_duration_seconds_bucket{{{MODEL}}}[5m])))",
                "{{model}} {{version}}",
            ),
            unit="s",
        ),
        panel(
            "Requests per model execution (batching)",
            "timeseries",
            (
                f"sum by (model, version) (rate(edgefleet_agent_batch_size_requests_sum{{{MODEL}}}[5m]))"
                f" / sum by (model, version) (rate(edgefleet_agent_batch_size_requests_count{{{MODEL}}}[5m]))",
                "{{model}} {{version}}",
            ),
        ),
        panel(
            "Latency p99 per device",
            "table",
            f"histogram_quantile(0.99, sum by (instance, model, version, le) (rate(edgefleet_agent_inference_duration_seconds_bucket{{{MODEL}}}[5m])))",
            unit="s",
            width=24,
        ),
    ],
    [variable("model", "label_values(edgefleet_agent_inference_requests_total, model)")],
)

ALERT = 'rule=~"$rule"'
MONITORING = dashboard(
    "edgefleet-model-monitoring",
    "edgefleet / Model monitoring",
    [
        panel("Alerts firing", "stat", f'sum(edgefleet_alerts{{state="firing",{ALERT}}})', width=8),
        panel("Alerts pending", "stat", f'sum(edgefleet_alerts{{state="pending",{ALERT}}})', width=8),
        panel(
            "Alert changes (last hour)",
            "stat",
            f"sum(increase(edgefleet_alert_changes_total{{{ALERT}}}[1h]))",
            width=8,
        ),
        panel(
            "Open alerts by rule and state",
            "timeseries",
            (f"sum by (rule, state) (edgefleet_alerts{{{ALERT}}})", "{{rule}} {{state}}"),
        ),
        panel(
            "Webhook deliveries",
            "timeseries",
            ("sum by (outcome) (rate(edgefleet_alert_webhook_changes_total[5m]))", "{{outcome}}"),
            unit="ops",
        ),
        panel(
            "Open alerts: figure against threshold (drift PSI, accuracy, bias gap, p99 ms)",
            "table",
            f"edgefleet_device_model_quality{{{ALERT}}}",
            f"edgefleet_device_model_quality_threshold{{{ALERT}}}",
            width=24,
        ),
        panel(
            "Labels fed back to agents, by outcome",
            "timeseries",
            (
                "sum by (model, outcome) (rate(edgefleet_agent_feedback_labels_total[5m]))",
                "{{model}} {{outcome}}",
            ),
            unit="ops",
        ),
        panel(
            "Requests mirrored to shadow versions",
            "timeseries",
            (
                "sum by (model, outcome) (rate(edgefleet_agent_shadow_requests_total[5m]))",
                "{{model}} {{outcome}}",
            ),
            unit="reqps",
        ),
    ],
    [variable("rule", "label_values(edgefleet_alerts, rule)")],
)

DASHBOARDS = {
    "fleet-overview.json": FLEET,
    "device-health.json": DEVICES,
    "model-latency-errors.json": MODELS,
    "model-monitoring.json": MONITORING,
}


def render(board: dict[str, Any]) -> str:
    return json.dumps(board, indent=2) + "\n"


if __name__ == "__main__":
    for name, board in DASHBOARDS.items():
        (HERE / "dashboards" / name).write_text(render(board))
