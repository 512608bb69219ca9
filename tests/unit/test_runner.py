"""The order in which an agent starts the tasks assigned to its pod."""

from __future__ import annotations

from typing import Any

from sdtask.agent.runner import run_order


def task(name: str, created: str, priority: int | None = None) -> dict[str, Any]:
    spec = {} if priority is None else {"priority": priority}
    return {"metadata": {"name": name, "creationTimestamp": created}, "spec": spec}


def test_the_agent_starts_higher_priority_tasks_first_whatever_order_they_arrived_in() -> None:
    arrived = [
        task("low", "2026-12-01T10:00:00Z", priority=-5),
        task("normal", "2026-12-01T10:00:01Z"),
        task("urgent", "2026-12-01T10:00:02Z", priority=100),
    ]
    assert [t["metadata"]["name"] for t in sorted(arrived, key=run_order)] == ["urgent", "normal", "low"]


def test_among_equal_priorities_the_older_task_starts_first() -> None:
    arrived = [task("newer", "2026-12-01T10:00:05Z", 1), task("older", "2026-12-01T10:00:01Z", 1)]
    assert [t["metadata"]["name"] for t in sorted(arrived, key=run_order)] == ["older", "newer"]
