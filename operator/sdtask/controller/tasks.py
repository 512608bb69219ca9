"""Task use cases of the operator: admit a new task, and housekeeping (deadlines, orphans, TTL)."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from sdtask.clients.kube import Kube, is_conflict, is_not_found
from sdtask.completion import CallbackPolicy, Outcome, finish_task
from sdtask.conditions import now_iso, set_condition
from sdtask.constants import FINISHED_PHASES, LABEL_RUNTIME, Phase
from sdtask.controller import metrics
from sdtask.controller.admission import Admitted, admit
from sdtask.controller.views import TaskView
from sdtask.routing import RuntimeInfo

log = logging.getLogger(__name__)
COMPONENT = "sdtask-operator"


async def admit_task(kube: Kube, task: dict[str, Any], runtimes: list[RuntimeInfo], policy: CallbackPolicy) -> None:
    meta = task["metadata"]
    decision = admit(task.get("spec") or {}, runtimes)
    if not isinstance(decision, Admitted):
        log.info("task %s/%s rejected: %s", meta["namespace"], meta["name"], decision.message)
        await finish_task(kube, task, Outcome(Phase.FAILED, decision.reason, decision.message), COMPONENT, policy)
        return
    now = dt.datetime.now(dt.UTC)
    model = f" (model {decision.model})" if decision.model else ""
    message = f"queued on runtime {decision.runtime}{model}"
    status = {
        "phase": Phase.PENDING.value,
        "reason": "Queued",
        "message": message,
        "runtime": decision.runtime,
        "model": decision.model,
        "attempts": 0,
        "queuedTime": now_iso(now),
        "conditions": set_condition(None, "Scheduled", False, "Queued", message, now),
    }
    try:
        await kube.patch_task_status(meta["namespace"], meta["name"], status, meta.get("resourceVersion"))
        await kube.patch_task_labels(meta["namespace"], meta["name"], {LABEL_RUNTIME: decision.runtime})
    except Exception as error:
        if is_conflict(error) or is_not_found(error):
            return  # changed or deleted meanwhile; the next event brings the new state
        raise
    metrics.task_admitted(meta["namespace"], decision.runtime)
    await kube.post_event(task, "Normal", "Queued", message, COMPONENT)


def deadline_passed(task: TaskView, now: dt.datetime) -> bool:
    if task.active_deadline_seconds is None or task.phase in FINISHED_PHASES or task.phase is None:
        return False
    return now - task.created > dt.timedelta(seconds=task.active_deadline_seconds)


def ttl_expired(task: TaskView, now: dt.datetime) -> bool:
    if task.ttl_seconds_after_finished is None or task.phase not in FINISHED_PHASES or task.completion_time is None:
        return False
    return now - task.completion_time >= dt.timedelta(seconds=task.ttl_seconds_after_finished)


def orphaned(task: TaskView, runtime_names: set[str]) -> bool:
    """A queued task whose runtime was deleted would otherwise wait forever."""
    return task.phase == Phase.PENDING and bool(task.runtime) and task.runtime not in runtime_names


async def housekeep(
    kube: Kube, tasks: list[TaskView], runtimes_by_namespace: dict[str, set[str]], policy: CallbackPolicy
) -> None:
    now = dt.datetime.now(dt.UTC)
    for task in tasks:
        try:
            if ttl_expired(task, now):
                await kube.delete_task(task.namespace, task.name)
            elif deadline_passed(task, now):
                await _fail(
                    kube,
                    task,
                    "DeadlineExceeded",
                    f"activeDeadlineSeconds ({task.active_deadline_seconds}s) passed in phase {task.phase}",
                    policy,
                )
            elif orphaned(task, runtimes_by_namespace.get(task.namespace, set())):
                await _fail(kube, task, "RuntimeDeleted", f"runtime {task.runtime!r} was deleted", policy)
        except Exception as error:  # one bad task must not stop housekeeping for the others
            if not is_not_found(error):
                log.warning("housekeeping of %s/%s failed: %s", task.namespace, task.name, error)


async def _fail(kube: Kube, task: TaskView, reason: str, message: str, policy: CallbackPolicy) -> None:
    body = await kube.get_task(task.namespace, task.name)
    if (body.get("status") or {}).get("phase") in {p.value for p in FINISHED_PHASES}:
        return
    await finish_task(kube, body, Outcome(Phase.FAILED, reason, message), COMPONENT, policy)
