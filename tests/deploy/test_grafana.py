"""deploy/grafana: the dashboards are the generator's output, well formed, on the provisioned data
source, and every metric a panel reads exists on a real fleet's or agent's /metrics (or is a
recording rule of deploy/prometheus)."""

from __future__ import annotations

import importlib.util
import json
from types import ModuleType

import yaml

from tests.deploy.conftest import DEPLOY, Exposed
from tests.deploy.test_prometheus import recorded, used_metrics

GRAFANA = DEPLOY / "grafana"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("grafana_generate", GRAFANA / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _exprs(board: dict) -> list[str]:
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    return exprs + [v["query"]["query"] for v in board["templating"]["list"]]


def test_dashboards_are_in_sync_with_the_generator_and_provisioned() -> None:
    gen = _generator()
    assert {p.name for p in (GRAFANA / "dashboards").glob("*.json")} == set(gen.DASHBOARDS)
    for name, board in gen.DASHBOARDS.items():
        assert (GRAFANA / "dashboards" / name).read_text() == gen.render(board), (
            f"run deploy/grafana/generate.py ({name})"
        )
    uids = [json.loads((GRAFANA / "dashboards" / n).read_text())["uid"] for n in gen.DASHBOARDS]
    assert len(set(uids)) == len(uids)
    source = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert {d["uid"] for d in source["datasources"]} == {gen.DATASOURCE["uid"]}
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "edgefleet.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards/edgefleet"
    for board in gen.DASHBOARDS.values():
        for p in board["panels"]:
            assert p["datasource"] == gen.DATASOURCE and p["targets"], p["title"]
            assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24


def test_every_metric_a_panel_reads_is_exposed(exposed: Exposed) -> None:
    known = exposed.fleet | exposed.agent | recorded() | {"up"}
    boards = [json.loads(p.read_text()) for p in (GRAFANA / "dashboards").glob("*.json")]
    used = {name for b in boards for e in _exprs(b) for name in used_metrics(e)}
    assert used - known == set()
    # the dashboards cover both sides
    assert used & exposed.fleet and used & exposed.agent
