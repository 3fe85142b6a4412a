"""deploy/compose: one site's stack (fleet, PostgreSQL, Mosquitto, Prometheus, Grafana).
`docker compose config` where Docker Compose is installed; the file's structure always."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import DEPLOY

COMPOSE = DEPLOY / "compose"
FILE = COMPOSE / "compose.yaml"


def services() -> dict[str, dict]:
    return yaml.safe_load(FILE.read_text())["services"]


def _has_compose() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _has_compose(), reason="docker compose is not installed")
def test_docker_compose_accepts_the_stack(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text((COMPOSE / ".env.example").read_text())
    done = subprocess.run(
        ["docker", "compose", "-f", str(FILE), "--env-file", str(env), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_the_stack_has_every_part_of_a_site() -> None:
    s = services()
    assert {"fleet", "postgres", "mosquitto", "prometheus", "grafana"} <= set(s)
    for name, service in s.items():
        image = service.get("image", "")
        assert re.search(r":[\w.-]+$", image) and not image.endswith(":latest"), f"{name}: pin the image"
        for dep in service.get("depends_on", []):
            assert dep in s, f"{name} depends on a missing service {dep}"
    fleet = s["fleet"]
    assert fleet["build"]["dockerfile"] == "deploy/container/Dockerfile.fleet"
    assert (COMPOSE / fleet["build"]["context"] / fleet["build"]["dockerfile"]).resolve().is_file()
    assert fleet["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert fleet["environment"]["EDGEFLEET_DB_URL"].startswith("postgresql+psycopg://")
    assert "--broker=mqtt://mosquitto:1883" in fleet["command"]
    for name in ("postgres", "mosquitto"):
        assert "healthcheck" in s[name], name


def test_every_mounted_file_exists_and_every_variable_is_in_the_example_env() -> None:
    for name, service in services().items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                path = (COMPOSE / source).resolve()
                # the agents' token file is the operator's own (the README says to create it)
                assert path.exists() or path.name == "agent-api-token", f"{name}: {source} does not exist"
    example = {
        line.split("=", 1)[0]
        for line in (COMPOSE / ".env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    }
    used = set(re.findall(r"\$\{(\w+)(?::?[?-][^}]*)?\}", FILE.read_text()))
    assert used and used <= example


def test_prometheus_and_grafana_load_the_shipped_config() -> None:
    s = services()
    mounts = {v.split(":")[1]: v.split(":")[0] for v in s["prometheus"]["volumes"] if v.startswith(".")}
    assert (
        COMPOSE / mounts["/etc/prometheus/prometheus.yml"]
    ).resolve() == DEPLOY / "prometheus" / "prometheus.yml"
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    fleet_targets = [
        t
        for j in prom["scrape_configs"]
        if j["job_name"] == "edge-fleet"
        for c in j["static_configs"]
        for t in c["targets"]
    ]
    assert fleet_targets == ["fleet:8800"], "the compose service name and port"
    agent_job = next(j for j in prom["scrape_configs"] if j["job_name"] == "edge-agent")
    assert agent_job["authorization"]["credentials_file"] in mounts
    grafana = {v.split(":")[1]: v.split(":")[0] for v in s["grafana"]["volumes"] if v.startswith(".")}
    provider = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "dashboards" / "edgefleet.yml").read_text()
    )
    assert (
        COMPOSE / grafana[provider["providers"][0]["options"]["path"]]
    ).resolve() == DEPLOY / "grafana" / "dashboards"
    source = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    assert source["datasources"][0]["url"] == "http://prometheus:9090"
