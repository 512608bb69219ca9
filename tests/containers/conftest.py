"""The real-container suite: the built image, installed by helm, runtime pods as real containers on a real kubelet.

The local stack runs with one real node (sdtask.devcluster.realnode: containerd, runc, a CNI bridge, kube-proxy, a
kubelet and a fake GPU device plugin) instead of the kwok pools. Needs root and the Debian packages of
scripts/host-packages.sh; `make test-containers` builds the image first (IMAGE names another one).
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import ApiClient, AppsV1Api, CoreV1Api, CustomObjectsApi

from sdtask.api import GROUP, VERSION
from sdtask.devcluster import images
from sdtask.devcluster.binaries import ensure_node_binaries
from sdtask.devcluster.helm import run_helm
from sdtask.devcluster.realnode import NODE_NAME
from sdtask.devcluster.stack import DevStack
from sdtask.devcluster.waiting import wait_for
from sdtask.standin.weights import checkpoint_bytes

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "sdtask-operator"
IMAGE = os.environ.get("IMAGE", images.DEFAULT_TAG)
# The stand-in Web UI "images": the project image under the names a runtime would use for a Web UI image. Two tags,
# so a runtime can be moved to another image as a platform team's upgrade would.
STANDIN_V1 = "sdtask-webui-standin:v1"
STANDIN_V2 = "sdtask-webui-standin:v2"
OPERATOR_NAMESPACE = "sdtask-system"
CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
OTHER_CHECKPOINT = "dreamshaper_8.safetensors"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.integration)


@dataclass
class RealCluster:
    stack: DevStack
    client: ApiClient
    kubectl_path: Path
    namespace: str

    @property
    def core(self) -> CoreV1Api:
        return CoreV1Api(self.client)

    @property
    def custom(self) -> CustomObjectsApi:
        return CustomObjectsApi(self.client)

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.kubectl_path), f"--kubeconfig={self.stack.kubeconfig}", *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=60,
        )

    def runtime(self, name: str, **spec: Any) -> None:
        node = self.stack.real_node
        assert node is not None
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "SDRuntime",
            "metadata": {"name": name},
            "spec": {
                "image": STANDIN_V1,
                # The stand-in in the project image; the operator adds the real Web UI's launch flags.
                "command": ["sdtask", "webui-standin"],
                "placement": {
                    "nodeSelector": {"sdtask.io/pool": node.pool},
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                    "gpusPerPod": 1,
                    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                },
                "models": {"s3Prefix": f"s3://{self.stack.bucket}/models/"},
                "scaling": {"minReplicas": 1, "maxReplicas": 1},
                "output": {"bucket": self.stack.bucket, "credentialsSecret": "s3", "endpoint": node.s3_endpoint},
                **spec,
            },
        }
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, "sdruntimes", body)

    def patch_runtime(self, name: str, spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, "sdruntimes", name, {"spec": spec})

    def delete_runtime(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, "sdruntimes", name)
        wait_for(lambda: not self.pods(name) or None, timeout=120, what=f"the pods of runtime {name} to go")

    def pods(self, runtime: str) -> list[Any]:
        items = self.core.list_namespaced_pod(self.namespace, label_selector=f"sdtask.io/runtime={runtime}").items
        return [pod for pod in items if pod.metadata.deletion_timestamp is None] or [pod for pod in items]

    def running_pod(self, runtime: str, timeout: float = 180) -> Any:
        """The runtime's one pod, once every container (Web UI and agent) runs and is ready."""

        def ready() -> Any:
            for pod in self.core.list_namespaced_pod(
                self.namespace, label_selector=f"sdtask.io/runtime={runtime}"
            ).items:
                statuses = pod.status.container_statuses or []
                if (
                    pod.metadata.deletion_timestamp is None
                    and pod.status.phase == "Running"
                    and len(statuses) == 2
                    and all(s.ready for s in statuses)
                ):
                    return pod
            return None

        try:
            return wait_for(ready, timeout=timeout, what=f"a Running pod of runtime {runtime}, both containers ready")
        except AssertionError:
            selector = f"--selector=sdtask.io/runtime={runtime}"
            print(self.kubectl("describe", "pods", "-n", self.namespace, selector, check=False).stdout[-4000:])
            for container in ("fetch-model", "webui", "agent"):
                logs = self.kubectl("logs", "-n", self.namespace, selector, "-c", container, "--tail=30", check=False)
                print(f"--- {container} ---\n{logs.stdout}{logs.stderr}")
            raise

    def submit(self, name: str, runtime: str, content: dict[str, Any], **spec: Any) -> None:
        task = {
            "metadata": {
                "id": name,
                "runtime": runtime,
                "tasktype": "image-to-image",
                "prefix": "output",
                "context": "",
            },
            "content": content,
        }
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "SDTask",
            "metadata": {"name": name},
            "spec": {"task": task, **spec},
        }
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, "sdtasks", body)

    def status(self, name: str) -> dict[str, Any]:
        task = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, "sdtasks", name)
        return dict(task.get("status") or {})

    def wait_phase(self, name: str, phases: tuple[str, ...], timeout: float = 120) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            status = self.status(name)
            return status if status.get("phase") in phases else None

        return wait_for(reached, timeout=timeout, what=f"task {name} to reach {phases}")

    def seed_content(self, init_image_uri: str) -> dict[str, Any]:
        """The README's seed image-to-image task, its init image in the local S3 (the internet is out of reach)."""
        seed = yaml.safe_load((REPO_ROOT / "examples" / "task-image-to-image.yaml").read_text())
        content: dict[str, Any] = seed["spec"]["task"]["content"]
        content["init_images"] = [init_image_uri]
        return content

    def pods_wide(self) -> str:
        return self.kubectl("get", "pods", "-o", "wide", "-n", self.namespace).stdout


