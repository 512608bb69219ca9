"""Task outcomes are counted once per task from its events, whoever wrote the final status."""

from __future__ import annotations

from typing import Any

from prometheus_client import REGISTRY

from sdtask.controller.metrics import OutcomeRecorder, observe_runtime, task_outcome


def body(uid: str, phase: str | None, **status: Any) -> dict[str, Any]:
    return {"metadata": {"uid": uid, "namespace": "m-ns", "name": uid}, "status": {"phase": phase, **status}}


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_outcome_has_runtime_reason_and_run_time() -> None:
    done = body(
        "a",
        "Failed",
        runtime="rt",
        reason="Timeout",
        startTime="2026-01-01T00:00:00Z",
        completionTime="2026-01-01T00:00:12Z",
    )
    outcome = task_outcome(done)
    assert outcome is not None
    assert (outcome.runtime, outcome.phase, outcome.reason, outcome.run_seconds) == ("rt", "Failed", "Timeout", 12.0)
    assert task_outcome(body("b", "Running")) is None


def test_each_task_and_callback_counts_once() -> None:
    recorder = OutcomeRecorder()
    labels = {"namespace": "m-ns", "runtime": "m-rt", "phase": "Succeeded", "reason": "Completed"}
    before = sample("sdtask_tasks_finished_total", **labels)
    finished = body("u1", "Succeeded", runtime="m-rt", reason="Completed", callback={"state": "Pending"})
    recorder.observe("ADDED", body("u1", "Running", runtime="m-rt"))
    recorder.observe("MODIFIED", finished)
    recorder.observe("MODIFIED", finished)  # the callback's own status write: same task, not counted again
    delivered = {**finished, "status": {**finished["status"], "callback": {"state": "Delivered"}}}
    recorder.observe("MODIFIED", delivered)
    recorder.observe("MODIFIED", delivered)
    assert sample("sdtask_tasks_finished_total", **labels) == before + 1
    assert sample("sdtask_callback_deliveries_total", namespace="m-ns", runtime="m-rt", state="Delivered") == 1


def test_queue_depth_per_model_drops_to_zero_when_nobody_waits() -> None:
    observe_runtime("m-ns", "q-rt", queued=2, running=0, desired=1, ready=0, queued_by_model={"a.safetensors": 2})
    observe_runtime("m-ns", "q-rt", queued=1, running=0, desired=1, ready=0, queued_by_model={"": 1})
    labels = {"namespace": "m-ns", "runtime": "q-rt"}
    assert sample("sdtask_runtime_queued_tasks_by_model", **labels, model="a.safetensors") == 0
    assert sample("sdtask_runtime_queued_tasks_by_model", **labels, model="") == 1
