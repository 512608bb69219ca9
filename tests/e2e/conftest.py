"""End-to-end fixtures: the whole system (operator, kwok GPU pods with agent + stand-in Web UI, S3) on the local stack,
plus a local image server and a callback receiver standing in for the outside world."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kubernetes.client import ApiClient, CoreV1Api, CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from sdtask.devcluster.sidecars import StandinTiming
from sdtask.devcluster.stack import DevStack
from sdtask.devcluster.system import LocalSystem
from sdtask.devcluster.waiting import wait_for
from sdtask.standin.images import encode_png
from sdtask.standin.weights import checkpoint_bytes, write_checkpoint

GROUP, VERSION = "sdtask.io", "v1alpha1"
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
FINISHED = ("Succeeded", "Failed")
PROGRESS_INTERVAL_SECONDS = 1.0  # the agents' status.progress write interval (5 s by default)


def sample_png(seed: int, size: int = 16) -> bytes:
    rgb = bytes((x * 7 + y * 13 + seed * 31) % 256 for y in range(size) for x in range(size * 3))
    return encode_png(size, size, rgb)


@pytest.fixture(scope="package")  # the operator lives only while the e2e tests run: it acts on every SDTask
def system(stack: DevStack, kube_api: ApiClient) -> Iterator[LocalSystem]:
    timing = StandinTiming(load_delay=0.3, image_delay=0.05)
    with LocalSystem(
        stack,
        timing=timing,
        agent_env={
            "SDTASK_CALLBACK_BASE_DELAY_SECONDS": "0.05",
            "SDTASK_RETRY_BACKOFF_SECONDS": "0.5",
            "SDTASK_PROGRESS_INTERVAL_SECONDS": str(PROGRESS_INTERVAL_SECONDS),
        },
    ) as running:
        yield running


class Files:
    """A plain HTTP server on loopback serving test images (the 'https://.../cat.png' of the seed task)."""

    def __init__(self) -> None:
        self.content: dict[str, bytes] = {}
        self.requested: list[tuple[str, float]] = []  # (path, wall-clock time) of each request, in order
        files = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                files.requested.append((self.path, time.time()))
                body = files.content.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def fetched(self, path: str) -> list[float]:
        """When `path` was asked for."""
        return [at for asked, at in self.requested if asked == path]

    def publish(self, path: str, data: bytes) -> str:
        self.content[path] = data
        return f"http://127.0.0.1:{self.server.server_port}{path}"


class CallbackReceiver:
    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                receiver.received.append({"body": json.loads(raw), "raw": raw, "headers": dict(self.headers.items())})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/callback"

    def for_id(self, task_id: str) -> list[dict[str, Any]]:
        return [r for r in self.received if r["body"].get("id") == task_id]


@pytest.fixture(scope="session")
def files() -> Iterator[Files]:
    served = Files()
    yield served
    served.server.shutdown()


@pytest.fixture(scope="session")
def callbacks() -> Iterator[CallbackReceiver]:
    receiver = CallbackReceiver()
    yield receiver
    receiver.server.shutdown()


class Cluster:
    """What a user does with kubectl, through the API: apply runtimes and tasks, read them back, wait."""

    def __init__(self, stack: DevStack, system: LocalSystem, client: ApiClient, namespace: str) -> None:
        self.stack = stack
        self.system = system
        self.namespace = namespace
        self.core = CoreV1Api(client)
        self.custom = CustomObjectsApi(client)

    def runtime(self, name: str, pool: str, **spec: Any) -> dict[str, Any]:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "SDRuntime",
            "metadata": {"name": name},
            "spec": {
                "image": "registry.example.com/sd-webui:1.10",
                "placement": {"nodeSelector": {"sdtask.io/pool": pool}, "tolerations": [GPU_TOLERATION]},
                "output": {"bucket": self.stack.bucket, "endpoint": self.stack.s3.url, "credentialsSecret": "s3"},
                "agent": {"allowPrivateLinks": True},
                **spec,
            },
        }
        result: dict[str, Any] = self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "sdruntimes", body
        )
        return result

    def models(self, runtime: str, *names: str) -> None:
        """Checkpoints already on the runtime's models volume (as on a pre-loaded persistent volume)."""
        folder = self.system.sidecars.models_dir(self.namespace, runtime)
        for name in names:
            write_checkpoint(folder / name)

    def upload_model(self, key: str, data: bytes | None = None) -> str:
        """A checkpoint in the local S3 (a runtime's models.s3Prefix); loadable unless other bytes are given."""
        body = checkpoint_bytes(key.rsplit("/", 1)[-1]) if data is None else data
        self.stack.s3_client().put_object(Bucket=self.stack.bucket, Key=key, Body=body)
        return f"s3://{self.stack.bucket}/{key}"

    def submit(self, task: dict[str, Any], name: str | None = None, **spec: Any) -> str:
        name = name or task["metadata"]["id"]
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "SDTask",
            "metadata": {"name": name},
            "spec": {"task": task, **spec},
        }
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, "sdtasks", body)
        return name

    def create(self, manifest: dict[str, Any]) -> None:
        plural = {"SDTask": "sdtasks", "SDRuntime": "sdruntimes"}[manifest["kind"]]
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, plural, manifest)

    def task(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "sdtasks", name
        )
        return result

    def status(self, name: str) -> dict[str, Any]:
        """The task's status; empty until the operator has written one."""
        return dict(self.task(name).get("status") or {})

    def task_names(self) -> list[str]:
        listing = self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, "sdtasks")
        return [item["metadata"]["name"] for item in listing["items"]]

    def get_runtime(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "sdruntimes", name
        )
        return result

    def wait_finished(self, name: str, timeout: float = 60) -> dict[str, Any]:
        def finished() -> dict[str, Any] | None:
            task = self.task(name)
            return task if (task.get("status") or {}).get("phase") in FINISHED else None

        return wait_for(finished, timeout, f"task {name} to finish")

    def runtime_pods(self, runtime: str) -> list[Any]:
        return list(self.core.list_namespaced_pod(self.namespace, label_selector=f"sdtask.io/runtime={runtime}").items)

    def events(self, name: str) -> list[tuple[str, str, str]]:
        events = self.core.list_namespaced_event(self.namespace, field_selector=f"involvedObject.name={name}").items
        ordered = sorted(events, key=lambda e: (e.event_time or e.first_timestamp, e.metadata.name))
        return [(e.type, e.reason, e.message) for e in ordered]

    def wait_for_event(self, name: str, event_type: str, reason: str, count: int = 1) -> list[tuple[str, str, str]]:
        """Events are posted right after the status they tell of: wait for them rather than race them."""

        def posted() -> list[tuple[str, str, str]] | None:
            events = self.events(name)
            return events if sum(1 for t, r, _ in events if (t, r) == (event_type, reason)) >= count else None

        return wait_for(posted, 30, f"{count} {event_type} {reason} event(s) of {name}")

    def event_time(self, name: str, reason: str) -> Any:
        events = self.core.list_namespaced_event(self.namespace, field_selector=f"involvedObject.name={name}").items
        return next(e.event_time for e in events if e.reason == reason)

    def s3_keys(self, prefix: str) -> list[str]:
        listing = self.stack.s3_client().list_objects_v2(Bucket=self.stack.bucket, Prefix=prefix)
        return sorted(item["Key"] for item in listing.get("Contents", []))

    def s3_object(self, uri: str) -> tuple[bytes, str]:
        bucket, key = uri.removeprefix("s3://").split("/", 1)
        found = self.stack.s3_client().get_object(Bucket=bucket, Key=key)
        return found["Body"].read(), found["ContentType"]

    def delete_runtimes_and_wait(self) -> None:
        for runtime in self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, "sdruntimes")["items"]:
            try:
                self.custom.delete_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, "sdruntimes", runtime["metadata"]["name"]
                )
            except ApiException as error:
                if error.status != 404:
                    raise
        wait_for(
            lambda: not self.core.list_namespaced_pod(self.namespace, label_selector="sdtask.io/runtime").items,
            60,
            "runtime pods to be gone",
        )


def make_cluster(stack: DevStack, system: LocalSystem, kube_api: ApiClient) -> Iterator[Cluster]:
    namespace = f"e2e-{uuid.uuid4().hex[:8]}"
    core = CoreV1Api(kube_api)
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
    cluster = Cluster(stack, system, kube_api, namespace)
    yield cluster
    cluster.delete_runtimes_and_wait()
    core.delete_namespace(namespace)


@pytest.fixture(scope="module")
def cluster(stack: DevStack, system: LocalSystem, kube_api: ApiClient) -> Iterator[Cluster]:
    """One namespace per test module; its runtimes are deleted (and their GPUs freed) at the end."""
    yield from make_cluster(stack, system, kube_api)
