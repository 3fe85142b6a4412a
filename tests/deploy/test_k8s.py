"""deploy/k8s: every built-in resource is valid against the Kubernetes schemas (offline, strict),
the fleet runs 2+ replicas with probes, resources and a disruption budget, and the Prometheus
Operator resources point at the right Service and carry the rules of deploy/prometheus."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import DEPLOY

K8S = DEPLOY / "k8s"
kv = pytest.importorskip("kubernetes_validate")
#: the Kubernetes version the manifests are written for (the oldest supported minor at the time)
VERSION = "1.30"


def resources() -> list[tuple[Path, dict]]:
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(
        p.name for p in K8S.glob("*.yaml") if p.name not in ("kustomization.yaml", "secrets.example.yaml")
    )
    return [
        (p, d)
        for p in sorted(K8S.glob("*.yaml"))
        if p.name != "kustomization.yaml"
        for d in yaml.safe_load_all(p.read_text())
        if d
    ]


def by_kind(kind: str, name: str) -> dict:
    return next(d for _, d in resources() if d["kind"] == kind and d["metadata"]["name"] == name)


def test_builtin_resources_match_the_kubernetes_schemas() -> None:
    checked = 0
    for path, doc in resources():
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: checked by the test below
        kv.validate(doc, VERSION, strict=True)
        assert doc["metadata"].get("namespace") == "edgefleet" or doc["kind"] == "Namespace", path
        checked += 1
    assert checked >= 10
    # and the validator does catch a mistake (a misspelt field, a wrong type)
    broken = by_kind("Deployment", "edge-fleet")
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["periodSecond"] = 5
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, VERSION, strict=True)


def test_the_fleet_deployment_is_highly_available_and_bounded() -> None:
    deploy = by_kind("Deployment", "edge-fleet")
    assert deploy["spec"]["replicas"] >= 2
    pod = deploy["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["requests"]["memory"] and container["resources"]["limits"]["memory"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "edgefleet-config"} in [e["configMapRef"] for e in container["envFrom"]]
    pdb = by_kind("PodDisruptionBudget", "edge-fleet")
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["minAvailable"] >= 1 and pdb["spec"]["minAvailable"] < deploy["spec"]["replicas"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = by_kind("Service", "edge-fleet")
    assert service["spec"]["selector"].items() <= labels.items()
    ports = {p["name"] for p in container["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports
    # every Secret and ConfigMap the pod reads is defined here (Secrets: in the example)
    secrets = {d["metadata"]["name"] for _, d in resources() if d["kind"] == "Secret"}
    configmaps = {d["metadata"]["name"] for _, d in resources() if d["kind"] == "ConfigMap"}
    for env in container["env"]:
        if "valueFrom" in env:
            assert env["valueFrom"]["secretKeyRef"]["name"] in secrets
    for volume in pod["volumes"]:
        if "secret" in volume:
            assert volume["secret"]["secretName"] in secrets
        if "configMap" in volume:
            # the trusted keys are the operator's own files (kubectl create configmap --from-file)
            assert volume["configMap"]["name"] in configmaps | {"edgefleet-trusted-keys"}


def test_the_service_monitor_and_rules_fit_the_fleet_and_deploy_prometheus() -> None:
    monitor = by_kind("ServiceMonitor", "edge-fleet")
    service = by_kind("Service", "edge-fleet")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}
    assert all(e["path"] == "/metrics" for e in monitor["spec"]["endpoints"])
    rule = by_kind("PrometheusRule", "edgefleet")
    rules_file = yaml.safe_load((DEPLOY / "prometheus" / "rules" / "edgefleet.rules.yml").read_text())
    assert rule["spec"]["groups"] == rules_file["groups"], (
        "monitoring.yaml carries the rules of deploy/prometheus"
    )


def test_mosquitto_refuses_large_packets_and_anonymous_clients() -> None:
    from sdk.topics import MAX_PACKET_BYTES

    for conf in (
        by_kind("ConfigMap", "mosquitto-config")["data"]["mosquitto.conf"],
        (DEPLOY / "compose" / "mosquitto" / "mosquitto.conf").read_text(),
    ):
        lines = {line.strip() for line in conf.splitlines()}
        assert f"max_packet_size {MAX_PACKET_BYTES}" in lines
        assert "allow_anonymous false" in lines
