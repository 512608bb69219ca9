"""Which queued task goes to which idle pod. Pure, so the policy is tested directly.

Order: priority (higher first), then age. One task per pod (the Web UI is not safe for concurrent requests).
Model affinity: a pod that already has a queued task's checkpoint loaded takes that task, saving a model load of tens of
seconds. It is bounded: only tasks in a window at the head of the queue, of the head's priority, may be preferred this
way, and a task that has waited longer than `starvation_limit` is served first by any idle pod.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sdtask.checkpoints import same_checkpoint


@dataclass(frozen=True)
class QueuedTask:
    name: str
    priority: int
    queued_at: dt.datetime
    model: str | None = None  # None: any loaded model will do
    not_before: dt.datetime | None = None  # backing off after a failed attempt


@dataclass(frozen=True)
class IdlePod:
    name: str
    model: str | None = None


@dataclass(frozen=True)
class Assignment:
    task: QueuedTask
    pod: IdlePod


def queue_order(tasks: list[QueuedTask]) -> list[QueuedTask]:
    return sorted(tasks, key=lambda t: (-t.priority, t.queued_at, t.name))


def eligible(tasks: list[QueuedTask], now: dt.datetime) -> list[QueuedTask]:
    return [t for t in tasks if t.not_before is None or t.not_before <= now]


def _fits(task: QueuedTask, pod: IdlePod) -> bool:
    return task.model is None or same_checkpoint(task.model, pod.model)


def plan_assignments(
    tasks: list[QueuedTask],
    idle_pods: list[IdlePod],
    now: dt.datetime,
    *,
    window: int = 16,
    starvation_limit: dt.timedelta = dt.timedelta(minutes=2),
) -> list[Assignment]:
    queue = queue_order(eligible(tasks, now))
    free = sorted(idle_pods, key=lambda p: p.name)
    plan: list[Assignment] = []

    def take(task: QueuedTask, pod: IdlePod) -> None:
        plan.append(Assignment(task, pod))
        queue.remove(task)
        free.remove(pod)

    # 1. Starving tasks first, each to a pod with its model when there is one.
    for task in [t for t in queue if now - t.queued_at >= starvation_limit]:
        if not free:
            return plan
        take(task, next((p for p in free if _fits(task, p)), free[0]))
    # 2. Affinity inside the window: tasks of the head's priority go to pods that hold their model.
    if queue:
        top = queue[0].priority
        for task in [t for t in queue[:window] if t.priority == top and t.model is not None]:
            pod = next((p for p in free if same_checkpoint(task.model, p.model)), None)
            if pod:
                take(task, pod)
    # 3. Work-conserving: every pod still idle takes the next task in order, preferring a pod whose model no
    #    upcoming task wants, so warm pods stay warm for them.
    for task in list(queue):
        if not free:
            break
        wanted = {t.model for t in queue[:window] if t is not task and t.model}
        pod = next((p for p in free if _fits(task, p)), None) or next(
            (p for p in free if not any(same_checkpoint(m, p.model) for m in wanted)), free[0]
        )
        take(task, pod)
    return plan


def queue_positions(tasks: list[QueuedTask]) -> dict[str, int]:
    """1-based place of each queued task in dispatch order (affinity aside: it only ever reorders within a window)."""
    return {task.name: index for index, task in enumerate(queue_order(tasks), start=1)}


def queue_summary(tasks: list[QueuedTask], head_length: int) -> dict[str, object]:
    """The runtime status's `queue`: the head of the queue and the count per checkpoint. Computed from the list the
    operator already has, and written only when it changes, so queue positions cost no write per task."""
    by_model: dict[str, int] = {}
    for task in tasks:
        by_model[task.model or ""] = by_model.get(task.model or "", 0) + 1
    return {
        "head": [task.name for task in queue_order(tasks)[:head_length]],
        "byModel": [{"model": model, "tasks": count} for model, count in sorted(by_model.items())],
    }
