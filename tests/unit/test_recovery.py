"""Crash leftovers the operator finishes: a callback nobody delivers."""

from __future__ import annotations

import dataclasses
import datetime as dt

from sdtask.callbacks import CallbackPolicy
from sdtask.constants import Phase
from sdtask.controller.recovery import callback_abandoned
from sdtask.controller.views import TaskView, task_view

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


def view(
    phase: str,
    pod: str = "",
    callback: str = "",
    finished_ago: float | None = None,
) -> TaskView:
    status: dict[str, object] = {"phase": phase, "pod": pod, "callback": {"state": callback}}
    if finished_ago is not None:
        status["completionTime"] = (NOW - dt.timedelta(seconds=finished_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return task_view({"metadata": {"name": "t", "namespace": "n"}, "spec": {}, "status": status})


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
