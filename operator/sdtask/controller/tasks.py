"""Task use cases of the operator: admit a new task, and housekeeping (deadlines, orphans, TTL) on timers; the
housekeeping decisions are pure, in `housekeeping.py`."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any, Protocol

from sdtask import logs
from sdtask.clients.kube import Kube, describe_error, is_conflict, is_not_found
from sdtask.completion import NOT_FINISHED, CallbackPolicy, Expect, Outcome, finish_task
from sdtask.constants import FINISHED_PHASES, OPERATOR_NAME, Phase
from sdtask.controller import metrics
from sdtask.controller.admission import Admitted, admission_status, admit
from sdtask.controller.admission_queue import MAX_ADMISSION_FAILURES
from sdtask.controller.housekeeping import TaskKey, deadline_passed, orphaned
from sdtask.controller.views import TaskView, task_view
from sdtask.routing import RuntimeInfo

log = logging.getLogger(__name__)


class ArrivalPods(Protocol):
    """The runtimes' pods a task may go to the moment it is admitted, idle or with room in their queue ahead
    (controller/runtimes.RuntimeState)."""

    def take(self, namespace: str, runtime: str, task: str, model: str | None) -> str | None: ...

    def give_back(self, namespace: str, runtime: str, task: str) -> None: ...


async def admit_task(
    kube: Kube, task: dict[str, Any], runtimes: list[RuntimeInfo], policy: CallbackPolicy, arrivals: ArrivalPods
) -> None:
    """One request for a well-formed task: its status, queued on its runtime, or already assigned to a pod (idle, or
    with room ahead) when nothing waits in that queue (one write instead of two, and no pass of the runtime loop in
    between). The conditions (with their times) tell what an Event per step would: Events are for outcomes and
    problems."""
    meta = task["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    decision = admit(task.get("spec") or {}, runtimes)
    if not isinstance(decision, Admitted):
        log.info("task %s/%s rejected: %s", namespace, name, decision.message)
        await finish_task(kube, task, Outcome(Phase.FAILED, decision.reason, decision.message), OPERATOR_NAME, policy)
        return
    logs.bind(runtime=decision.runtime)  # the status names it only once this write is seen; the lines name it now
    now = dt.datetime.now(dt.UTC)
    pod = arrivals.take(namespace, decision.runtime, name, decision.model)
    try:
        await kube.write_task_status(namespace, name, admission_status(decision, now, pod), meta.get("resourceVersion"))
    except Exception as error:
        if pod:
            arrivals.give_back(namespace, decision.runtime, name)
        if is_conflict(error) or is_not_found(error):
            return  # changed or deleted meanwhile; the next event brings the new state
        raise
    metrics.task_admitted(namespace, decision.runtime)
    if pod:
        metrics.task_dispatched(namespace, decision.runtime, (now - task_view(task).created).total_seconds())
        log.info("task %s/%s assigned to pod %s on arrival", namespace, name, pod)


UNADMITTED = Expect(frozenset({None}))


async def fail_unadmitted(kube: Kube, task: dict[str, Any], error: Exception, policy: CallbackPolicy) -> None:
    """A task whose admission kept failing ends with the error as its reason, unless it was admitted meanwhile."""
    message = f"admission failed {MAX_ADMISSION_FAILURES} times, last with {describe_error(error)}"
    log.warning("task %s/%s: %s", task["metadata"]["namespace"], task["metadata"]["name"], message)
    await finish_task(
        kube, task, Outcome(Phase.FAILED, "AdmissionFailed", message), OPERATOR_NAME, policy, expect=UNADMITTED
    )


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
    await finish_task(kube, body, Outcome(Phase.FAILED, reason, message), OPERATOR_NAME, policy, expect=NOT_FINISHED)
