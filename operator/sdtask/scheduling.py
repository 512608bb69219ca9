"""Which queued task goes to which pod. Pure, so the policies are tested directly.

Order: priority (higher first), then age. A pod runs one task at a time (the Web UI is not safe for concurrent
requests) but may hold a short queue of tasks assigned ahead (`IdlePod.free`), so its agent starts the next one the
moment the current one returns.

Two policies (`scheduling.policy` of a runtime):

- fifo: strict queue order; each task goes to the least loaded pod with a free slot, one with its model if any.
- switch-aware (default): built for dynamic-model runtimes, where loading a checkpoint costs tens of seconds and a
  generation a few. A pod stays on its model while that model has queued work. When a pod must switch, it takes the
  model with the most queued work per pod serving it (queued / (pods already on it + 1)), so the queue's models are
  spread over the pods instead of followed in arrival order; a pod does not switch to a model other pods already
  serve unless that gives it at least `min_switch_tasks` tasks (else it would pay a load to save less than one
  generation). Priorities stay strict: lower-priority work is only planned once the higher classes are placed. A
  task that has waited longer than `starvation_limit` is served first by any free pod, whatever that costs. Only the
  first `window` tasks of a priority class are looked at, which bounds both the reordering and the cost of a pass.
  On a static runtime every task fits every pod, and the policy is plain priority-then-age order.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum

from sdtask.checkpoints import checkpoint_stem


class Policy(StrEnum):
    SWITCH_AWARE = "switch-aware"
    FIFO = "fifo"


@dataclass(frozen=True)
class QueuedTask:
    name: str
    priority: int
    queued_at: dt.datetime
    model: str | None = None  # None: any loaded model will do
    not_before: dt.datetime | None = None  # backing off after a failed attempt


@dataclass(frozen=True)
class IdlePod:
    """A ready pod: `model` is what it will have loaded once its assigned tasks ran (the last one's model, else
    the loaded one), `load` the tasks assigned to it that have not ended, `free` how many more it may take now."""

    name: str
    model: str | None = None
    free: int = 1
    load: int = 0


@dataclass(frozen=True)
class Assignment:
    task: QueuedTask
    pod: IdlePod


def queue_position(priority: int, queued_at: dt.datetime, name: str) -> tuple[int, dt.datetime, str]:
    """The queue's order: priority first, then age, then name (a total order: passes agree on it)."""
    return -priority, queued_at, name


def _order_key(task: QueuedTask) -> tuple[int, dt.datetime, str]:
    return queue_position(task.priority, task.queued_at, task.name)


def queue_order(tasks: Iterable[QueuedTask]) -> list[QueuedTask]:
    return sorted(tasks, key=_order_key)


def eligible(tasks: Iterable[QueuedTask], now: dt.datetime) -> list[QueuedTask]:
    return [t for t in tasks if t.not_before is None or t.not_before <= now]


class _Planner:
    """The mutable bookkeeping of one planning pass: free slots, loads and future models of the pods.

    Models are compared by their normalized name (`checkpoint_stem`), computed once per name: a pass compares many.
    """

    def __init__(self, pods: list[IdlePod]) -> None:
        self.pods = {p.name: p for p in pods}
        self.free = {p.name: max(p.free, 0) for p in pods}
        self.load = {p.name: p.load for p in pods}
        self.model = {p.name: p.model for p in pods}
        self.keys: dict[str, str] = {}
        self.plan: list[Assignment] = []

    def key(self, model: str | None) -> str | None:
        if model is None:
            return None
        if model not in self.keys:
            self.keys[model] = checkpoint_stem(model)
        return self.keys[model]

    def same(self, a: str | None, b: str | None) -> bool:
        return a is not None and b is not None and self.key(a) == self.key(b)

    def fits(self, task: QueuedTask, pod: str) -> bool:
        return task.model is None or self.same(task.model, self.model[pod])

    def open_pods(self) -> list[str]:
        """Pods with a free slot, least loaded first (then by name, so plans are stable)."""
        return sorted((n for n, f in self.free.items() if f > 0), key=lambda n: (self.load[n], n))

    def take(self, task: QueuedTask, pod: str) -> None:
        self.plan.append(Assignment(task, replace(self.pods[pod], model=self.model[pod])))
        self.free[pod] -= 1
        self.load[pod] += 1
        if task.model is not None:
            self.model[pod] = task.model

    def holders(self, model: str) -> int:
        return sum(1 for m in self.model.values() if self.same(model, m))


