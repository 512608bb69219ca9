"""Housekeeping decisions, pure: when a task's deadline has passed, when it is orphaned, when it next needs a look
(its TTL or its deadline), and the timers that hold those times. `tasks.run_due` and
`tasks.fail_orphans` act on them."""

from __future__ import annotations

import datetime as dt
import heapq
from dataclasses import dataclass, field

from sdtask.constants import FINISHED_PHASES, Phase
from sdtask.controller.views import TaskView


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
