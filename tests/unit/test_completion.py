import datetime as dt
from typing import Any

from sdtask.completion import Outcome, final_status
from sdtask.conditions import condition_is
from sdtask.constants import ANNOTATION_REQUEST_FORMAT, Phase

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def task(legacy: bool = False, callback: bool = False) -> dict[str, Any]:
    annotations = {ANNOTATION_REQUEST_FORMAT: "legacy"} if legacy else {}
    spec: dict[str, Any] = {"task": {"metadata": {"id": "t1", "runtime": "" if legacy else "rt", "prefix": "p"}}}
    if callback:
        spec["callback"] = {"url": "https://hooks.example.com/x"}
    return {
        "metadata": {"name": "t1", "annotations": annotations},
        "spec": spec,
        "status": {"runtime": "rt", "model": "m.safetensors", "attempts": 1},
    }


def test_success_carries_outputs_and_the_new_response_shape() -> None:
    outcome = Outcome(
        Phase.SUCCEEDED, "Completed", "1 image", "s3://b/p/t1", ["s3://b/p/t1/image-1.png"], "s3://b/p/t1/t1.out"
    )
    status = final_status(task(), outcome, NOW)
    assert status["phase"] == "Succeeded"
    assert status["response"] == {"id": "t1", "runtime": "rt", "output_location": "s3://b/p/t1"}
    assert condition_is(status["conditions"], "Succeeded") and condition_is(status["conditions"], "Failed", "False")
    assert status["callback"] == {"state": "Disabled", "attempts": 0}


def test_a_legacy_task_answers_in_the_legacy_shape() -> None:
    status = final_status(
        task(legacy=True, callback=True), Outcome(Phase.SUCCEEDED, "Completed", "", "s3://b/p/t1"), NOW
    )
    assert status["response"] == {
        "id_task": "t1",
        "sd_model_checkpoint": "m.safetensors",
        "output_location": "s3://b/p/t1",
    }
    assert status["callback"]["state"] == "Pending"


def test_a_failure_says_why_in_status_and_conditions() -> None:
    status = final_status(task(), Outcome(Phase.FAILED, "LinkFailed", "could not fetch http://x/cat.png"), NOW)
    assert (status["phase"], status["reason"]) == ("Failed", "LinkFailed")
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and "http://x/cat.png" in failed["message"]


def test_start_callback_has_the_result_callbacks_shape_with_running_status() -> None:
    from sdtask.completion import start_payload

    task = {
        "metadata": {"name": "t", "namespace": "ns"},
        "spec": {"task": {"metadata": {"id": "t-1", "runtime": "", "context": {"ticket": 7}}}},
        "status": {"runtime": "rt"},
    }
    assert start_payload(task, "pod-1", 2) == {
        "id": "t-1",
        "runtime": "rt",
        "result": None,
        "status": "Running",
        "pod": "pod-1",
        "attempt": 2,
        "output_location": "",
        "image_url": [],
        "output_url": "",
        "context": {"ticket": 7},
        "error": "",
    }
