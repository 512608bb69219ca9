"""Each SDRuntime becomes a GPU Deployment on its own pool, sized by its queue, owned and kept as declared.

Pools of the local stack: pool-a has 2 nodes with 1 GPU each, pool-b 1 node with 2 GPUs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.client import AppsV1Api

from sdtask.devcluster.waiting import wait_for

from .conftest import Cluster

MODEL = "v1-5-pruned-emaonly.safetensors"


@pytest.fixture(autouse=True)
def clean_runtimes(cluster: Cluster) -> Iterator[None]:
    """Every test starts with free GPUs."""
    yield
    cluster.delete_runtimes_and_wait()


def static_runtime(cluster: Cluster, name: str, pool: str, **scaling: Any) -> None:
    cluster.models(name, MODEL)
    cluster.runtime(name, pool, checkpoint=MODEL, scaling={"scaleDownDelaySeconds": 2, **scaling})


def slow_task(cluster: Cluster, task_id: str, runtime: str, rounds: int = 1) -> str:
    """About 0.4 s of generation per round on the stand-in (8 images of 50 ms); the stand-in allows 8 rounds."""
    task = {
        "metadata": {"id": task_id, "runtime": runtime, "tasktype": "text-to-image", "prefix": "rt"},
        "content": {"prompt": task_id, "steps": 4, "width": 64, "height": 64, "batch_size": 8, "n_iter": rounds},
    }
    return cluster.submit(task)


def running_pods(cluster: Cluster, runtime: str) -> list[Any]:
    return [
        p for p in cluster.runtime_pods(runtime) if p.status.phase == "Running" and not p.metadata.deletion_timestamp
    ]


def nodes_of_pool(cluster: Cluster, pool: str) -> set[str]:
    return {n.metadata.name for n in cluster.core.list_node(label_selector=f"sdtask.io/pool={pool}").items}


def condition(runtime: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in (runtime.get("status") or {}).get("conditions", []) if c["type"] == type_), {})


def test_each_runtime_runs_only_on_its_own_pool(cluster: Cluster) -> None:
    static_runtime(cluster, "on-a", "pool-a", minReplicas=2, maxReplicas=2)
    static_runtime(cluster, "on-b", "pool-b", minReplicas=2, maxReplicas=2)

    pods_a = wait_for(lambda: p if len(p := running_pods(cluster, "on-a")) == 2 else None, 30, "2 pods of on-a")
    pods_b = wait_for(lambda: p if len(p := running_pods(cluster, "on-b")) == 2 else None, 30, "2 pods of on-b")

    assert {p.spec.node_name for p in pods_a} == nodes_of_pool(cluster, "pool-a")
    assert {p.spec.node_name for p in pods_b} <= nodes_of_pool(cluster, "pool-b")
    webui = next(c for c in pods_a[0].spec.containers if c.name == "webui")
    assert webui.resources.limits["nvidia.com/gpu"] == "1"


def test_an_idle_runtime_has_no_pods_scales_up_for_tasks_and_back_to_zero(cluster: Cluster) -> None:
    static_runtime(cluster, "elastic", "pool-a", minReplicas=0, maxReplicas=2)
    idle = wait_for(
        lambda: condition(r := cluster.get_runtime("elastic"), "Ready").get("reason") == "ScaledToZero" and r,
        30,
        "the runtime to report ScaledToZero",
    )
    assert idle["status"]["desiredReplicas"] == 0 and cluster.runtime_pods("elastic") == []

    first = slow_task(cluster, "elastic-1", "elastic", rounds=4)
    slow_task(cluster, "elastic-2", "elastic", rounds=4)
    wait_for(lambda: cluster.runtime_pods("elastic"), 30, "the first pod of the runtime")
    wait_for(lambda: len(running_pods(cluster, "elastic")) == 2, 30, "one pod per queued task")

    for name in (first, "elastic-2"):
        assert cluster.wait_finished(name)["status"]["phase"] == "Succeeded"
    wait_for(lambda: not cluster.runtime_pods("elastic"), 30, "scale back to zero after the delay")
    assert cluster.get_runtime("elastic")["status"]["desiredReplicas"] == 0


def test_scaling_down_never_removes_the_busy_pod(cluster: Cluster) -> None:
    static_runtime(cluster, "keep-busy", "pool-a", minReplicas=0, maxReplicas=2)
    long_task = slow_task(cluster, "long", "keep-busy", rounds=8)
    short_task = slow_task(cluster, "short", "keep-busy", rounds=1)
    short_done = cluster.wait_finished(short_task)
    busy_pod = wait_for(lambda: cluster.status(long_task).get("pod"), 30, "the long task's pod")
    assert short_done["status"]["pod"] != busy_pod

    # The short task's pod goes after the delay, while the long task still runs.
    wait_for(lambda: [p.metadata.name for p in running_pods(cluster, "keep-busy")] == [busy_pod], 30, "scale to 1")
    runtime = cluster.get_runtime("keep-busy")
    assert [(p["name"], p["busy"], p["task"]) for p in runtime["status"]["pods"] if p["busy"]] == [
        (busy_pod, True, long_task)
    ]
    done = cluster.wait_finished(long_task)
    assert done["status"]["phase"] == "Succeeded"
    assert (done["status"]["pod"], done["status"]["attempts"]) == (busy_pod, 1)


def test_more_tasks_than_gpus_queue_and_the_runtime_says_why(cluster: Cluster) -> None:
    static_runtime(cluster, "crowded", "pool-a", minReplicas=0, maxReplicas=3)
    names = [slow_task(cluster, f"crowded-{i}", "crowded", rounds=3) for i in range(3)]

    degraded = wait_for(
        lambda: condition(r := cluster.get_runtime("crowded"), "Degraded").get("status") == "True" and r,
        30,
        "the Degraded condition",
    )
    message = condition(degraded, "Degraded")["message"]
    assert condition(degraded, "Degraded")["reason"] == "Unschedulable"
    assert "no GPU capacity" in message and "nvidia.com/gpu" in message
    assert len(running_pods(cluster, "crowded")) <= 2  # the pool holds two GPUs

    for name in names:  # the third task waits for a free pod and still runs
        assert cluster.wait_finished(name)["status"]["phase"] == "Succeeded"


def test_tasks_of_a_pod_that_vanishes_are_requeued(cluster: Cluster) -> None:
    static_runtime(cluster, "fragile", "pool-b", minReplicas=1, maxReplicas=1)
    name = slow_task(cluster, "survivor", "fragile", rounds=6)
    running = wait_for(
        lambda: (t := cluster.task(name)).get("status", {}).get("phase") == "Running" and t, 30, "the task to run"
    )
    lost_pod = running["status"]["pod"]

    cluster.system.sidecars.lose(cluster.namespace, lost_pod)  # the node under it dies...
    cluster.core.delete_namespaced_pod(lost_pod, cluster.namespace, grace_period_seconds=0)  # ...and it is gone

    done = cluster.wait_finished(name)
    assert done["status"]["phase"] == "Succeeded"
    assert done["status"]["attempts"] == 2
    assert done["status"]["pod"] != lost_pod
    cluster.wait_for_event(name, "Warning", "PodLost")


def test_deleting_a_runtime_removes_its_deployment_and_pods(cluster: Cluster) -> None:
    static_runtime(cluster, "doomed", "pool-b", minReplicas=1, maxReplicas=1)
    apps = AppsV1Api(cluster.core.api_client)
    wait_for(lambda: running_pods(cluster, "doomed"), 30, "a pod")
    assert apps.read_namespaced_deployment("sdruntime-doomed", cluster.namespace).metadata.owner_references

    cluster.custom.delete_namespaced_custom_object("sdtask.io", "v1alpha1", cluster.namespace, "sdruntimes", "doomed")

    wait_for(lambda: not apps.list_namespaced_deployment(cluster.namespace).items, 30, "the Deployment to go")
    wait_for(lambda: not cluster.runtime_pods("doomed"), 30, "the pods to go")
    # The garbage collector removes the runtime's dependents in no set order: the Service may outlive the pods.
    wait_for(
        lambda: not cluster.core.list_namespaced_service(cluster.namespace, label_selector="sdtask.io/runtime").items,
        30,
        "the Service to go",
    )


def test_editing_the_runtime_image_rolls_its_pods(cluster: Cluster) -> None:
    static_runtime(cluster, "rolling", "pool-b", minReplicas=1, maxReplicas=1)
    old = wait_for(lambda: running_pods(cluster, "rolling"), 30, "a pod")[0]

    cluster.custom.patch_namespaced_custom_object(
        "sdtask.io",
        "v1alpha1",
        cluster.namespace,
        "sdruntimes",
        "rolling",
        {"spec": {"image": "registry.example.com/sd-webui:1.11"}},
    )

    def rolled() -> list[Any] | None:
        pods = running_pods(cluster, "rolling")
        return pods if [p.metadata.name for p in pods] != [old.metadata.name] and pods else None

    new = wait_for(rolled, 60, "a new pod with the new image")[0]
    webui = next(c for c in new.spec.containers if c.name == "webui")
    assert webui.image == "registry.example.com/sd-webui:1.11"
    wait_for(
        lambda: old.metadata.name not in [p.metadata.name for p in cluster.runtime_pods("rolling")],
        60,
        "the old pod to go",
    )


def test_editing_the_runtime_scaling_resizes_it(cluster: Cluster) -> None:
    """The loop reads its spec's settings once per generation of the spec: an edit still takes effect."""
    static_runtime(cluster, "resized", "pool-b", minReplicas=1, maxReplicas=2)
    wait_for(lambda: len(running_pods(cluster, "resized")) == 1, 30, "1 pod")

    cluster.custom.patch_namespaced_custom_object(
        "sdtask.io", "v1alpha1", cluster.namespace, "sdruntimes", "resized", {"spec": {"scaling": {"minReplicas": 2}}}
    )

    wait_for(lambda: len(running_pods(cluster, "resized")) == 2, 30, "a second pod")


