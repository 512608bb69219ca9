"""The chart ships the Grafana dashboard (ConfigMap for the sidecar), the operator's ServiceMonitor and the agents'
PodMonitor, each behind its value, and every query of the dashboard reads a metric the code declares."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import pytest
import yaml

from sdtask.devcluster.helm import ensure_helm, run_helm
from tests.dashboard import dashboard


class Render(Protocol):
    def __call__(self, *sets: str) -> list[dict[str, Any]]:
        """`helm template` with these --set values: the manifests."""
        ...


CHART = Path(__file__).resolve().parents[2] / "charts" / "sdtask-operator"


@pytest.fixture(scope="module")
def render(tmp_path_factory: pytest.TempPathFactory) -> Render:
    helm, home = ensure_helm(), tmp_path_factory.mktemp("helm-home")

    def rendered(*sets: str) -> list[dict[str, Any]]:
        args = ["template", "sdtask-operator", str(CHART), "--namespace", "sdtask-system"]
        for value in sets:
            args += ["--set", value]
        return [doc for doc in yaml.safe_load_all(run_helm(args, home=home, helm=helm)) if doc]

    return rendered


def kinds(manifests: list[dict[str, Any]]) -> set[str]:
    return {m["kind"] for m in manifests}


def test_monitoring_objects_are_off_by_default(render: Render) -> None:
    assert not {"ConfigMap", "PodMonitor", "ServiceMonitor"} & kinds(render())


def test_dashboard_configmap_carries_the_sidecar_label_and_the_dashboard(render: Render) -> None:
    manifests = render(
        "metrics.dashboard.enabled=true",
        "metrics.dashboard.namespace=monitoring",
        "metrics.dashboard.annotations.grafana_folder=SD",
    )
    (config_map,) = [m for m in manifests if m["kind"] == "ConfigMap"]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["namespace"] == "monitoring"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "SD"}
    assert json.loads(config_map["data"]["sdtask-operator.json"]) == dashboard()


def test_service_and_pod_monitors_scrape_the_operator_and_the_agents(render: Render) -> None:
    manifests = render(
        "metrics.serviceMonitor.enabled=true",
        "metrics.podMonitor.enabled=true",
        "metrics.serviceMonitor.labels.release=kube-prometheus-stack",
    )
    (service_monitor,) = [m for m in manifests if m["kind"] == "ServiceMonitor"]
    (service,) = [m for m in manifests if m["kind"] == "Service"]
    assert service_monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert service_monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"] == "metrics"
    (pod_monitor,) = [m for m in manifests if m["kind"] == "PodMonitor"]
    assert pod_monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    endpoint = pod_monitor["spec"]["podMetricsEndpoints"][0]
    assert endpoint["port"] == "agent-metrics"
    assert {"sourceLabels": ["__meta_kubernetes_pod_label_sdtask_io_runtime"], "targetLabel": "runtime"} in endpoint[
        "relabelings"
    ]
    assert pod_monitor["spec"]["namespaceSelector"] == {"any": True}
