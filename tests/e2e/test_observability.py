"""What a user and a platform team see of running tasks: progress in the status and its printer column at a bounded
rate, the opt-in start callback, JSON logs naming the task, and a dashboard whose every query reads an exported metric.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.client import ApiClient

from sdtask.devcluster.waiting import wait_for
from tests.dashboard import dashboard, exported_series, metric_names, queries

from .conftest import PROGRESS_INTERVAL_SECONDS, CallbackReceiver, Cluster

MODEL = "v1-5-pruned-emaonly.safetensors"
SUMMARY = re.compile(r"^\d+% step \d+/\d+ batch \d+/\d+ ETA \d+s$")


@pytest.fixture(scope="module", autouse=True)
def runtimes(cluster: Cluster) -> Iterator[None]:
    cluster.models("obs-rt", MODEL)
    cluster.runtime("obs-rt", "pool-b", checkpoint=MODEL, scaling={"minReplicas": 1, "maxReplicas": 1})
    yield


def long_task(task_id: str, batches: int = 8) -> dict[str, Any]:
    """8 images per batch at the stand-in's 0.05 s per image: about 0.4 s per batch."""
    return {
        "metadata": {"id": task_id, "runtime": "obs-rt", "tasktype": "text-to-image", "prefix": "obs"},
        "content": {"prompt": task_id, "steps": 10, "width": 64, "height": 64, "batch_size": 8, "n_iter": batches},
    }


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def printer_columns(client: ApiClient, namespace: str, name: str) -> dict[str, Any]:
    """What `kubectl get sdt` prints: the API server's Table rendering of the CRD's printer columns."""
    response = client.call_api(
        f"/apis/sdtask.io/v1alpha1/namespaces/{namespace}/sdtasks/{name}",
        "GET",
        header_params={"Accept": "application/json;as=Table;g=meta.k8s.io;v=v1"},
        _preload_content=False,
        auth_settings=["BearerToken"],
    )
    table = json.loads(response.data)
    names = [column["name"] for column in table["columnDefinitions"]]
    return dict(zip(names, table["rows"][0]["cells"], strict=True))


def serving(url: str) -> bool:
    try:
        scrape(url)
    except OSError:
        return False
    return True


def agent_metrics_url(cluster: Cluster, runtime: str) -> str:
    def serving_url() -> str | None:
        for pod in cluster.runtime_pods(runtime):
            try:
                url = cluster.system.sidecars.agent_metrics_url(cluster.namespace, pod.metadata.name)
            except KeyError:  # the simulator has not started this pod's containers yet
                continue
            if serving(url):
                return url
        return None

    return wait_for(serving_url, 30, "an agent serving its metrics")


def test_progress_shows_in_status_and_printer_column_at_a_bounded_rate(cluster: Cluster, kube_api: ApiClient) -> None:
    wait_for(lambda: cluster.get_runtime("obs-rt").get("status", {}).get("readyReplicas"), 60, "a ready pod")
    url = agent_metrics_url(cluster, "obs-rt")

    def writes() -> float:
        match = re.search(r"^sdtask_agent_progress_writes_total (\S+)$", scrape(url), re.M)
        return float(match.group(1)) if match else 0.0

    before = writes()
    cluster.submit(long_task("progressing"))
    wait_for(lambda: cluster.status("progressing").get("phase") == "Running", 30, "the task to run")
    started = time.monotonic()

    def progressing() -> dict[str, Any] | None:
        status = cluster.status("progressing")
        return status if status.get("phase") == "Running" and status.get("progress") else None

    progress = wait_for(progressing, 10, "progress in the status")["progress"]
    assert 0 < progress["fraction"] < 1 and progress["steps"] == 10 and progress["jobs"] == 8
    assert SUMMARY.match(progress["summary"]), progress
    column = printer_columns(kube_api, cluster.namespace, "progressing")["Progress"]
    assert SUMMARY.match(column), column

    done = cluster.wait_finished("progressing")
    elapsed = time.monotonic() - started
    assert done["status"]["phase"] == "Succeeded"
    assert "progress" not in done["status"]  # a finished task shows no stale progress
    assert printer_columns(kube_api, cluster.namespace, "progressing")["Progress"] in (None, "")
    written = writes() - before
    assert 1 <= written <= elapsed / PROGRESS_INTERVAL_SECONDS + 1, (written, elapsed)


