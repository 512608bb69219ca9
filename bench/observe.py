"""What the benchmark measures with: a watch of the tasks' phases, process memory, percentiles, loopback metrics."""

from __future__ import annotations

import collections
import json
import platform
import threading
import time
from pathlib import Path
from typing import Any

from kubernetes.client import CustomObjectsApi

from sdtask.clients.kube import RawWatch
from sdtask.constants import GROUP, VERSION
from sdtask.devcluster.stack import DevStack


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def ms_stats(values: list[float]) -> dict[str, float]:
    return {"p50_ms": round(percentile(values, 0.5) * 1000, 1), "p99_ms": round(percentile(values, 0.99) * 1000, 1)}


def load_average() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def reference_workload_ms(rounds: int = 3) -> float:
    """A fixed single-core Python workload (JSON round trips of a task-sized object, the stack's everyday work), best
    of `rounds`: the figures of two machines compare only once this one is known for both (lower is faster)."""
    task = {"metadata": {"name": "t", "labels": {f"k{i}": "v" * 20 for i in range(20)}}, "status": {"phase": "Running"}}
    task["spec"] = {"task": {"content": {"prompt": "x" * 400, "steps": 20, "width": 512, "height": 512}}}
    best = float("inf")
    for _ in range(rounds):
        began = time.perf_counter()
        for _ in range(20_000):
            json.loads(json.dumps(task))
        best = min(best, time.perf_counter() - began)
    return round(best * 1000, 1)


def urlopen_text(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as response:  # loopback metrics
        return str(response.read().decode())


def wait_rss_settled(pid: int, seconds: float = 10.0) -> float:
    """The operator digests the history's watch events; its memory after that."""
    deadline = time.monotonic() + seconds
    value = rss_mib(pid)
    while time.monotonic() < deadline:
        time.sleep(1)
        value = rss_mib(pid)
    return value


class Observer:
    """Watches the SDTasks of one namespace; remembers when each task was first seen in each phase."""

    def __init__(self, stack: DevStack, namespace: str) -> None:
        self.namespace = namespace
        self.custom = CustomObjectsApi(stack.api_client())
        self.seen: dict[str, dict[str, float]] = collections.defaultdict(dict)
        self.final: dict[str, dict[str, Any]] = {}
        self.changed = threading.Condition()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="observer", daemon=True)

    def start(self) -> Observer:
        self.thread.start()
        return self

    def _run(self) -> None:
        version = ""
        while not self.stop.is_set():
            try:
                stream = RawWatch().stream(
                    self.custom.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    self.namespace,
                    "sdtasks",
                    resource_version=version or None,
                    timeout_seconds=60,
                )
                for event in stream:
                    now = time.monotonic()
                    task = event["object"]
                    version = task["metadata"]["resourceVersion"]
                    phase = (task.get("status") or {}).get("phase")
                    if not phase:
                        continue
                    name = task["metadata"]["name"]
                    with self.changed:
                        self.seen[name].setdefault(phase, now)
                        if phase in ("Succeeded", "Failed"):
                            self.final[name] = task["status"]
                        self.changed.notify_all()
            except Exception as error:
                if not self.stop.is_set():
                    print(f"observer: {error}; watching again")
                    version = ""
                    time.sleep(0.2)

    def wait_finished(self, names: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not all(name in self.final for name in names):
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = [n for n in names if n not in self.final]
                    raise TimeoutError(f"{len(missing)} task(s) not finished after {timeout}s, e.g. {missing[:3]}")
                self.changed.wait(min(left, 1.0))
        failed = [n for n in names if self.final[n].get("phase") != "Succeeded"]
        if failed:
            raise RuntimeError(
                f"{len(failed)} task(s) failed, e.g. {failed[0]}: {self.final[failed[0]].get('message')}"
            )
