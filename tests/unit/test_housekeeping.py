import datetime as dt

from sdtask.controller.housekeeping import Timers, deadline_passed, next_housekeeping, orphaned
from sdtask.controller.views import TaskView, task_view

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def view(phase: str | None, **spec: object) -> TaskView:
    status = {"phase": phase, "completionTime": "2026-01-01T00:00:10Z"} if phase else {}
    return task_view(
        {
            "metadata": {"name": "t", "uid": "u", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": spec,
            "status": status,
        }
    )


def test_a_finished_task_expires_after_its_own_ttl_else_the_operators_default() -> None:
    assert next_housekeeping(view("Succeeded", ttlSecondsAfterFinished=5), 3600) == (
        T0 + dt.timedelta(seconds=15),
        "ttl",
    )
    assert next_housekeeping(view("Failed"), 3600) == (T0 + dt.timedelta(seconds=3610), "ttl")
    assert next_housekeeping(view("Succeeded"), 0) == (None, "")  # a default of 0 keeps history


def test_an_unfinished_task_with_a_deadline_is_looked_at_when_it_passes_and_others_never() -> None:
    assert next_housekeeping(view("Running", activeDeadlineSeconds=60), 3600) == (
        T0 + dt.timedelta(seconds=60),
        "deadline",
    )
    assert next_housekeeping(view("Pending"), 3600) == (None, "")


def test_timers_pop_only_what_is_due_in_time_order_and_a_reset_replaces_the_old_time() -> None:
    timers = Timers()
    for index in range(1000):
        timers.set(("ns", f"t{index}"), T0 + dt.timedelta(seconds=index), "ttl", f"u{index}")
    timers.set(("ns", "t0"), T0 + dt.timedelta(hours=1), "ttl", "u0")  # replaced: no longer due at T0
    timers.set(("ns", "t1"), None)  # cleared (the task was deleted)
    due = timers.pop_due(T0 + dt.timedelta(seconds=3.5))
    assert [key[1] for key, _, _ in due] == ["t2", "t3"]
    assert len(timers) == 997 and timers.next_at() == T0 + dt.timedelta(seconds=4)


def test_timers_pop_in_bounded_batches() -> None:
    timers = Timers()
    for index in range(600):
        timers.set(("ns", f"t{index}"), T0, "ttl", "")
    assert len(timers.pop_due(T0, limit=256)) == 256 and len(timers) == 344


def test_a_deadline_passes_only_for_an_unfinished_task_after_its_active_deadline() -> None:
    running = view("Running", activeDeadlineSeconds=60)
    assert not deadline_passed(running, T0 + dt.timedelta(seconds=60))
    assert deadline_passed(running, T0 + dt.timedelta(seconds=61))
    assert not deadline_passed(view("Succeeded", activeDeadlineSeconds=60), T0 + dt.timedelta(hours=1))
    assert not deadline_passed(view("Failed", activeDeadlineSeconds=60), T0 + dt.timedelta(hours=1))
    assert not deadline_passed(view("Running"), T0 + dt.timedelta(days=365))  # no deadline: never
    assert not deadline_passed(view(None, activeDeadlineSeconds=1), T0 + dt.timedelta(hours=1))  # not admitted yet


def queued_on(runtime: str, phase: str = "Pending") -> TaskView:
    return task_view({"metadata": {"name": "t"}, "status": {"phase": phase, "runtime": runtime}})


def test_a_queued_task_is_orphaned_when_its_runtime_is_gone_and_only_then() -> None:
    assert orphaned(queued_on("gone"), {"rt"})
    assert not orphaned(queued_on("rt"), {"rt"})
    assert not orphaned(queued_on("gone", "Running"), {"rt"})  # a running task ends through its pod, not here
    assert not orphaned(queued_on(""), {"rt"})  # not routed yet
