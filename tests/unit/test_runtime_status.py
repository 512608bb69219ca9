import datetime as dt
from typing import Any

from sdtask.constants import Phase
from sdtask.controller.runtimes import Claim, busy_pods, pod_work, runtime_conditions
from sdtask.controller.views import PodView, task_view
from sdtask.retry import after_failed_attempt, backoff

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def pod(name: str, ready: bool = True, unschedulable: str = "") -> PodView:
    phase = "Running" if ready else "Pending"
    return PodView("ns", name, "rt", phase, ready, False, "node-1" if ready else "", None, unschedulable)


def by_type(conditions: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in conditions}


def test_an_idle_runtime_at_zero_is_ready() -> None:
    assert by_type(runtime_conditions(None, 0, [], NOW))["Ready"] == ("True", "ScaledToZero")


def test_pending_pods_without_gpus_degrade_the_runtime_with_the_scheduler_reason() -> None:
    pods = [pod("a"), pod("b"), pod("c", ready=False, unschedulable="0/3 nodes: Insufficient nvidia.com/gpu")]
    conditions = runtime_conditions(None, 3, pods, NOW)
    assert by_type(conditions)["Degraded"] == ("True", "Unschedulable")
    message = next(c["message"] for c in conditions if c["type"] == "Degraded")
    assert "no GPU capacity" in message and "Insufficient nvidia.com/gpu" in message
    assert by_type(conditions)["Ready"] == ("False", "PodsNotReady")


def test_a_pod_is_busy_while_its_task_is_scheduled_or_running_or_just_claimed() -> None:
    running = task_view({"metadata": {"name": "t"}, "status": {"phase": "Running", "pod": "p1"}})
    done = task_view({"metadata": {"name": "u"}, "status": {"phase": "Succeeded", "pod": "p2"}})
    work = pod_work([running, done], {"v": Claim("p3", None, NOW)}, {"p1": None, "p2": None, "p3": None})
    assert busy_pods(work) == {"p1", "p3"}


def test_a_pod_holds_its_running_task_and_the_one_assigned_ahead_and_will_have_that_ones_model() -> None:
    running = task_view({"metadata": {"name": "r"}, "status": {"phase": "Running", "pod": "p", "model": "a"}})
    ahead = task_view({"metadata": {"name": "s"}, "status": {"phase": "Scheduled", "pod": "p", "model": "b"}})
    work = pod_work([ahead, running], {}, {"p": "a [123]", "idle": "c"})
    assert (work["p"].load, work["p"].running, work["p"].model) == (2, "r", "b")
    assert (work["idle"].load, work["idle"].model) == (0, "c")
    # A claim (dispatched, not yet seen by the index) counts and names the model last.
    claimed = pod_work([running], {"c": Claim("p", "z", NOW)}, {"p": "a"})
    assert (claimed["p"].load, claimed["p"].model) == (2, "z")


def test_infrastructure_failures_retry_with_growing_backoff_then_fail() -> None:
    assert backoff(1, 10) == dt.timedelta(seconds=10) and backoff(3, 10) == dt.timedelta(seconds=40)
    first = after_failed_attempt(1, 2, True, NOW, 10)
    assert first.phase == Phase.PENDING and first.not_before == NOW + dt.timedelta(seconds=10)
    assert after_failed_attempt(3, 2, True, NOW, 10).phase == Phase.FAILED


def test_input_errors_never_retry() -> None:
    assert after_failed_attempt(1, 5, False, NOW).phase == Phase.FAILED


def test_a_failing_fetch_model_init_container_degrades_the_runtime_naming_the_missing_object() -> None:
    from sdtask.controller.views import pod_view

    message = "ModelMissing: checkpoint absent.safetensors not found (s3://models/ckpt/absent.safetensors)"
    body: dict[str, Any] = {
        "metadata": {"name": "p1", "namespace": "ns", "labels": {"sdtask.io/runtime": "rt"}},
        "spec": {"nodeName": "n1"},
        "status": {
            "phase": "Pending",
            "initContainerStatuses": [
                {
                    "name": "fetch-model",
                    "ready": False,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": message}},
                }
            ],
        },
    }
    failing = pod_view(body)
    assert failing.init_failure == f"fetch-model: {message}" and not failing.ready
    conditions = runtime_conditions(None, 1, [failing], NOW)
    assert by_type(conditions)["Degraded"] == ("True", "ModelMissing")
    assert "s3://models/ckpt/absent.safetensors" in next(c["message"] for c in conditions if c["type"] == "Degraded")
    completed = {**body["status"], "initContainerStatuses": [{"name": "fetch-model", "ready": True}]}
    assert pod_view({**body, "status": completed}).init_failure == ""
