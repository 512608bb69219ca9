"""The operator's admission queue: new tasks wait there (not in kopf's workers) and every one is admitted or failed."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from sdtask.controller.admission_queue import MAX_ADMISSION_FAILURES, AdmissionQueue


def body(name: str, version: str = "1") -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": name, "uid": f"uid-{name}", "resourceVersion": version}}


class Recorder:
    def __init__(self, fail_first: int = 0) -> None:
        self.admitted: list[tuple[str, str]] = []
        self.given_up: list[tuple[str, str]] = []
        self.fail_first = fail_first
        self.calls = 0
        self.done = asyncio.Event()

    async def admit(self, task: dict[str, Any]) -> None:
        self.calls += 1
        if self.calls <= self.fail_first:
            raise RuntimeError(f"boom {self.calls}")
        self.admitted.append((task["metadata"]["name"], task["metadata"]["resourceVersion"]))
        self.done.set()

    async def give_up(self, task: dict[str, Any], error: Exception) -> None:
        self.given_up.append((task["metadata"]["name"], str(error)))
        self.done.set()


def run(scenario: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(scenario(), 10))


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.001)


def test_tasks_are_admitted_in_arrival_order_with_their_latest_body_and_deleted_ones_not_at_all() -> None:
    async def scenario() -> list[tuple[str, str]]:
        recorder = Recorder()
        queue = AdmissionQueue(recorder.admit, recorder.give_up, workers=1, retry_base_seconds=0.01)
        for name in ("a", "b", "c"):
            queue.submit(f"uid-{name}", body(name))
        queue.submit("uid-a", body("a", "2"))  # a newer event of a waiting task: its place in line, its new body
        queue.drop("uid-b")  # deleted while it waited
        assert len(queue) == 2
        queue.start()
        await until(lambda: len(recorder.admitted) == 2)
        await queue.stop()
        return recorder.admitted

    assert run(scenario) == [("a", "2"), ("c", "1")]


def test_a_failed_admission_is_tried_again_after_a_backoff_and_the_queue_goes_on() -> None:
    async def scenario() -> tuple[list[tuple[str, str]], int]:
        recorder = Recorder(fail_first=2)
        queue = AdmissionQueue(recorder.admit, recorder.give_up, workers=2, retry_base_seconds=0.01)
        queue.start()
        queue.submit("uid-a", body("a"))
        await until(lambda: recorder.calls >= 1)
        queue.submit("uid-b", body("b"))
        await until(lambda: len(recorder.admitted) == 2)
        await queue.stop()
        return sorted(recorder.admitted), recorder.calls

    admitted, calls = run(scenario)
    assert admitted == [("a", "1"), ("b", "1")]
    assert calls == 4


def test_a_task_whose_admission_keeps_failing_is_failed_with_the_last_error() -> None:
    async def scenario() -> tuple[list[tuple[str, str]], list[tuple[str, str]], int]:
        recorder = Recorder(fail_first=100)
        queue = AdmissionQueue(recorder.admit, recorder.give_up, workers=1, retry_base_seconds=0.001)
        queue.start()
        queue.submit("uid-a", body("a"))
        await asyncio.wait_for(recorder.done.wait(), 5)
        await queue.stop()
        return recorder.admitted, recorder.given_up, recorder.calls

    admitted, given_up, calls = run(scenario)
    assert admitted == []
    assert given_up == [("a", f"boom {MAX_ADMISSION_FAILURES}")]
    assert calls == MAX_ADMISSION_FAILURES


def test_a_task_deleted_during_its_backoff_is_not_tried_again() -> None:
    async def scenario() -> int:
        recorder = Recorder(fail_first=1)
        queue = AdmissionQueue(recorder.admit, recorder.give_up, workers=1, retry_base_seconds=0.05)
        queue.start()
        queue.submit("uid-a", body("a"))
        await until(lambda: recorder.calls == 1)
        queue.drop("uid-a")
        queue.submit("uid-b", body("b"))
        await until(lambda: len(recorder.admitted) == 1 and queue.retries_waiting == 0)  # a's backoff has ended
        await until(lambda: len(queue) == 0)  # a retry, had there been one, has been taken and called
        await queue.stop()
        return recorder.calls

    assert run(scenario) == 2
