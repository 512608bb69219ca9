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