def test_a_manual_edit_of_the_deployment_is_put_back(cluster: Cluster) -> None:
    static_runtime(cluster, "declared", "pool-b", minReplicas=1, maxReplicas=1)
    apps = AppsV1Api(cluster.core.api_client)
    wait_for(lambda: running_pods(cluster, "declared"), 30, "a pod")

    apps.patch_namespaced_deployment(
        "sdruntime-declared",
        cluster.namespace,
        {"spec": {"replicas": 2, "template": {"spec": {"nodeSelector": {"sdtask.io/pool": "pool-a"}}}}},
    )

    def restored() -> bool:
        spec = apps.read_namespaced_deployment("sdruntime-declared", cluster.namespace).spec
        replicas: int = spec.replicas
        node_selector: dict[str, str] = spec.template.spec.node_selector
        return replicas == 1 and node_selector == {"sdtask.io/pool": "pool-b"}

    wait_for(restored, 30, "the operator to restore the Deployment")


def test_an_external_scaler_owns_replicas_while_the_queue_depth_is_published(cluster: Cluster) -> None:
    static_runtime(cluster, "keda", "pool-b", minReplicas=0, maxReplicas=2, externalScaler=True)
    apps = AppsV1Api(cluster.core.api_client)
    wait_for(lambda: apps.list_namespaced_deployment(cluster.namespace).items, 30, "the Deployment")
    slow_task(cluster, "keda-1", "keda")

    import urllib.request

    def published() -> bool:
        with urllib.request.urlopen(cluster.system.metrics_url) as response:
            text = response.read().decode()
        line = f'sdtask_runtime_queued_tasks{{namespace="{cluster.namespace}",runtime="keda"}} 1.0'
        return line in text

    wait_for(published, 30, "the queue depth metric")
    assert not cluster.runtime_pods("keda")  # the operator left replicas to the external scaler

    apps.patch_namespaced_deployment_scale("sdruntime-keda", cluster.namespace, {"spec": {"replicas": 1}})
    assert cluster.wait_finished("keda-1")["status"]["phase"] == "Succeeded"
    assert apps.read_namespaced_deployment("sdruntime-keda", cluster.namespace).spec.replicas == 1
