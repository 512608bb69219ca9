"""The bench's hands on the local cluster: runtimes and tasks created, pods and loaded models waited for, API
requests counted, CPU metered and py-spy profiles taken. The scenarios are in bench/run.py."""

from __future__ import annotations

import collections
import concurrent.futures
import datetime as dt
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from kubernetes.client import CoordinationV1Api, CoreV1Api, CustomObjectsApi

from bench.cpu import CpuMeter
from bench.observe import Observer, urlopen_text
from sdtask.constants import ANNOTATION_MODEL, GROUP, VERSION
from sdtask.devcluster.nodes import NodePool
from sdtask.devcluster.sidecars import StandinTiming
from sdtask.devcluster.stack import DevStack
from sdtask.devcluster.system import LocalSystem
from sdtask.devcluster.waiting import wait_for
from sdtask.modelreport import LEASE_SELECTOR
from sdtask.standin.weights import write_checkpoint

TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
# One pool with room for every runtime of the run at once (kwok nodes cost nothing).
POOLS = (NodePool(name="bench", nodes=2, gpus_per_node=16, cpu="64", memory="256Gi", pods=200),)
CHECKPOINTS = [f"model-{index}.safetensors" for index in range(8)]


class BenchCluster:
    def __init__(self, stack: DevStack, system: LocalSystem, namespace: str, profile_dir: Path | None) -> None:
        self.stack, self.system, self.namespace = stack, system, namespace
        self.client = stack.api_client()
        self.core, self.custom = CoreV1Api(self.client), CustomObjectsApi(self.client)
        self.coordination = CoordinationV1Api(self.client)  # the agents report their loaded model in Leases
        self.local = threading.local()
        self.created: dict[str, float] = {}
        self.observer = Observer(stack, namespace)
        self.profile_dir = profile_dir
        self.meter: CpuMeter | None = None
        self.cpu: dict[str, Any] | None = None

    def cpu_begin(self) -> None:
        """The phase's work starts here (after its pods started: their imports are not the tasks' cost)."""
        if self.meter is not None:
            self.meter = CpuMeter().start()

    def cpu_done(self) -> dict[str, Any] | None:
        """The phase's CPU per component, taken before its runtime's pods (and their processes) go."""
        if self.meter is not None and self.cpu is None:
            self.cpu = self.meter.stop()
        return self.cpu

    # --- objects ------------------------------------------------------------------------------------------------------
    def _thread_custom(self) -> CustomObjectsApi:
        if not hasattr(self.local, "custom"):
            self.local.custom = CustomObjectsApi(self.stack.api_client())
        return self.local.custom

    def runtime(self, name: str, *, namespace: str | None = None, timing: StandinTiming, **spec: Any) -> None:
        self.system.sidecars.timings[name] = timing
        # The runtime's models volume, pre-loaded with loadable checkpoints (all eight: dynamic runtimes use them).
        folder = self.system.sidecars.models_dir(namespace or self.namespace, name)
        for checkpoint in CHECKPOINTS:
            write_checkpoint(folder / checkpoint)
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "SDRuntime",
            "metadata": {"name": name},
            "spec": {
                "image": "registry.example.com/sd-webui:1",
                "checkpoint": CHECKPOINTS[0],
                "placement": {"nodeSelector": {"sdtask.io/pool": "bench"}, "tolerations": [TOLERATION]},
                "output": {"bucket": self.stack.bucket},
                **spec,
            },
        }
        self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace or self.namespace, "sdruntimes", body)

    def delete_runtime(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, "sdruntimes", name)
        wait_for(lambda: not self.pods(name), 120, f"the pods of {name} to go")

    def task(self, name: str, runtime: str, model: str | None = None, namespace: str | None = None) -> None:
        content: dict[str, Any] = {"prompt": name, "steps": 1, "width": 64, "height": 64}
        if model:
            content["alwayson_scripts"] = {"sd_model_checkpoint": model}
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "SDTask",
            "metadata": {"name": name},
            "spec": {
                "task": {
                    "metadata": {"id": name, "runtime": runtime, "tasktype": "text-to-image", "prefix": "bench"},
                    "content": content,
                }
            },
        }
        data = json.dumps(body).encode()
        api = self._thread_custom().api_client
        url = f"{api.configuration.host}/apis/{GROUP}/{VERSION}/namespaces/{namespace or self.namespace}/sdtasks"
        self.created[name] = time.monotonic()
        # The POST itself on the client's own connection pool and credentials, without the client's request and
        # answer (de)serialisation: the benchmark's creator shares the 2 cores with what it measures, and a user's
        # kubectl or GitOps controller would not run there at all.
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        for setting in api.configuration.auth_settings().values():  # the kubeconfig's bearer token
            if setting["in"] == "header" and setting["value"]:
                headers[setting["key"]] = setting["value"]
        answer = api.rest_client.pool_manager.request("POST", url, body=data, headers=headers)
        if answer.status >= 300:
            raise RuntimeError(f"creating task {name}: HTTP {answer.status}: {answer.data[:300]!r}")

    def create_many(
        self, tasks: list[tuple[str, str, str | None]], threads: int = 8, namespace: str | None = None
    ) -> None:
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda t: self.task(t[0], t[1], t[2], namespace), tasks))

    def pods(self, runtime: str, namespace: str | None = None) -> list[Any]:
        selector = f"sdtask.io/runtime={runtime}"
        return list(self.core.list_namespaced_pod(namespace or self.namespace, label_selector=selector).items)

    def wait_ready(self, runtime: str, count: int) -> None:
        """Pods Running and their agents up (an agent reports its pod's loaded model once it runs)."""

        def ready() -> bool:
            pods = [p for p in self.pods(runtime) if p.status.phase == "Running" and not p.metadata.deletion_timestamp]
            leases = self.coordination.list_namespaced_lease(self.namespace, label_selector=LEASE_SELECTOR).items
            reported = {
                lease.metadata.name for lease in leases if (lease.metadata.annotations or {}).get(ANNOTATION_MODEL)
            }
            return len([p for p in pods if p.metadata.name in reported]) == count

        wait_for(ready, 120, f"{count} ready pods of {runtime}", interval=0.2)

    def wait_loaded(self, runtime: str, count: int) -> dict[str, str]:
        """Dynamic runtime: pods Running with their Web UI done loading its first checkpoint (the stand-in logs
        it; the agent may have asked before the load ended). Returns pod -> loaded model."""
        pattern = re.compile(r"loaded (\S+) \[")

        def loaded() -> dict[str, str] | None:
            pods = [p for p in self.pods(runtime) if p.status.phase == "Running" and not p.metadata.deletion_timestamp]
            found = {}
            for pod in pods:
                log = self.system.sidecars.workdir / "pods" / self.namespace / pod.metadata.name / "webui.log"
                match = pattern.search(log.read_text()) if log.exists() else None
                if match:
                    found[pod.metadata.name] = match.group(1)
            return found if len(found) == count else None

        return wait_for(loaded, 120, f"{count} pods of {runtime} with a model loaded", interval=0.2)

    # --- API server request counts ------------------------------------------------------------------------------------
    def request_counts(self) -> dict[tuple[str, str, str], float]:
        response = self.client.call_api(
            "/metrics", "GET", auth_settings=["BearerToken"], _preload_content=False, _return_http_data_only=True
        )
        counts: dict[tuple[str, str, str], float] = collections.defaultdict(float)
        for line in response.data.decode().splitlines():
            if not line.startswith("apiserver_request_total{"):
                continue
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line[: line.rindex("}")]))
            key = (labels.get("resource", ""), labels.get("subresource", ""), labels.get("verb", ""))
            counts[key] += float(line.rsplit(" ", 1)[1])
        return counts

    def finish_all(self, namespace: str, names: list[str]) -> None:
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        status = {"phase": "Succeeded", "reason": "Completed", "message": "bench history", "completionTime": now}

        def finish(name: str) -> None:
            self._thread_custom().patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, "sdtasks", name, {"status": status}
            )

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(finish, names))

    def admitted(self, namespace: str) -> float:
        text = urlopen_text(self.system.metrics_url)
        total = 0.0
        for line in text.splitlines():
            if line.startswith("sdtask_tasks_admitted_total{") and f'namespace="{namespace}"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    # --- profiling ----------------------------------------------------------------------------------------------------
    def profile(self, name: str, seconds: int, pid: int | None = None) -> subprocess.Popen[bytes] | None:
        """py-spy on the operator (or on `pid`) for `seconds`, written to the profile folder as `name`.txt."""
        if self.profile_dir is None:
            return None
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        return subprocess.Popen(
            [
                str(Path(sys.executable).parent / "py-spy"),
                "record",
                "--pid",
                str(pid or self.system.operator.pid),
                "--duration",
                str(seconds),
                "--rate",
                "50",
                "--format",
                "raw",
                "--output",
                str(self.profile_dir / f"{name}.txt"),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    @staticmethod
    def finish_profile(profiler: subprocess.Popen[bytes] | None) -> None:
        if profiler is not None:
            profiler.wait(timeout=120)
