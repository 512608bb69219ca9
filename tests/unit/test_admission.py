import datetime as dt
from typing import Any

from sdtask.api import MAX_CONTENT_BYTES
from sdtask.controller.admission import Admitted, Rejected, admission_status, admit
from sdtask.routing import RuntimeInfo

RUNTIMES = [RuntimeInfo("sdruntime", dynamic=False, checkpoint="v1-5.safetensors")]


def spec(**content: Any) -> dict[str, Any]:
    metadata = {"id": "t", "runtime": "sdruntime", "tasktype": "text-to-image", "prefix": "out"}
    return {"task": {"metadata": metadata, "content": {"prompt": "a cat", **content}}}


def test_a_routable_task_is_admitted_with_its_model() -> None:
    assert admit(spec(), RUNTIMES) == Admitted("sdruntime", "v1-5.safetensors")


def test_an_admitted_task_is_queued_or_assigned_on_arrival_in_its_one_status_write() -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    decision = Admitted("sdruntime", "v1-5.safetensors")
    queued = admission_status(decision, now)
    assert (queued["phase"], queued["attempts"], queued["runtime"], queued["model"]) == (
        "Pending",
        0,
        "sdruntime",
        "v1-5.safetensors",
    )
    assert "pod" not in queued and queued["conditions"][0]["status"] == "False"
    assigned = admission_status(decision, now, "sdruntime-abc")
    # What the pod's agent needs in that one write: its pod, the attempt it starts, the model and runtime.
    assert (assigned["phase"], assigned["pod"], assigned["attempts"]) == ("Scheduled", "sdruntime-abc", 1)
    assert (assigned["runtime"], assigned["model"], assigned["queuedTime"]) == (
        "sdruntime",
        "v1-5.safetensors",
        "2026-01-01T00:00:00Z",
    )
    conditions = [(c["type"], c["status"], c["reason"]) for c in assigned["conditions"]]
    assert conditions == [("Scheduled", "True", "Assigned")]


def test_inline_images_past_the_cap_are_refused_with_a_hint_to_use_links() -> None:
    decision = admit(spec(init_images=["A" * MAX_CONTENT_BYTES]), RUNTIMES)
    assert isinstance(decision, Rejected) and decision.reason == "ContentTooLarge"
    assert "links" in decision.message


def test_routing_errors_become_rejections() -> None:
    decision = admit(spec(), [])
    assert isinstance(decision, Rejected) and decision.reason == "UnknownRuntime"


def nested(depth: int, kind: str = "list") -> Any:
    value: Any = "leaf"
    for level in range(depth):
        value = [value] if kind == "list" or level % 2 else {"k": value}
    return value


def test_content_nested_too_deep_is_refused_without_recursion() -> None:
    assert admit(spec(alwayson_scripts={"controlnet": {"args": nested(40)}}), RUNTIMES) == Admitted(
        "sdruntime", "v1-5.safetensors"
    )
    # 100,000 levels: far past Python's recursion limit, which json.dumps and deepcopy would hit.
    for depth, kind in ((64, "list"), (5_000, "mixed"), (100_000, "list")):
        decision = admit(spec(extra=nested(depth, kind)), RUNTIMES)
        assert isinstance(decision, Rejected) and decision.reason == "ContentTooDeep", depth
        assert "more than 64 levels" in decision.message


def test_depth_is_measured_exactly() -> None:
    from sdtask.nesting import depth_exceeds

    assert not depth_exceeds(nested(64), 64) and depth_exceeds(nested(65), 64)
    assert not depth_exceeds("scalar", 0) and depth_exceeds([], 0) and not depth_exceeds({"a": [1]}, 2)
