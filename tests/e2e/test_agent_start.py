"""An agent starts the Web UI on a task without waiting for its Running write and its output claim, yet a task taken
back, changed or deleted while that write is on its way never gets outputs nor a second run.

The API server itself holds the agent's Running write: a validating admission webhook (served here, on loopback,
for the tasks labelled below only) answers it when the test says so. Meanwhile the test takes the task back, edits
or deletes it; the held write then fails as it would when those landed first (409, 404), deterministically.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import ssl
import tempfile
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import AdmissionregistrationV1Api

from sdtask.devcluster import certs
from sdtask.devcluster.sidecars import StandinTiming
from sdtask.devcluster.waiting import wait_for

from .conftest import GROUP, VERSION, Cluster

RUNTIME = "starts"
MODEL = "v1-5-pruned-emaonly.safetensors"
DYNAMIC = "starts-dynamic"
CHECKPOINTS = ("anything-v5.safetensors", "dreamshaper.safetensors")
SWITCH_SECONDS = 3.0  # the dynamic runtime's model load: time to take the task back while it switches
HOLD_LABEL = "test.sdtask.io/hold-start"
HOLD_SECONDS = 25  # below the webhook's own timeout (30 s): the write is always answered, never dropped


class StartHolder:
    """A validating webhook for SDTask status writes: it holds the Scheduled -> Running write of the tasks named in
    `hold` until `release` (each once), and lets every other write through at once."""

    def __init__(self, workdir: Path) -> None:
        tls = certs.generate(workdir)
        self.ca_bundle = base64.b64encode(tls.ca_cert.read_bytes()).decode()
        self.hold: set[str] = set()
        self.held: set[str] = set()  # tasks whose Running write is being held now
        self.seen: set[str] = set()  # tasks any of whose status writes came through here
        self._released: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        holder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                review = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                holder.review(review["request"])
                body = json.dumps(
                    {
                        "apiVersion": "admission.k8s.io/v1",
                        "kind": "AdmissionReview",
                        "response": {"uid": review["request"]["uid"], "allowed": True},
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls.serving_cert, tls.serving_key)  # its SANs include 127.0.0.1
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"https://127.0.0.1:{self.server.server_port}/validate"

    def review(self, request: dict[str, Any]) -> None:
        name = request.get("name", "")
        old = (request.get("oldObject") or {}).get("status") or {}
        new = (request.get("object") or {}).get("status") or {}
        starting = old.get("phase") == "Scheduled" and new.get("phase") == "Running"
        with self._lock:
            self.seen.add(name)
            if not (starting and name in self.hold):
                return
            self.hold.discard(name)
            self.held.add(name)
            released = self._released.setdefault(name, threading.Event())
        released.wait(HOLD_SECONDS)
        with self._lock:
            self.held.discard(name)

    def release(self, name: str) -> None:
        with self._lock:
            self._released.setdefault(name, threading.Event()).set()

    def configuration(self, name: str) -> dict[str, Any]:
        return {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": [
                {
                    "name": "hold-start.test.sdtask.io",
                    "clientConfig": {"url": self.url, "caBundle": self.ca_bundle},
                    "rules": [
                        {
                            "apiGroups": [GROUP],
                            "apiVersions": [VERSION],
                            "operations": ["UPDATE"],
                            "resources": ["sdtasks/status"],
                            "scope": "Namespaced",
                        }
                    ],
                    "objectSelector": {"matchLabels": {HOLD_LABEL: "yes"}},
                    "sideEffects": "None",
                    "admissionReviewVersions": ["v1"],
                    "timeoutSeconds": 30,
                    "failurePolicy": "Fail",
                }
            ],
        }


def task_body(name: str, rounds: int, *, held: bool = False, runtime: str = RUNTIME, **content: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "SDTask",
        "metadata": {"name": name, "labels": {HOLD_LABEL: "yes"} if held else {}},
        "spec": {
            "task": {
                "metadata": {"id": name, "runtime": runtime, "tasktype": "text-to-image", "prefix": "starts"},
                "content": {
                    "prompt": name,
                    "steps": 4,
                    "width": 64,
                    "height": 64,
                    "batch_size": 8,
                    "n_iter": rounds,
                    **content,
                },
            }
        },
    }


@pytest.fixture(scope="module")
def holder(cluster: Cluster) -> Iterator[StartHolder]:
    cluster.models(RUNTIME, MODEL)
    cluster.runtime(RUNTIME, "pool-b", checkpoint=MODEL, scaling={"minReplicas": 1, "maxReplicas": 1})
    wait_for(lambda: (cluster.get_runtime(RUNTIME).get("status") or {}).get("readyReplicas", 0) >= 1, 60, "a ready pod")
    with tempfile.TemporaryDirectory(prefix="sdtask-hold-") as workdir:
        holding = StartHolder(Path(workdir))
        admission = AdmissionregistrationV1Api(cluster.core.api_client)
        name = f"sdtask-test-hold-start-{uuid.uuid4().hex[:6]}"
        admission.create_validating_webhook_configuration(holding.configuration(name))
        try:
            # The API server takes the configuration up within a moment: a labelled task's first status write
            # (its admission; the runtime doesn't exist, so it fails at once) shows it is in force.
            probe = task_body("hold-probe", 1, held=True)
            probe["spec"]["task"]["metadata"]["runtime"] = "no-such-runtime"
            cluster.create(probe)
            wait_for(lambda: "hold-probe" in holding.seen, 30, "the webhook to be in force")
            yield holding
        finally:
            admission.delete_validating_webhook_configuration(name)
            holding.server.shutdown()


def standin_stats(cluster: Cluster, runtime: str = RUNTIME) -> dict[str, Any]:
    pod = next(p for p in cluster.runtime_pods(runtime) if p.status.phase == "Running")
    url = cluster.system.sidecars.webui_url(cluster.namespace, pod.metadata.name)
    with urllib.request.urlopen(f"{url}/standin/stats") as response:
        stats: dict[str, Any] = json.load(response)
    return stats


def generations(stats: dict[str, Any]) -> int:
    return int(stats["requests"].get("/sdapi/v1/txt2img", 0))


def take_back(cluster: Cluster, name: str) -> None:
    """What the operator writes to take a task back from its pod's queue (controller/runtimes.py `_take_back`),
    with a retry time far ahead, so it is not dispatched again during the test."""
    status = cluster.status(name)
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    patch = {
        "phase": "Pending",
        "pod": "",
        "attempts": max(int(status.get("attempts") or 1) - 1, 0),
        "reason": "Preempted",
        "message": "taken back by the test",
        "notBefore": later,
    }
    cluster.custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, cluster.namespace, "sdtasks", name, {"status": patch}
    )


def start_held(cluster: Cluster, holder: StartHolder, name: str, before: dict[str, Any]) -> None:
    """A task holds the pod's Web UI; `name` comes behind it, its Running write held by the API server. Returns once
    the Web UI was asked to generate `name` (and the one before): its status meanwhile still says Scheduled."""
    busy = f"{name}-before"
    cluster.create(task_body(busy, rounds=4))  # 1.6 s
    wait_for(lambda: cluster.status(busy).get("phase") == "Running", 30, "the first task to run")
    holder.hold.add(name)
    cluster.create(task_body(name, rounds=8, held=True))  # 3.2 s: time to act while it generates
    assert cluster.wait_finished(busy)["status"]["phase"] == "Succeeded"
    wait_for(lambda: name in holder.held, 30, f"the Running write of {name} to be held")
    # Well within the hold: without the overlap, the generation would only be asked for once the write returns.
    wait_for(lambda: generations(standin_stats(cluster)) == generations(before) + 2, 15, f"{name} to generate")
    assert cluster.status(name)["phase"] == "Scheduled"
    assert name in holder.held


def test_the_web_ui_starts_before_the_running_write_returns_and_a_task_taken_back_meanwhile_gets_nothing(
    cluster: Cluster, holder: StartHolder
) -> None:
    before = standin_stats(cluster)
    start_held(cluster, holder, "taken-back", before)

    take_back(cluster, "taken-back")
    holder.release("taken-back")  # the write now fails: the task changed since the agent read it (409)

    wait_for(lambda: int(standin_stats(cluster)["interrupts"]) > int(before["interrupts"]), 30, "an interrupt")
    cluster.create(task_body("after-taken-back", rounds=1))  # the pod is free and runs the next task
    assert cluster.wait_finished("after-taken-back")["status"]["phase"] == "Succeeded"
    status = cluster.status("taken-back")
    assert (status["phase"], status.get("attempts"), status.get("pod")) == ("Pending", 0, "")  # never run again
    assert cluster.s3_keys("starts/taken-back/") == []  # nothing of the interrupted generation was stored
    # before-task, the taken-back one (interrupted), the next one: no second run of the taken-back task.
    assert generations(standin_stats(cluster)) == generations(before) + 3


def test_a_task_deleted_while_its_running_write_is_on_its_way_stops_and_stores_nothing(
    cluster: Cluster, holder: StartHolder
) -> None:
    before = standin_stats(cluster)
    start_held(cluster, holder, "deleted-early", before)

    cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, cluster.namespace, "sdtasks", "deleted-early")
    holder.release("deleted-early")  # the write now finds no task (404)

    wait_for(lambda: int(standin_stats(cluster)["interrupts"]) > int(before["interrupts"]), 30, "an interrupt")
    cluster.create(task_body("after-deleted", rounds=1))
    assert cluster.wait_finished("after-deleted")["status"]["phase"] == "Succeeded"
    assert cluster.s3_keys("starts/deleted-early/") == []
    assert generations(standin_stats(cluster)) == generations(before) + 3


def test_a_task_changed_while_its_running_write_is_on_its_way_runs_once_under_its_own_attempt(
    cluster: Cluster, holder: StartHolder
) -> None:
    """Still this pod's, but no longer the version the agent started from (an annotation added): the write fails,
    the generation begun is stopped, and the agent, having read the task again, runs it once more, as attempt 1."""
    before = standin_stats(cluster)
    start_held(cluster, holder, "edited-early", before)

    cluster.custom.patch_namespaced_custom_object(
        GROUP, VERSION, cluster.namespace, "sdtasks", "edited-early", {"metadata": {"annotations": {"note": "x"}}}
    )
    holder.release("edited-early")

    done = cluster.wait_finished("edited-early")["status"]
    assert (done["phase"], done["attempts"]) == ("Succeeded", 1)
    keys = cluster.s3_keys("starts/edited-early/")
    assert len(keys) == 8 * 8 + 1  # one full set: the interrupted generation's partial images were never stored
    stats = standin_stats(cluster)
    assert int(stats["interrupts"]) > int(before["interrupts"])
    assert generations(stats) == generations(before) + 3  # before-task, the interrupted run, the full run


def _loaded(cluster: Cluster) -> str:
    try:
        return str(standin_stats(cluster, DYNAMIC).get("loaded_model") or "")
    except (KeyError, OSError, StopIteration):  # its containers not started yet
        return ""


def test_a_model_switch_begun_before_the_running_write_returns_ends_but_no_generation_follows_a_take_back(
    cluster: Cluster, holder: StartHolder
) -> None:
    """On a dynamic runtime the switch may start while the Running write is on its way; the task is taken back
    meanwhile: the switch ends (and the pod reports the model it now has), the Web UI never generates for the task."""
    cluster.system.sidecars.timings[DYNAMIC] = StandinTiming(load_delay=SWITCH_SECONDS, image_delay=0.05)
    cluster.models(DYNAMIC, *CHECKPOINTS)
    cluster.runtime(DYNAMIC, "pool-a", dynamicModel=True, scaling={"minReplicas": 1, "maxReplicas": 1})

    def pod_model() -> str:
        pods = (cluster.get_runtime(DYNAMIC).get("status") or {}).get("pods") or []
        return str(pods[0].get("model") or "") if pods else ""

    wait_for(lambda: any(p.status.phase == "Running" for p in cluster.runtime_pods(DYNAMIC)), 60, "its pod")
    loaded = wait_for(lambda: _loaded(cluster), 60, "its Web UI to load a model")
    other = next(name for name in CHECKPOINTS if not loaded.startswith(name))
    before = standin_stats(cluster, DYNAMIC)
    holder.hold.add("switch-taken-back")
    task = task_body("switch-taken-back", 1, held=True, runtime=DYNAMIC)
    task["spec"]["task"]["content"]["alwayson_scripts"] = {"sd_model_checkpoint": other}
    cluster.create(task)
    wait_for(lambda: "switch-taken-back" in holder.held, 30, "its Running write to be held")

    def options_calls() -> int:
        return int(standin_stats(cluster, DYNAMIC)["requests"].get("/sdapi/v1/options", 0))

    # The loaded model read, then the switch asked for (its load takes SWITCH_SECONDS), the write still held.
    wait_for(lambda: options_calls() >= int(before["requests"].get("/sdapi/v1/options", 0)) + 2, 10, "the switch")
    assert "switch-taken-back" in holder.held

    take_back(cluster, "switch-taken-back")
    holder.release("switch-taken-back")

    wait_for(lambda: pod_model().startswith(other), 30, "the switch to end and be reported")
    cluster.create(task_body("after-switch", 1, runtime=DYNAMIC, alwayson_scripts={"sd_model_checkpoint": other}))
    assert cluster.wait_finished("after-switch")["status"]["phase"] == "Succeeded"
    after = standin_stats(cluster, DYNAMIC)
    assert generations(after) == generations(before) + 1  # only the next task's: none for the one taken back
    assert after["model_loads"] == before["model_loads"] + 1  # the switch was done once, and kept
    assert after["interrupts"] == before["interrupts"]  # nothing was generating: nothing to interrupt
    status = cluster.status("switch-taken-back")
    assert (status["phase"], status.get("attempts")) == ("Pending", 0)
    assert cluster.s3_keys("starts/switch-taken-back/") == []
