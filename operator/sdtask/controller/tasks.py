"""Task use cases of the operator: admit a new task, and housekeeping (deadlines, orphans, TTL) on timers."""

from __future__ import annotations

import asyncio
import datetime as dt
import heapq
import logging
from dataclasses import dataclass, field
from typing import Any

from sdtask.clients.kube import Kube, is_conflict, is_not_found
from sdtask.completion import NOT_FINISHED, CallbackPolicy, Outcome, finish_task
from sdtask.conditions import now_iso, set_condition
from sdtask.constants import FINISHED_PHASES, Phase
from sdtask.controller import metrics
from sdtask.controller.admission import Admitted, admit
from sdtask.controller.views import TaskView, task_view
from sdtask.routing import RuntimeInfo

log = logging.getLogger(__name__)
COMPONENT = "sdtask-operator"


async def admit_task(kube: Kube, task: dict[str, Any], runtimes: list[RuntimeInfo], policy: CallbackPolicy) -> None:
    """One request for a well-formed task: its status. The runtime label comes with the dispatch, and the conditions
    (with their times) tell what an Event per step would: Events are for outcomes and problems."""
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
    except Exception as error:
        if is_conflict(error) or is_not_found(error):
            return  # changed or deleted meanwhile; the next event brings the new state
        raise
    metrics.task_admitted(meta["namespace"], decision.runtime)


def deadline_passed(task: TaskView, now: dt.datetime) -> bool:
    if task.active_deadline_seconds is None or task.phase in FINISHED_PHASES or task.phase is None:
        return False
    return now - task.created > dt.timedelta(seconds=task.active_deadline_seconds)


def orphaned(task: TaskView, runtime_names: set[str]) -> bool:
    """A queued task whose runtime was deleted would otherwise wait forever."""
    return task.phase == Phase.PENDING and bool(task.runtime) and task.runtime not in runtime_names


TaskKey = tuple[str, str]  # namespace, name


@dataclass(order=True)
class _Due:
    when: dt.datetime
    key: TaskKey = field(compare=False)
    kind: str = field(compare=False)  # "ttl" or "deadline"
    uid: str = field(compare=False)


class Timers:
    """When each task next needs housekeeping (its TTL or its deadline): a heap, so a pass costs what is due, not
    the number of tasks. Setting a task again replaces its timer (the old heap entry is skipped when popped)."""

    def __init__(self) -> None:
        self._heap: list[_Due] = []
        self._current: dict[TaskKey, _Due] = {}

    def __len__(self) -> int:
        return len(self._current)

    def set(self, key: TaskKey, when: dt.datetime | None, kind: str = "", uid: str = "") -> None:
        """`when` None clears the task's timer."""
        if when is None:
            self._current.pop(key, None)
            return
        existing = self._current.get(key)
        if existing and (existing.when, existing.kind, existing.uid) == (when, kind, uid):
            return
        due = _Due(when, key, kind, uid)
        self._current[key] = due
        heapq.heappush(self._heap, due)
        if len(self._heap) > 2 * len(self._current) + 64:  # many replaced entries: rebuild
            self._heap = list(self._current.values())
            heapq.heapify(self._heap)

    def next_at(self) -> dt.datetime | None:
        while self._heap and self._current.get(self._heap[0].key) is not self._heap[0]:
            heapq.heappop(self._heap)
        return self._heap[0].when if self._heap else None

    def pop_due(self, now: dt.datetime, limit: int = 256) -> list[tuple[TaskKey, str, str]]:
        due: list[tuple[TaskKey, str, str]] = []
        while len(due) < limit and (when := self.next_at()) is not None and when <= now:
            entry = heapq.heappop(self._heap)
            del self._current[entry.key]
            due.append((entry.key, entry.kind, entry.uid))
        return due


def next_housekeeping(task: TaskView, default_ttl_seconds: float) -> tuple[dt.datetime | None, str]:
    """When a task next needs the housekeeper, and why. Pure.

    Finished: its TTL (its own ttlSecondsAfterFinished, else the operator's default; a default of 0 keeps them).
    Unfinished with activeDeadlineSeconds: its deadline. Else never.
    """
    if task.phase in FINISHED_PHASES:
        ttl: float | None = task.ttl_seconds_after_finished
        if ttl is None and default_ttl_seconds > 0:
            ttl = default_ttl_seconds
        if ttl is None or task.completion_time is None:
            return None, ""
        return task.completion_time + dt.timedelta(seconds=ttl), "ttl"
    if task.active_deadline_seconds is not None and task.phase is not None:
        return task.created + dt.timedelta(seconds=task.active_deadline_seconds), "deadline"
    return None, ""


async def run_due(kube: Kube, due: list[tuple[TaskKey, str, str]], policy: CallbackPolicy) -> None:
    """Delete the tasks whose TTL passed and fail those past their deadline, a few at once."""

    async def one(key: TaskKey, kind: str, uid: str) -> None:
        namespace, name = key
        try:
            if kind == "ttl":
                await kube.delete_task(namespace, name, uid=uid)
            else:
                body = await kube.get_task(namespace, name)
                view = task_view(body)
                if view.uid == uid and deadline_passed(view, dt.datetime.now(dt.UTC)):
                    await _fail_body(
                        kube,
                        body,
                        view,
                        "DeadlineExceeded",
                        f"activeDeadlineSeconds ({view.active_deadline_seconds}s) passed in phase {view.phase}",
                        policy,
                    )
        except Exception as error:  # one bad task must not stop housekeeping for the others
            if not (is_not_found(error) or is_conflict(error)):
                log.warning("housekeeping of %s/%s failed: %s", namespace, name, error)

    for start in range(0, len(due), 16):
        await asyncio.gather(*(one(*item) for item in due[start : start + 16]))


async def fail_orphans(
    kube: Kube,
    queues: dict[tuple[str, str], list[TaskView]],
    runtimes_by_namespace: dict[str, set[str]],
    policy: CallbackPolicy,
) -> None:
    """Queued tasks of a runtime that was deleted would wait forever. Costs one look per runtime, not per task."""
    for (namespace, runtime), tasks in queues.items():
        if not runtime or runtime in runtimes_by_namespace.get(namespace, set()):
            continue
        for task in tasks:
            if orphaned(task, runtimes_by_namespace.get(namespace, set())):
                try:
                    await _fail(kube, task, "RuntimeDeleted", f"runtime {task.runtime!r} was deleted", policy)
                except Exception as error:
                    if not is_not_found(error):
                        log.warning("housekeeping of %s/%s failed: %s", task.namespace, task.name, error)


async def _fail(kube: Kube, task: TaskView, reason: str, message: str, policy: CallbackPolicy) -> None:
    body = await kube.get_task(task.namespace, task.name)
    await _fail_body(kube, body, task, reason, message, policy)


async def _fail_body(
    kube: Kube, body: dict[str, Any], task: TaskView, reason: str, message: str, policy: CallbackPolicy
) -> None:
    if (body.get("status") or {}).get("phase") in {p.value for p in FINISHED_PHASES}:
        return
    # Only if still unfinished when written: an agent's success meanwhile is never overwritten.
    await finish_task(kube, body, Outcome(Phase.FAILED, reason, message), COMPONENT, policy, expect=NOT_FINISHED)
