"""Prometheus metrics of the operator. Queue depth per runtime is what an external scaler (KEDA, HPA) can drive.

Task outcomes (finished by reason, run time, callback deliveries) are counted here from the task events the operator
already watches, whoever wrote the final status (the agent or the operator): one place, each task counted once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from sdtask.conditions import parse_time
from sdtask.constants import FINISHED_PHASES

DURATION_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600)

QUEUED = Gauge("sdtask_runtime_queued_tasks", "Tasks waiting for a pod", ["namespace", "runtime"])
QUEUED_BY_MODEL = Gauge(
    "sdtask_runtime_queued_tasks_by_model",
    "Tasks waiting for a pod, by the checkpoint they ask for ('' = any)",
    ["namespace", "runtime", "model"],
)
RUNNING = Gauge("sdtask_runtime_running_tasks", "Tasks assigned to or running on a pod", ["namespace", "runtime"])
DESIRED = Gauge("sdtask_runtime_desired_replicas", "Replicas the queue asks for", ["namespace", "runtime"])
READY = Gauge("sdtask_runtime_ready_replicas", "Ready runtime pods", ["namespace", "runtime"])
FINISHED = Counter("sdtask_tasks_finished_total", "Tasks that ended", ["namespace", "runtime", "phase", "reason"])
ADMITTED = Counter("sdtask_tasks_admitted_total", "Tasks routed to a runtime", ["namespace", "runtime"])
QUEUE_WAIT = Histogram(
    "sdtask_task_queue_seconds",
    "From creation to dispatch to a pod",
    ["namespace", "runtime"],
    buckets=DURATION_BUCKETS,
)
RUN_TIME = Histogram(
    "sdtask_task_run_seconds",
    "From the start of the last attempt to the end of the task",
    ["namespace", "runtime", "phase"],
    buckets=DURATION_BUCKETS,
)
CALLBACKS = Counter(
    "sdtask_callback_deliveries_total",
    "Result callbacks that ended: Delivered or Failed (after their retries)",
    ["namespace", "runtime", "state"],
)


def serve(port: int) -> None:
    if port:
        start_http_server(port)


_models_seen: dict[tuple[str, str], set[str]] = {}


def observe_runtime(
    namespace: str,
    runtime: str,
    *,
    queued: int,
    running: int,
    desired: int,
    ready: int,
    queued_by_model: Mapping[str, int] | None = None,
) -> None:
    QUEUED.labels(namespace, runtime).set(queued)
    RUNNING.labels(namespace, runtime).set(running)
    DESIRED.labels(namespace, runtime).set(desired)
    READY.labels(namespace, runtime).set(ready)
    by_model = dict(queued_by_model or {})
    seen = _models_seen.setdefault((namespace, runtime), set())
    for model in seen - set(by_model):
        by_model[model] = 0  # a model nobody waits for any more reads 0, not its last value
    for model, count in by_model.items():
        QUEUED_BY_MODEL.labels(namespace, runtime, model).set(count)
    seen.update(by_model)


def forget_runtime(namespace: str, runtime: str) -> None:
    for gauge in (QUEUED, RUNNING, DESIRED, READY):
        with contextlib.suppress(KeyError):
            gauge.remove(namespace, runtime)
    for model in _models_seen.pop((namespace, runtime), set()):
        with contextlib.suppress(KeyError):
            QUEUED_BY_MODEL.remove(namespace, runtime, model)


def task_admitted(namespace: str, runtime: str) -> None:
    ADMITTED.labels(namespace, runtime).inc()


def task_dispatched(namespace: str, runtime: str, waited_seconds: float) -> None:
    QUEUE_WAIT.labels(namespace, runtime).observe(max(waited_seconds, 0.0))


@dataclass(frozen=True)
class Outcome:
    """What a finished task contributes to the metrics: pure, from its body."""

    namespace: str
    runtime: str
    phase: str
    reason: str
    run_seconds: float | None


def task_outcome(body: Mapping[str, Any]) -> Outcome | None:
    meta, status = body.get("metadata") or {}, body.get("status") or {}
    phase = status.get("phase")
    if phase not in FINISHED_PHASES:
        return None
    started, ended = parse_time(status.get("startTime")), parse_time(status.get("completionTime"))
    return Outcome(
        namespace=str(meta.get("namespace") or ""),
        runtime=str(status.get("runtime") or "-"),
        phase=str(phase),
        reason=str(status.get("reason") or phase),
        run_seconds=(ended - started).total_seconds() if started and ended and ended >= started else None,
    )


@dataclass
class OutcomeRecorder:
    """Counts each task's end and its callback's end once, from the task events (by uid, forgotten on deletion)."""

    finished: set[str] = field(default_factory=set)
    callbacks: set[str] = field(default_factory=set)

    def observe(self, event_type: str, body: Mapping[str, Any]) -> None:
        uid = str((body.get("metadata") or {}).get("uid") or "")
        if not uid:
            return
        if event_type == "DELETED":
            self.finished.discard(uid)
            self.callbacks.discard(uid)
            return
        outcome = task_outcome(body)
        if outcome is None:
            return
        if uid not in self.finished:
            self.finished.add(uid)
            FINISHED.labels(outcome.namespace, outcome.runtime, outcome.phase, outcome.reason).inc()
            if outcome.run_seconds is not None:
                RUN_TIME.labels(outcome.namespace, outcome.runtime, outcome.phase).observe(outcome.run_seconds)
        state = ((body.get("status") or {}).get("callback") or {}).get("state")
        if state in ("Delivered", "Failed") and uid not in self.callbacks:
            self.callbacks.add(uid)
            CALLBACKS.labels(outcome.namespace, outcome.runtime, state).inc()
