"""The local stack is a real control plane: version, GPU scheduling, garbage collection, S3, clear start failures."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import ApiClient, AppsV1Api, CoreV1Api, VersionApi

from sdtask.devcluster.binaries import KUBERNETES_VERSION, ensure_binaries
from sdtask.devcluster.cluster import ClusterPorts, LocalControlPlane
from sdtask.devcluster.nodes import GPU_RESOURCE, POOL_LABEL
from sdtask.devcluster.processes import StackError
from sdtask.devcluster.stack import DevStack
from sdtask.devcluster.waiting import wait_for


def gpu_deployment(name: str, pool: str, replicas: int) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeSelector": {POOL_LABEL: pool},
                    "tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
                    "containers": [
                        {
                            "name": "webui",
                            "image": "example.invalid/webui:1",
                            "resources": {"limits": {GPU_RESOURCE: "1"}, "requests": {GPU_RESOURCE: "1"}},
                        }
                    ],
                },
            },
        },
    }


def pods_of(core: CoreV1Api, namespace: str, app: str) -> list[Any]:
    return list(core.list_namespaced_pod(namespace, label_selector=f"app={app}").items)


def test_api_server_reports_pinned_version(kube_api: ApiClient) -> None:
    assert VersionApi(kube_api).get_code().git_version == KUBERNETES_VERSION


def test_gpu_pods_run_only_on_their_pool_and_extra_ones_stay_pending(
    stack: DevStack, kube_api: ApiClient, namespace: str
) -> None:
    core, apps = CoreV1Api(kube_api), AppsV1Api(kube_api)
    pool = next(p for p in stack.pools if p.name == "pool-a")
    capacity = pool.nodes * pool.gpus_per_node
    apps.create_namespaced_deployment(namespace, gpu_deployment("gpu", pool.name, capacity + 1))

    def settled() -> list[Any] | None:
        pods = pods_of(core, namespace, "gpu")
        running = [p for p in pods if p.status.phase == "Running"]
        unschedulable = [
            p
            for p in pods
            if p.status.phase == "Pending"
            and any(c.type == "PodScheduled" and c.reason == "Unschedulable" for c in p.status.conditions or [])
        ]
        return pods if len(running) == capacity and len(unschedulable) == 1 else None

    pods = wait_for(settled, 60, f"{capacity} running and 1 unschedulable GPU pod")
    pool_nodes = {n.metadata.name for n in core.list_node(label_selector=f"{POOL_LABEL}={pool.name}").items}
    assert {p.spec.node_name for p in pods if p.status.phase == "Running"} <= pool_nodes
    pending = next(p for p in pods if p.status.phase == "Pending")
    message = next(c.message for c in pending.status.conditions if c.type == "PodScheduled")
    assert GPU_RESOURCE in message


def test_deleting_a_deployment_garbage_collects_its_replicaset_and_pods(kube_api: ApiClient, namespace: str) -> None:
    core, apps = CoreV1Api(kube_api), AppsV1Api(kube_api)
    apps.create_namespaced_deployment(namespace, gpu_deployment("gc", "pool-b", 1))
    wait_for(lambda: [p for p in pods_of(core, namespace, "gc") if p.status.phase == "Running"], 60, "a running pod")
    assert apps.list_namespaced_replica_set(namespace).items

    apps.delete_namespaced_deployment("gc", namespace)

    wait_for(lambda: not apps.list_namespaced_replica_set(namespace).items, 60, "the ReplicaSet to be collected")
    wait_for(lambda: not pods_of(core, namespace, "gc"), 60, "the pods to be collected")


def test_an_object_round_trips_through_the_s3_server(stack: DevStack) -> None:
    s3 = stack.s3_client()
    s3.put_object(Bucket=stack.bucket, Key="roundtrip/hello.txt", Body=b"hello", ContentType="text/plain")
    fetched = s3.get_object(Bucket=stack.bucket, Key="roundtrip/hello.txt")
    assert fetched["Body"].read() == b"hello"
    assert fetched["ContentType"] == "text/plain"


def test_a_taken_port_fails_fast_naming_the_component(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        plane = LocalControlPlane(ensure_binaries(), tmp_path, ClusterPorts(apiserver=port))
        with pytest.raises(StackError, match=rf"kube-apiserver: port 127.0.0.1:{port} is already in use"):
            plane.start()
    assert not plane.processes  # nothing was left running


def test_a_missing_binary_fails_fast_naming_it(tmp_path: Path) -> None:
    binaries = dataclasses.replace(ensure_binaries(), etcd=tmp_path / "no-such-etcd")
    with pytest.raises(StackError, match=r"etcd: binary .*no-such-etcd is missing"):
        LocalControlPlane(binaries, tmp_path).start()


def test_a_crashing_component_fails_with_the_tail_of_its_log(tmp_path: Path) -> None:
    fake = tmp_path / "fake-apiserver"
    fake.write_text("#!/bin/sh\necho 'Error: unknown flag: --etcd-servers' >&2\nexit 3\n")
    fake.chmod(0o755)
    binaries = dataclasses.replace(ensure_binaries(), kube_apiserver=fake)
    with pytest.raises(StackError) as raised:
        LocalControlPlane(binaries, tmp_path).start()
    assert "kube-apiserver: exited with code 3" in str(raised.value)
    assert "unknown flag: --etcd-servers" in str(raised.value)


def test_an_existing_cluster_named_by_sdtask_kubeconfig_is_used_instead_of_starting_one(
    stack: DevStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SDTASK_KUBECONFIG", str(stack.kubeconfig))
    with DevStack(workdir=tmp_path) as reusing:
        assert reusing.control_plane is None  # no etcd or API server of its own
        assert reusing.kubeconfig == stack.kubeconfig
        with reusing.api_client() as client:
            assert VersionApi(client).get_code().git_version == KUBERNETES_VERSION
        assert reusing.s3_client().list_buckets()["Buckets"]
    assert stack.control_plane is not None
    stack.control_plane.check_alive()  # the original stack is untouched: this raises if a component died


def test_a_kubeconfig_that_does_not_exist_fails_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDTASK_KUBECONFIG", str(tmp_path / "missing"))
    with pytest.raises(StackError, match=r"SDTASK_KUBECONFIG=.*names no readable kubeconfig"):
        DevStack(workdir=tmp_path).start()
