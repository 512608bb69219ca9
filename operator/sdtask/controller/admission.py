"""First look at a new SDTask: is it well-formed, which runtime serves it, with which model; the status that says
so. Pure."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sdtask.api import MAX_CONTENT_BYTES
from sdtask.api.task import CONDITION_SCHEDULED
from sdtask.conditions import now_iso, set_condition
from sdtask.constants import Phase
from sdtask.nesting import MAX_CONTENT_DEPTH, depth_exceeds
from sdtask.request import requested_checkpoint
from sdtask.routing import Route, RouteError, RuntimeInfo, route_task


@dataclass(frozen=True)
class Admitted:
    runtime: str
    model: str | None


@dataclass(frozen=True)
class Rejected:
    reason: str
    message: str


def admit(spec: Mapping[str, Any], runtimes: list[RuntimeInfo]) -> Admitted | Rejected:
    task = spec.get("task") or {}
    if not isinstance(task, dict):  # the CRD schema refuses it; kopf may still hand over what an older one let in
        return Rejected("InvalidTask", "spec.task must be an object")
    metadata: dict[str, Any] = task["metadata"] if isinstance(task.get("metadata"), dict) else {}
    content = task.get("content")
    if not isinstance(content, dict):
        return Rejected("InvalidTask", "spec.task.content must be an object")
    # Before anything recursive (json.dumps below) touches it.
    if depth_exceeds(content, MAX_CONTENT_DEPTH):
        return Rejected(
            "ContentTooDeep", f"spec.task.content is nested more than {MAX_CONTENT_DEPTH} levels deep; refused"
        )
    size = len(json.dumps(content, separators=(",", ":")).encode())
    if size > MAX_CONTENT_BYTES:
        return Rejected(
            "ContentTooLarge",
            f"spec.task.content is {size} bytes, over the {MAX_CONTENT_BYTES} byte cap; pass images as http(s) or "
            "s3:// links instead of inline base64",
        )
    route = route_task(str(metadata.get("runtime") or ""), requested_checkpoint(content), runtimes)
    if isinstance(route, RouteError):
        return Rejected(route.reason, route.message)
    assert isinstance(route, Route)
    return Admitted(route.runtime, route.model)


def admission_status(decision: Admitted, now: dt.datetime, pod: str | None = None) -> dict[str, Any]:
    """The status of an admitted task: queued on its runtime, or (`pod`) assigned on arrival to that pod, whose
    agent acts on this very write (attempt 1, as a dispatch from the queue would write it)."""
    model = f" (model {decision.model})" if decision.model else ""
    status: dict[str, Any] = {
        "runtime": decision.runtime,
        "model": decision.model,
        "queuedTime": now_iso(now),
    }
    if pod is None:
        message = f"queued on runtime {decision.runtime}{model}"
        queued = {"phase": Phase.PENDING.value, "reason": "Queued", "attempts": 0}
        return {**status, **queued, "message": message, "conditions": _scheduled(False, "Queued", message, now)}
    message = f"assigned to pod {pod} on arrival (attempt 1)"
    assigned = {"phase": Phase.SCHEDULED.value, "reason": "Assigned", "pod": pod, "attempts": 1}
    return {**status, **assigned, "message": message, "conditions": _scheduled(True, "Assigned", message, now)}


def _scheduled(value: bool, reason: str, message: str, now: dt.datetime) -> list[dict[str, Any]]:
    return set_condition(None, CONDITION_SCHEDULED, value, reason, message, now)
