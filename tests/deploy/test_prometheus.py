"""deploy/prometheus: promtool accepts the config and rules, the rules' unit tests pass, and every
metric a rule reads exists on a real fleet's or agent's /metrics."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import DEPLOY, Exposed

PROM = DEPLOY / "prometheus"
RULES = PROM / "rules" / "edgefleet.rules.yml"
pytestmark = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool (Debian: prometheus) is not installed"
)

#: a metric name in PromQL: ours, the process collector's, or Prometheus' own `up`
METRIC = re.compile(r"(?<![\w:])(edgefleet_[a-z0-9_]+|process_[a-z0-9_]+|up|edgefleet:[a-z0-9_:]+)(?![\w:(])")


def promtool(*args: str, cwd: Path) -> str:
    done = subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def recorded() -> set[str]:
    return {r["record"] for r in rules() if "record" in r}


def used_metrics(expr: str) -> set[str]:
    return set(METRIC.findall(expr))


def test_promtool_checks_the_rules_and_runs_their_unit_tests() -> None:
    assert "SUCCESS" in promtool("check", "rules", RULES.name, cwd=RULES.parent)
    assert "SUCCESS" in promtool("test", "rules", "edgefleet.rules.test.yml", cwd=RULES.parent)
    alerts = {r["alert"] for r in rules() if "alert" in r}
    tested = set(re.findall(r"alertname: (\w+)", (RULES.parent / "edgefleet.rules.test.yml").read_text()))
    assert alerts - tested == set(), "every alert has a unit test"


def test_promtool_accepts_the_scrape_config(tmp_path: Path) -> None:
    # The agent token file lives on the Prometheus host; promtool insists that it exists.
    site = tmp_path / "prometheus"
    shutil.copytree(PROM, site)
    token = tmp_path / "agent-api-token"
    token.write_text("t\n")
    config = site / "prometheus.yml"
    config.write_text(config.read_text().replace("/etc/prometheus/secrets/agent-api-token", str(token)))
    assert "SUCCESS" in promtool("check", "config", "prometheus.yml", cwd=site)
    jobs = {j["job_name"] for j in yaml.safe_load(config.read_text())["scrape_configs"]}
    assert jobs == {"edge-fleet", "edge-agent"}


def test_every_metric_a_rule_reads_is_exposed(exposed: Exposed) -> None:
    known = exposed.fleet | exposed.agent | recorded() | {"up"}
    missing = {name for r in rules() for name in used_metrics(r["expr"]) if name not in known}
    assert missing == set()
    # and the regex sees what the rules read
    assert "edgefleet_agent_inference_duration_seconds_bucket" in used_metrics(
        next(
            r["expr"]
            for r in rules()
            if r.get("record") == "edgefleet:agent_inference_duration_seconds:p99_5m"
        )
    )
