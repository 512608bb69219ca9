from typing import Any

from sdtask.api import MAX_CONTENT_BYTES
from sdtask.controller.admission import Admitted, Rejected, admit
from sdtask.routing import RuntimeInfo

RUNTIMES = [RuntimeInfo("sdruntime", dynamic=False, checkpoint="v1-5.safetensors")]


def spec(**content: Any) -> dict[str, Any]:
    metadata = {"id": "t", "runtime": "sdruntime", "tasktype": "text-to-image", "prefix": "out"}
    return {"task": {"metadata": metadata, "content": {"prompt": "a cat", **content}}}


def test_a_routable_task_is_admitted_with_its_model() -> None:
    assert admit(spec(), RUNTIMES) == Admitted("sdruntime", "v1-5.safetensors")


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