def _png() -> bytes:
    import struct
    import zlib

    raw = b"".join(b"\x00" + bytes((x * 9 + y * 5) % 256 for x in range(48)) for y in range(16))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


@pytest.fixture(scope="session")
def real() -> Iterator[RealCluster]:
    if not images.image_exists(IMAGE):
        pytest.fail(f"the image {IMAGE} is not in the Docker engine: run `make image` (make test-containers does)")
    for tag in (STANDIN_V1, STANDIN_V2):
        images.docker("tag", IMAGE, tag)
    node_binaries = ensure_node_binaries()
    with DevStack(pools=(), real_node=True) as stack:
        assert stack.real_node is not None
        stack.real_node.import_images([IMAGE, STANDIN_V1, STANDIN_V2])
        with stack.api_client() as client:
            namespace = f"sd-{uuid.uuid4().hex[:6]}"
            cluster = RealCluster(stack, client, node_binaries.kubectl, namespace)
            _install_chart(cluster)
            core = cluster.core
            core.create_namespace({"metadata": {"name": namespace}})
            core.create_namespaced_secret(
                namespace,
                {
                    "metadata": {"name": "s3"},
                    "stringData": {
                        "AWS_ACCESS_KEY_ID": stack.s3.access_key_id,
                        "AWS_SECRET_ACCESS_KEY": stack.s3.secret_access_key,
                    },
                },
            )
            s3 = stack.s3_client()
            for name in (CHECKPOINT, OTHER_CHECKPOINT):
                s3.put_object(Bucket=stack.bucket, Key=f"models/{name}", Body=checkpoint_bytes(name))
            s3.put_object(Bucket=stack.bucket, Key="in/cat.png", Body=_png())
            yield cluster


def _install_chart(cluster: RealCluster) -> None:
    """`helm install` as a user runs it, with the built image. The one node is a GPU node, so the operator tolerates
    its taint (the chart's `tolerations` value); on a real cluster it would run on a CPU node."""
    repository, tag = IMAGE.rsplit(":", 1)
    values = {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    }
    values_file = cluster.stack.workdir / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    run_helm(
        [
            "install",
            "sdtask-operator",
            str(CHART),
            "--namespace",
            OPERATOR_NAMESPACE,
            "--create-namespace",
            "--values",
            str(values_file),
        ],
        home=cluster.stack.workdir / "helm",
        kubeconfig=cluster.stack.kubeconfig,
    )
    apps = AppsV1Api(cluster.client)

    def available() -> bool | None:
        deployment = apps.read_namespaced_deployment("sdtask-operator", OPERATOR_NAMESPACE)
        return bool(deployment.status.available_replicas) or None

    try:
        wait_for(available, timeout=120, what="the operator Deployment installed by helm to be available")
    except Exception:
        print(cluster.kubectl("get", "pods", "-A", "-o", "wide", check=False).stdout)
        print(cluster.kubectl("logs", "-n", OPERATOR_NAMESPACE, "deploy/sdtask-operator", check=False).stdout[-3000:])
        raise


__all__ = ["NODE_NAME", "OPERATOR_NAMESPACE", "RealCluster"]