def plan_assignments(
    tasks: list[QueuedTask],
    idle_pods: list[IdlePod],
    now: dt.datetime,
    *,
    policy: Policy = Policy.SWITCH_AWARE,
    window: int = 256,
    starvation_limit: dt.timedelta = dt.timedelta(minutes=2),
    min_switch_tasks: int = 4,
) -> list[Assignment]:
    """`idle_pods` lists every ready pod (also those without a free slot: they count as serving their model)."""
    queue = queue_order(eligible(tasks, now))
    planner = _Planner(idle_pods)
    if policy == Policy.FIFO:
        for task in queue:
            if not _fifo_step(planner, task):
                break
        return planner.plan
    # 1. Starving tasks first, each to a pod with its model when there is one.
    starving = [t for t in queue if now - t.queued_at >= starvation_limit]
    for task in starving:
        if not _fifo_step(planner, task):
            return planner.plan
    taken = {t.name for t in starving}
    # 2. Priority classes, highest first; inside each, switch-aware placement of its first `window` tasks.
    classes: dict[int, list[QueuedTask]] = {}
    for task in queue:
        if task.name not in taken:
            classes.setdefault(task.priority, []).append(task)
    for priority in sorted(classes, reverse=True):
        if not planner.open_pods():
            break
        _place_class(planner, classes[priority][:window], min_switch_tasks)
    return planner.plan


def _fifo_step(planner: _Planner, task: QueuedTask) -> bool:
    """The task to the least loaded open pod, preferring one with its model; False when no pod is open."""
    pods = planner.open_pods()
    if not pods:
        return False
    planner.take(task, next((p for p in pods if planner.fits(task, p)), pods[0]))
    return True


def _place_class(planner: _Planner, tasks: list[QueuedTask], min_switch_tasks: int) -> None:
    pending = list(tasks)  # oldest first
    while pending:
        pods = planner.open_pods()
        if not pods:
            return
        # a. A pod whose model has queued work keeps it: the least loaded such pod takes the oldest such task.
        choice = next(
            (
                (task, pod)
                for pod in pods
                for task in pending
                if task.model is not None and planner.same(task.model, planner.model[pod])
            ),
            None,
        )
        # b. A task that takes any model goes to a pod whose model no queued task wants (warm pods stay warm).
        if choice is None:
            anything = next((t for t in pending if t.model is None), None)
            if anything is not None:
                wanted = [t.model for t in pending if t.model is not None]
                unwanted = [p for p in pods if not any(planner.same(m, planner.model[p]) for m in wanted)]
                choice = (anything, (unwanted or pods)[0])
        # c. A switch: the model with the most queued work per pod serving it, loaded by an idle pod. A pod with work
        #    assigned decides later, when it knows more of the queue (a load can't overlap a generation anyway).
        idle = [p for p in pods if planner.load[p] == 0]
        if choice is None and idle:
            choice = _switch(planner, pending, idle, min_switch_tasks)
        if choice is None:
            return
        task, pod = choice
        planner.take(task, pod)
        pending.remove(task)


def _switch(
    planner: _Planner, pending: list[QueuedTask], pods: list[str], min_switch_tasks: int
) -> tuple[QueuedTask, str] | None:
    groups: list[list[QueuedTask]] = []  # tasks per model, in order of their oldest task
    for task in pending:
        group = next((g for g in groups if planner.same(g[0].model, task.model)), None)
        if group is None:
            groups.append([task])
        else:
            group.append(task)
    best: tuple[float, list[QueuedTask]] | None = None
    for group in groups:
        assert group[0].model is not None  # model-less tasks were placed in step b
        holders = planner.holders(group[0].model)
        per_pod = len(group) / (holders + 1)
        if holders and per_pod < min_switch_tasks:
            continue  # pods already on this model will serve it sooner than a load would
        if best is None or per_pod > best[0]:
            best = (per_pod, group)
    if best is None:
        return None
    return best[1][0], pods[0]


@dataclass(frozen=True)
class AheadTask:
    """A task assigned to a pod that is still busy with another one: it has not started yet."""

    name: str
    pod: str
    priority: int
    assigned_at: dt.datetime


def reclaims(queued: list[QueuedTask], ahead: list[AheadTask], open_slots: int, now: dt.datetime) -> list[AheadTask]:
    """Tasks assigned ahead to take back, so that no queued task waits behind a lower-priority one.

    The first `open_slots` queued tasks (by priority) get a free slot anyway; each one after that takes back the
    lowest-priority task assigned ahead (the most recently assigned among equals) that ranks below it. Pure.
    """
    waiting = queue_order(eligible(queued, now))[max(open_slots, 0) :]
    candidates = sorted(ahead, key=lambda a: (a.priority, -a.assigned_at.timestamp(), a.name))
    taken: list[AheadTask] = []
    for task in waiting:
        if not candidates or candidates[0].priority >= task.priority:
            break
        taken.append(candidates.pop(0))
    return taken


def queue_positions(tasks: list[QueuedTask]) -> dict[str, int]:
    """1-based place of each queued task in dispatch order (affinity aside: it only ever reorders within a window)."""
    return {task.name: index for index, task in enumerate(queue_order(tasks), start=1)}


def queue_summary(head: list[QueuedTask], by_model: Mapping[str, int]) -> dict[str, object]:
    """The runtime status's `queue`: the head of the queue (any tasks that hold it, in any order: the head is picked
    by the caller, from a queue that may hold thousands) and the count per checkpoint. Written only when it changes,
    so queue positions cost no write per task."""
    return {
        "head": [task.name for task in queue_order(head)],
        "byModel": [{"model": model, "tasks": count} for model, count in sorted(by_model.items())],
    }