def test_start_callback_when_asked_and_only_then(cluster: Cluster, callbacks: CallbackReceiver) -> None:
    cluster.submit(long_task("announced", batches=1), callback={"url": callbacks.url, "onStart": True})
    cluster.submit(long_task("quiet", batches=1), callback={"url": callbacks.url})
    for name in ("announced", "quiet"):
        cluster.wait_finished(name)
    wait_for(lambda: len(callbacks.for_id("announced")) == 2, 30, "the start and the result callbacks")
    start, result = (r["body"] for r in callbacks.for_id("announced"))
    assert (start["status"], start["result"], start["attempt"], start["runtime"]) == ("Running", None, 1, "obs-rt")
    assert start["pod"].startswith("sdruntime-obs-rt-")
    assert result["result"] is True and "status" not in result
    wait_for(lambda: len(callbacks.for_id("quiet")) == 1, 30, "the result callback")
    assert cluster.status("announced")["callback"]["startedAttempt"] == 1


def test_every_dashboard_query_reads_a_metric_the_operator_or_agents_export(cluster: Cluster) -> None:
    cluster.submit(long_task("measured", batches=1))
    cluster.wait_finished("measured")
    exported = exported_series(scrape(cluster.system.metrics_url)) | exported_series(
        scrape(agent_metrics_url(cluster, "obs-rt"))
    )
    board = dashboard()
    wanted = {name for expr in queries(board) for name in metric_names(expr)}
    assert len(wanted) >= 15
    assert wanted <= exported, f"not exported: {sorted(wanted - exported)}"


def test_logs_are_json_lines_naming_the_namespace_task_and_runtime(cluster: Cluster) -> None:
    cluster.submit(long_task("logged", batches=1))
    cluster.wait_finished("logged")
    pod = next(p for p in cluster.runtime_pods("obs-rt") if p.status.phase == "Running").metadata.name
    agent_log = cluster.system.sidecars.simulated(cluster.namespace, pod).agent.log

    def lines(path: Any) -> list[dict[str, Any]]:
        text = path.read_text(errors="replace")
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

    def about_task() -> list[dict[str, Any]] | None:
        found = [line for line in lines(agent_log) if line.get("task") == "logged"]
        return found or None

    agent_lines = wait_for(about_task, 10, "agent log lines about the task")
    assert all(line["namespace"] == cluster.namespace and line["runtime"] == "obs-rt" for line in agent_lines)
    assert all(line["component"] == "agent" and line["pod"] == pod for line in agent_lines)
    operator_lines = lines(cluster.system.operator.log)
    assert operator_lines and all({"time", "level", "logger", "message"} <= line.keys() for line in operator_lines)
    # A second task finds the pod idle: it is assigned on arrival (the first may have queued for the pod to start).
    # Either way, every operator line about a task names its runtime.
    cluster.submit(long_task("logged-again", batches=1))
    cluster.wait_finished("logged-again")
    operator_lines = lines(cluster.system.operator.log)
    for task in ("logged", "logged-again"):
        about = [line for line in operator_lines if line.get("task") == task]
        assert about and all(line["namespace"] == cluster.namespace for line in about), task
        assert all(line.get("runtime") == "obs-rt" for line in about), about


def test_status_writes_name_the_operator_in_managed_fields(cluster: Cluster) -> None:
    """`kubectl get sdt -o yaml --show-managed-fields` (and the API server's audit log) tells who wrote the status:
    the operator and its agents, not the Kubernetes client's generic "OpenAPI-Generator"."""
    cluster.submit(long_task("managed", batches=1))
    cluster.wait_finished("managed")
    entries = cluster.task("managed")["metadata"]["managedFields"]
    status_writers = {entry["manager"] for entry in entries if entry.get("subresource") == "status"}
    assert status_writers == {"sdtask-operator"}, entries
