"""Small immutable views of the objects the operator indexes. Pure parsing from API dicts."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sdtask.conditions import parse_time
from sdtask.constants import LABEL_RUNTIME, Phase
from sdtask.routing import RuntimeInfo

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True)
class TaskView:
    namespace: str
    name: str
    uid: str
    resource_version: str
    created: dt.datetime
    phase: Phase | None
    runtime: str
    pod: str
    model: str | None
    priority: int
    attempts: int
    not_before: dt.datetime | None
    active_deadline_seconds: int | None
    ttl_seconds_after_finished: int | None
    completion_time: dt.datetime | None
    conditions: list[dict[str, Any]] | None = None  # to patch them without reading the task again
    callback_state: str = ""  # status.callback.state: Pending until a delivery ended (see controller/recovery.py)
    start_time: dt.datetime | None = None  # status.startTime of the current attempt


@dataclass(frozen=True)
class PodView:
    namespace: str
    name: str
    runtime: str
    phase: str
    ready: bool
    deleting: bool
    node: str
    model: str | None
    unschedulable: str  # the scheduler's message while the pod can't be placed
    init_failure: str = ""  # "<container>: <message>" while an init container (fetch-model) keeps failing


def _labels(meta: Mapping[str, Any]) -> Mapping[str, str]:
    return meta.get("labels") or {}


def task_view(body: Mapping[str, Any]) -> TaskView:
    meta, spec, status = body.get("metadata", {}), body.get("spec", {}), body.get("status") or {}
    phase = status.get("phase")
    return TaskView(
        namespace=meta.get("namespace", ""),
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        resource_version=meta.get("resourceVersion", ""),
        created=parse_time(meta.get("creationTimestamp")) or EPOCH,
        phase=Phase(str(phase)) if phase in Phase._value2member_map_ else None,
        runtime=status.get("runtime") or "",
        pod=status.get("pod") or "",
        model=status.get("model") or None,
        priority=int(spec.get("priority", 0) or 0),
        attempts=int(status.get("attempts", 0) or 0),
        not_before=parse_time(status.get("notBefore")),
        active_deadline_seconds=spec.get("activeDeadlineSeconds"),
        ttl_seconds_after_finished=spec.get("ttlSecondsAfterFinished"),
        completion_time=parse_time(status.get("completionTime")),
        conditions=[dict(c) for c in status.get("conditions") or []],
        callback_state=str((status.get("callback") or {}).get("state") or ""),
        start_time=parse_time(status.get("startTime")),
    )


def pod_view(body: Mapping[str, Any]) -> PodView:
    meta, spec, status = body.get("metadata", {}), body.get("spec", {}), body.get("status") or {}
    conditions = status.get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    unschedulable = next(
        (
            c.get("message", "")
            for c in conditions
            if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable"
        ),
        "",
    )
    return PodView(
        namespace=meta.get("namespace", ""),
        name=meta.get("name", ""),
        runtime=_labels(meta).get(LABEL_RUNTIME, ""),
        phase=status.get("phase", ""),
        ready=ready and status.get("phase") == "Running",
        deleting=bool(meta.get("deletionTimestamp")),
        node=spec.get("nodeName") or "",
        model=None,  # reported apart, in the pod's Lease: see with_models
        unschedulable=unschedulable,
        init_failure=init_failure(status),
    )


def with_models(pods: list[PodView], models: Mapping[str, str | None]) -> list[PodView]:
    """The pods with the model each one's agent reports in its Lease (pod name -> model; sdtask/modelreport.py)."""
    return [dataclasses.replace(pod, model=models.get(pod.name)) if pod.name in models else pod for pod in pods]


def init_failure(status: Mapping[str, Any]) -> str:
    """The last failure of an init container that has not completed, with its termination message (the
    fetch-model container names the missing object there)."""
    for container in status.get("initContainerStatuses") or []:
        if container.get("ready"):
            continue
        for state in (container.get("state") or {}, container.get("lastState") or {}):
            terminated = state.get("terminated") or {}
            if terminated and terminated.get("exitCode", 0) != 0:
                message = str(terminated.get("message") or terminated.get("reason") or "failed").strip()
                return f"{container.get('name', 'init')}: {message}"
    return ""


def runtime_info(body: Mapping[str, Any]) -> RuntimeInfo:
    spec = body.get("spec", {})
    return RuntimeInfo(
        name=body.get("metadata", {}).get("name", ""),
        dynamic=bool(spec.get("dynamicModel", False)),
        checkpoint=spec.get("checkpoint") or None,
        deleting=bool(body.get("metadata", {}).get("deletionTimestamp")),
    )
