"""Crash leftovers the operator finishes: a dispatch cut between its two writes, a callback nobody delivers."""

from __future__ import annotations

import dataclasses
import datetime as dt

from sdtask.callbacks import CallbackPolicy
from sdtask.constants import Phase
from sdtask.controller.recovery import callback_abandoned, stranded
from sdtask.controller.views import TaskView, task_view

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


def view(
    phase: str,
    pod: str = "",
    label: str = "",
    callback: str = "",
    finished_ago: float | None = None,
    scheduled_ago: float | None = None,
) -> TaskView:
    status: dict[str, object] = {"phase": phase, "pod": pod, "callback": {"state": callback}}
    if scheduled_ago is not None:
        since = (NOW - dt.timedelta(seconds=scheduled_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")
        status["conditions"] = [{"type": "Scheduled", "status": "True", "lastTransitionTime": since}]
    if finished_ago is not None:
        status["completionTime"] = (NOW - dt.timedelta(seconds=finished_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")
    labels = {"sdtask.io/pod": label} if label else {}
    return task_view({"metadata": {"name": "t", "namespace": "n", "labels": labels}, "spec": {}, "status": status})


def test_a_dispatch_cut_between_its_writes_is_recognised() -> None:
    assert stranded(view("Scheduled", pod="p1", scheduled_ago=60), NOW)  # status written, label not
    assert stranded(view("Scheduled", pod="p1", label="p0", scheduled_ago=60), NOW)  # a stale label, earlier attempt
    assert stranded(view("Scheduled", pod="p1"), NOW)  # no Scheduled condition to tell when: labelled
    assert not stranded(view("Scheduled", pod="p1", label="p1", scheduled_ago=60), NOW)
    assert not stranded(view("Running", pod="p1", scheduled_ago=60), NOW)
    assert not stranded(view("Pending"), NOW)


def test_a_dispatch_in_flight_is_left_to_finish_its_second_write() -> None:
    # The index may show the status write before the label write lands: that is no crash leftover.
    assert not stranded(view("Scheduled", pod="p1", scheduled_ago=1), NOW)


def test_a_callback_is_redelivered_only_once_every_sender_gave_up() -> None:
    policy = CallbackPolicy(deadline=300)
    assert callback_abandoned(view("Succeeded", callback="Pending", finished_ago=361), NOW, policy)
    assert not callback_abandoned(view("Succeeded", callback="Pending", finished_ago=100), NOW, policy)
    assert not callback_abandoned(view("Succeeded", callback="Delivered", finished_ago=9999), NOW, policy)
    assert not callback_abandoned(view("Failed", callback="Failed", finished_ago=9999), NOW, policy)
    assert callback_abandoned(view("Failed", callback="Pending", finished_ago=9999), NOW, policy)
    running = view("Running", callback="Pending", finished_ago=9999)
    assert not callback_abandoned(running, NOW, policy) and dataclasses.is_dataclass(running)
    assert view("Succeeded").phase == Phase.SUCCEEDED
