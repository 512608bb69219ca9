"""Runs as deployed: the chart installed by helm with the image built here, the operator as a pod, runtime pods as real
containers on a real kubelet (the Web UI is the stand-in, in the same image). Each test proves a part of the manifests
that only a kubelet executes: probes, init container, preStop and grace, security context, token mounts.

Fixtures in conftest.py (`real`: the stack with its real node, the chart installed, a namespace with S3 credentials,
checkpoints and the seed task's init image in the local S3).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sdtask.devcluster.realnode import NODE_NAME
from sdtask.devcluster.waiting import wait_for

from .conftest import CHECKPOINT, OPERATOR_NAMESPACE, OTHER_CHECKPOINT, STANDIN_V2, RealCluster

TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


def test_the_chart_runs_the_operator_as_a_pod_of_the_built_image(real: RealCluster) -> None:
    pods = real.core.list_namespaced_pod(OPERATOR_NAMESPACE).items
    assert len(pods) == 1
    pod = pods[0]
    assert pod.spec.node_name == NODE_NAME
    assert pod.status.phase == "Running"
    assert all(s.ready for s in pod.status.container_statuses)
    # Non-root on a read-only root filesystem, as the chart says, enforced by the kubelet and runc.
    assert real.kubectl("exec", "-n", OPERATOR_NAMESPACE, pod.metadata.name, "--", "id", "-u").stdout.strip() == "10001"
    touch = real.kubectl("exec", "-n", OPERATOR_NAMESPACE, pod.metadata.name, "--", "touch", "/x", check=False)
    assert touch.returncode != 0 and "Read-only file system" in touch.stderr


@pytest.fixture(scope="module")
def static_runtime(real: RealCluster) -> str:
    real.runtime("static", checkpoint=CHECKPOINT)
    pod = real.running_pod("static")
    print("\n$ kubectl get pods -o wide   (static runtime up)\n" + real.pods_wide())
    return str(pod.metadata.name)


def test_static_runtime_pod_runs_on_the_real_node_with_its_checkpoint_fetched(
    real: RealCluster, static_runtime: str
) -> None:
    pod = real.core.read_namespaced_pod(static_runtime, real.namespace)
    assert pod.spec.node_name == NODE_NAME
    assert {s.name: s.state.running is not None for s in pod.status.container_statuses} == {
        "webui": True,
        "agent": True,
    }
    # The fetch-model init container brought the checkpoint before the Web UI started with --ckpt.
    (init,) = pod.status.init_container_statuses
    assert init.state.terminated is not None and init.state.terminated.exit_code == 0
    listed = real.kubectl("exec", "-n", real.namespace, static_runtime, "-c", "webui", "--", "ls", "/models").stdout
    assert CHECKPOINT in listed.split()
    # The device plugin's allocation reached the Web UI container, as NVIDIA's would.
    env = real.kubectl("exec", "-n", real.namespace, static_runtime, "-c", "webui", "--", "env").stdout
    assert "NVIDIA_VISIBLE_DEVICES=fake-gpu-" in env


def test_the_seed_image_to_image_task_succeeds_end_to_end(real: RealCluster, static_runtime: str) -> None:
    real.submit("seed-i2i", "static", real.seed_content(f"s3://{real.stack.bucket}/in/cat.png"))
    status = real.wait_phase("seed-i2i", ("Succeeded", "Failed"), timeout=120)
    assert status["phase"] == "Succeeded", status
    assert status["pod"] == static_runtime
    assert status["output_location"] == f"s3://{real.stack.bucket}/output/seed-i2i"
    keys = {
        item["Key"]
        for item in real.stack.s3_client().list_objects_v2(Bucket=real.stack.bucket, Prefix="output/seed-i2i/")[
            "Contents"
        ]
    }
    assert keys == {"output/seed-i2i/image-1.png", "output/seed-i2i/seed-i2i.out"}


def _exec(real: RealCluster, pod: str, container: str, *command: str) -> tuple[int, str]:
    done = real.kubectl("exec", "-n", real.namespace, pod, "-c", container, "--", *command, check=False)
    return done.returncode, done.stdout + done.stderr


def test_containers_run_non_root_on_a_read_only_root(real: RealCluster, static_runtime: str) -> None:
    def run(container: str, *command: str) -> tuple[int, str]:
        return _exec(real, static_runtime, container, *command)

    assert run("agent", "id", "-u") == (0, "10001\n")
    code, output = run("agent", "touch", "/probe")
    assert code != 0 and "Read-only file system" in output
    assert run("agent", "touch", "/tmp/probe")[0] == 0  # its one writable place
    assert run("webui", "id", "-u") == (0, "10001\n")  # the image's own non-root user


def test_only_the_agent_container_holds_the_service_account_token(real: RealCluster, static_runtime: str) -> None:
    def run(container: str, *command: str) -> tuple[int, str]:
        return _exec(real, static_runtime, container, *command)

    # The agent talks to the API server; the Web UI (a third-party image running user-supplied extensions) must not.
    assert run("agent", "test", "-s", TOKEN)[0] == 0
    assert run("webui", "test", "-e", TOKEN)[0] != 0, "the Web UI container has the ServiceAccount token mounted"


@pytest.fixture
def runtimes(real: RealCluster) -> Iterator[list[str]]:
    """Names of the runtimes a test creates: deleted after it, pass or fail, so their GPUs are free for the next."""
    created: list[str] = []
    yield created
    for name in created:
        real.delete_runtime(name)


def test_dynamic_runtime_switches_to_a_checkpoint_fetched_from_s3(real: RealCluster, runtimes: list[str]) -> None:
    runtimes.append("dynamic")
    real.runtime("dynamic", dynamicModel=True)
    pod = real.running_pod("dynamic")
    content = real.seed_content(f"s3://{real.stack.bucket}/in/cat.png")
    content["alwayson_scripts"] = {"sd_model_checkpoint": OTHER_CHECKPOINT}
    real.submit("dyn-i2i", "dynamic", content)
    status = real.wait_phase("dyn-i2i", ("Succeeded", "Failed"), timeout=120)
    assert status["phase"] == "Succeeded", status
    assert status["pod"] == pod.metadata.name
    assert status["model"].startswith(OTHER_CHECKPOINT)


def _slow_runtime(real: RealCluster, runtimes: list[str], name: str) -> str:
    runtimes.append(name)
    # Each image takes 15 s in the stand-in: long enough to change or kill the pod in the middle of a task.
    real.runtime(name, checkpoint=CHECKPOINT, args=["--image-delay", "15"], requestTimeoutSeconds=120)
    return str(real.running_pod(name).metadata.name)


def test_a_pod_replaced_by_an_image_change_finishes_its_task_first(real: RealCluster, runtimes: list[str]) -> None:
    old_pod = _slow_runtime(real, runtimes, "upgrade")
    real.submit("during-upgrade", "upgrade", real.seed_content(f"s3://{real.stack.bucket}/in/cat.png"))
    running = real.wait_phase("during-upgrade", ("Running",), timeout=60)
    assert running["pod"] == old_pod
    real.patch_runtime("upgrade", {"image": STANDIN_V2})
    # The old pod is terminating (maxSurge 0) while the generation still runs: preStop holds the Web UI.
    wait_for(
        lambda: real.core.read_namespaced_pod(old_pod, real.namespace).metadata.deletion_timestamp is not None,
        timeout=30,
        what="the old pod to be terminating",
    )
    status = real.wait_phase("during-upgrade", ("Succeeded", "Failed"), timeout=120)
    assert status["phase"] == "Succeeded", status
    assert (status["pod"], status["attempts"]) == (old_pod, 1), "the task did not finish on the pod being replaced"
    new_pod = real.running_pod("upgrade")
    assert {c.image for c in new_pod.spec.containers if c.name == "webui"} == {STANDIN_V2}
    print("\n$ kubectl get pods -o wide   (after the image change)\n" + real.pods_wide())


def test_a_pod_killed_mid_task_has_its_task_requeued_and_succeed(real: RealCluster, runtimes: list[str]) -> None:
    first_pod = _slow_runtime(real, runtimes, "crash")
    real.submit("killed", "crash", real.seed_content(f"s3://{real.stack.bucket}/in/cat.png"))
    running = real.wait_phase("killed", ("Running",), timeout=60)
    assert running["pod"] == first_pod
    # Gone at once, as when its node dies: no preStop, no grace.
    real.core.delete_namespaced_pod(first_pod, real.namespace, grace_period_seconds=0)
    status = real.wait_phase("killed", ("Succeeded", "Failed"), timeout=180)
    assert status["phase"] == "Succeeded", status
    assert status["pod"] != first_pod
    assert status["attempts"] == 2
