from sdtask.checkpoints import checkpoint_stem
from sdtask.routing import Route, RouteError, RuntimeInfo, route_task

RUNTIMES = [
    RuntimeInfo("sd15", dynamic=False, checkpoint="v1-5-pruned-emaonly.safetensors"),
    RuntimeInfo("sdxl", dynamic=False, checkpoint="sdxl.safetensors"),
    RuntimeInfo("any", dynamic=True, checkpoint=None),
]


def test_checkpoint_names_in_all_their_forms_are_one() -> None:
    assert checkpoint_stem("v1-5.safetensors [6ce0161689]") == checkpoint_stem("v1-5") == "v1-5"
    assert checkpoint_stem("/models/Stable-diffusion/v1-5.ckpt") == "v1-5"
    assert checkpoint_stem("sd-v1.5") == "sd-v1.5"  # a dot in a name is no extension


def test_routes_by_name_with_the_static_checkpoint() -> None:
    assert route_task("sd15", None, RUNTIMES) == Route("sd15", "v1-5-pruned-emaonly.safetensors")


def test_unknown_runtime_is_an_error_not_a_drop() -> None:
    result = route_task("nope", None, RUNTIMES)
    assert isinstance(result, RouteError) and result.reason == "UnknownRuntime" and "'nope'" in result.message


def test_static_runtime_refuses_another_model() -> None:
    result = route_task("sd15", "sdxl.safetensors", RUNTIMES)
    assert isinstance(result, RouteError) and result.reason == "ModelNotServed"


def test_dynamic_runtime_takes_any_model() -> None:
    assert route_task("any", "foo.safetensors", RUNTIMES) == Route("any", "foo.safetensors")


def test_legacy_routing_prefers_the_static_runtime_serving_the_checkpoint() -> None:
    assert route_task("", "sdxl.safetensors [123abc]", RUNTIMES) == Route("sdxl", "sdxl.safetensors")


def test_legacy_routing_falls_back_to_a_dynamic_runtime() -> None:
    assert route_task("", "other.safetensors", RUNTIMES) == Route("any", "other.safetensors")


def test_legacy_routing_without_any_candidate_fails() -> None:
    result = route_task("", "other", RUNTIMES[:2])
    assert isinstance(result, RouteError) and result.reason == "NoRuntimeForModel"


def test_a_runtime_being_deleted_takes_no_new_task() -> None:
    from sdtask.routing import Route, RouteError, RuntimeInfo, route_task

    going = RuntimeInfo("a-going", dynamic=False, checkpoint="m.safetensors", deleting=True)
    staying = RuntimeInfo("b-staying", dynamic=True, checkpoint=None)
    routed = route_task("", "m.safetensors", [going, staying])
    assert isinstance(routed, Route) and routed.runtime == "b-staying"
    refused = route_task("a-going", None, [going, staying])
    assert isinstance(refused, RouteError) and refused.reason == "RuntimeDeleted"
