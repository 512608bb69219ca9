"""Benchmarks on the local stack; figures go to bench/results.json (`make bench`).

- scale_from_zero: from creating the first task of an idle runtime (0 pods) to its first pod object, to that pod
  Running, and to the task Succeeded. Target: first pod within 2 s.
- throughput: 60 tasks at once on a warm runtime of 2 pods (stand-in with no service time), so the figure is the
  operator's and agents' own overhead per task: apply -> Succeeded latency percentiles and tasks per second.
- memory: resident memory of the operator and of one agent after the load.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from kubernetes.client import CoreV1Api, CustomObjectsApi

from sdtask.localstack.sidecars import StandinTiming
from sdtask.localstack.stack import LocalStack
from sdtask.localstack.system import LocalSystem
from sdtask.localstack.waiting import wait_for

RESULTS = Path(__file__).resolve().parent / "results.json"
GROUP, VERSION = "sdtask.io", "v1alpha1"
TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(int(q * len(ordered)), len(ordered) - 1)], 3)


class Bench:
    def __init__(self, stack: LocalStack, system: LocalSystem, namespace: str) -> None:
        self.stack, self.system, self.namespace = stack, system, namespace
        self.client = stack.api_client()
        self.core, self.custom = CoreV1Api(self.client), CustomObjectsApi(self.client)

    def runtime(self, name: str, **scaling: Any) -> None:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "SDRuntime",
            "metadata": {"name": name},
            "spec": {
                "image": "registry.example.com/sd-webui:1",
                "checkpoint": "bench.safetensors",
                "placement": {"nodeSelector": {"sdtask.io/pool": "pool-a"}, "tolerations": [TOLERATION]},
                "scaling": scaling,
                "output": {"bucket": self.stack.bucket},
            },
        }
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, "sdruntimes", body)

    def task(self, name: str, runtime: str) -> None:
        content = {"prompt": name, "steps": 1, "width": 64, "height": 64}
        request = {
            "metadata": {"id": name, "runtime": runtime, "tasktype": "text-to-image", "prefix": "bench"},
            "content": content,
        }
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "SDTask",
            "metadata": {"name": name},
            "spec": {"task": request},
        }
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, "sdtasks", body)

    def phase(self, name: str) -> str:
        task = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, "sdtasks", name)
        return str((task.get("status") or {}).get("phase", ""))

    def pods(self, runtime: str) -> list[Any]:
        selector = f"sdtask.io/runtime={runtime}"
        return list(self.core.list_namespaced_pod(self.namespace, label_selector=selector).items)

    def _observe_pods(self, runtime: str, seen: dict[str, float], stop: threading.Event) -> None:
        """When the runtime's first pod appears and runs; a 10 ms poll, far below the 2 s target."""
        while not stop.is_set():
            pods = self.pods(runtime)
            if pods:
                seen.setdefault("created", time.monotonic())
            if any(p.status.phase == "Running" for p in pods):
                seen.setdefault("running", time.monotonic())
            stop.wait(0.01)

    def _cold_round(self, name: str) -> tuple[float, float, float]:
        """Seconds from creating the task to: the first pod, that pod Running, the task Succeeded."""
        seen: dict[str, float] = {}
        stop = threading.Event()
        observer = threading.Thread(target=self._observe_pods, args=("cold", seen, stop), daemon=True)
        started = time.monotonic()
        observer.start()
        self.task(name, "cold")
        wait_for(lambda: self.phase(name) == "Succeeded", 60, f"{name} to succeed", interval=0.01)
        succeeded = time.monotonic() - started
        wait_for(lambda: "running" in seen, 30, "the pod to run")
        stop.set()
        observer.join()
        return seen["created"] - started, seen["running"] - started, succeeded

    def scale_from_zero(self, rounds: int = 5) -> dict[str, Any]:
        self.runtime("cold", minReplicas=0, maxReplicas=1, scaleDownDelaySeconds=0)
        first_pod, running, succeeded = [], [], []
        for index in range(rounds):
            wait_for(lambda: not self.pods("cold"), 60, "the runtime to be at zero")
            pod_at, running_at, succeeded_at = self._cold_round(f"cold-{index}")
            first_pod.append(pod_at)
            running.append(running_at)
            succeeded.append(succeeded_at)
        return {
            "rounds": rounds,
            "first_pod_seconds": {"max": round(max(first_pod), 3), "median": round(statistics.median(first_pod), 3)},
            "pod_running_seconds": {"max": round(max(running), 3), "median": round(statistics.median(running), 3)},
            "task_succeeded_seconds": {
                "max": round(max(succeeded), 3),
                "median": round(statistics.median(succeeded), 3),
            },
            "target_first_pod_seconds": 2.0,
            "met": max(first_pod) <= 2.0,
        }

    def throughput(self, count: int = 60) -> dict[str, Any]:
        self.runtime("warm", minReplicas=2, maxReplicas=2)
        wait_for(lambda: len([p for p in self.pods("warm") if p.status.phase == "Running"]) == 2, 60, "2 pods")
        submitted: dict[str, float] = {}
        began = time.monotonic()
        for index in range(count):
            name = f"warm-{index}"
            submitted[name] = time.monotonic()
            self.task(name, "warm")
        finished: dict[str, float] = {}

        def all_done() -> bool:
            items = self.custom.list_namespaced_custom_object(
                GROUP, VERSION, self.namespace, "sdtasks", label_selector="sdtask.io/runtime=warm"
            )["items"]
            now = time.monotonic()
            for item in items:
                if (item.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                    finished.setdefault(item["metadata"]["name"], now)
            return len(finished) == count

        wait_for(all_done, 300, f"{count} tasks", interval=0.05)
        elapsed = max(finished.values()) - began
        latencies = [finished[n] - submitted[n] for n in submitted]
        return {
            "tasks": count,
            "pods": 2,
            "seconds": round(elapsed, 2),
            "tasks_per_second": round(count / elapsed, 2),
            "latency_seconds": {
                "p50": percentile(latencies, 0.5),
                "p95": percentile(latencies, 0.95),
                "max": round(max(latencies), 3),
            },
        }

    def memory(self) -> dict[str, Any]:
        agents = [pod.agent.pid for pod in self.system.sidecars.pods.values() if pod.agent.running()]
        return {
            "operator_rss_mib": rss_mib(self.system.operator.pid),
            "agent_rss_mib": rss_mib(agents[0]) if agents else None,
        }


def main() -> int:
    with LocalStack() as stack, LocalSystem(stack, timing=StandinTiming(load_delay=0.0, image_delay=0.0)) as system:
        namespace = f"bench-{uuid.uuid4().hex[:6]}"
        bench = Bench(stack, system, namespace)
        bench.core.create_namespace({"metadata": {"name": namespace}})
        results = {
            "machine": {"cpus": len(os.sched_getaffinity(0)), "python": platform.python_version()},
            "scale_from_zero": bench.scale_from_zero(),
            "throughput": bench.throughput(),
            "memory": bench.memory(),
        }
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"written to {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
