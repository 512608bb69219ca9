"""Prometheus metrics of the operator. Queue depth per runtime is what an external scaler (KEDA, HPA) can drive."""

from __future__ import annotations

import contextlib

from prometheus_client import Counter, Gauge, Histogram, start_http_server

QUEUED = Gauge("sdtask_runtime_queued_tasks", "Tasks waiting for a pod", ["namespace", "runtime"])
RUNNING = Gauge("sdtask_runtime_running_tasks", "Tasks assigned to or running on a pod", ["namespace", "runtime"])
DESIRED = Gauge("sdtask_runtime_desired_replicas", "Replicas the queue asks for", ["namespace", "runtime"])
READY = Gauge("sdtask_runtime_ready_replicas", "Ready runtime pods", ["namespace", "runtime"])
FINISHED = Counter("sdtask_tasks_finished_total", "Tasks that ended", ["namespace", "runtime", "phase", "reason"])
ADMITTED = Counter("sdtask_tasks_admitted_total", "Tasks routed to a runtime", ["namespace", "runtime"])
QUEUE_WAIT = Histogram(
    "sdtask_task_queue_seconds",
    "From creation to dispatch to a pod",
    ["namespace", "runtime"],
    buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600),
)


def serve(port: int) -> None:
    if port:
        start_http_server(port)


def observe_runtime(namespace: str, runtime: str, *, queued: int, running: int, desired: int, ready: int) -> None:
    QUEUED.labels(namespace, runtime).set(queued)
    RUNNING.labels(namespace, runtime).set(running)
    DESIRED.labels(namespace, runtime).set(desired)
    READY.labels(namespace, runtime).set(ready)


def forget_runtime(namespace: str, runtime: str) -> None:
    for gauge in (QUEUED, RUNNING, DESIRED, READY):
        with contextlib.suppress(KeyError):
            gauge.remove(namespace, runtime)


def task_admitted(namespace: str, runtime: str) -> None:
    ADMITTED.labels(namespace, runtime).inc()


def task_dispatched(namespace: str, runtime: str, waited_seconds: float) -> None:
    QUEUE_WAIT.labels(namespace, runtime).observe(max(waited_seconds, 0.0))


def task_finished(namespace: str, runtime: str, phase: str, reason: str) -> None:
    FINISHED.labels(namespace, runtime or "-", phase, reason).inc()
