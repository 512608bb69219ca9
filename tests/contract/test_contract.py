"""The contract: the stand-in's answers and the agent's requests fit the real Web UI API's models (models.py here,
re-expressed from AUTOMATIC1111 v1.10 modules/api/models.py), so neither can drift from the real server unnoticed."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydantic
import pytest
import yaml

from sdtask.clients.webui import api_path
from sdtask.request import TASKTYPE_ENDPOINTS, legacy_to_task, prepare_payload
from sdtask.standin import StandinWebUI, write_checkpoint
from sdtask.standin.images import render_png
from sdtask.standin.scripts import runner
from tests.contract.models import (
    ExtrasBatchImagesRequest,
    ExtrasSingleImageResponse,
    GenerationResponse,
    check_request,
    check_response,
)
from tests.standin_support import contract_client

REPO_ROOT = Path(__file__).resolve().parents[2]
PNG = base64.b64encode(render_png(b"c" * 32, 16, 16, {"endpoint": "test"})).decode()


@pytest.fixture
def client(tmp_path: Path) -> Iterator[httpx.Client]:
    write_checkpoint(tmp_path / "models" / "Stable-diffusion" / "alpha.safetensors")
    write_checkpoint(tmp_path / "models" / "Stable-diffusion" / "beta.safetensors")
    with StandinWebUI(tmp_path) as webui, contract_client(webui.url) as own:
        assert webui.wait_until_loaded()
        yield own


# --- every answer of the stand-in fits the real models -----------------------------------------------------------

CALLS: list[tuple[str, str, Any]] = [
    ("GET", "/internal/ping", None),
    ("GET", "/sdapi/v1/options", None),
    ("POST", "/sdapi/v1/options", {"sd_model_checkpoint": "beta.safetensors"}),
    ("POST", "/sdapi/v1/options", {"sd_model_checkpoint": "missing"}),
    ("POST", "/sdapi/v1/options", {"no_such_option": 1}),
    ("GET", "/sdapi/v1/sd-models", None),
    ("POST", "/sdapi/v1/refresh-checkpoints", None),
    ("POST", "/sdapi/v1/unload-checkpoint", None),
    ("POST", "/sdapi/v1/reload-checkpoint", None),
    ("GET", "/sdapi/v1/progress", None),
    ("POST", "/sdapi/v1/interrupt", None),
    ("GET", "/sdapi/v1/memory", None),
    ("GET", "/sdapi/v1/scripts", None),
    ("GET", "/sdapi/v1/script-info", None),
    ("POST", "/sdapi/v1/txt2img", {"prompt": "p", "width": 8, "height": 8, "batch_size": 2, "save_images": True}),
    ("POST", "/sdapi/v1/txt2img", {"alwayson_scripts": {"uid": {}}}),
    ("POST", "/sdapi/v1/txt2img", {"width": "wide"}),
    ("POST", "/sdapi/v1/txt2img", {"alwayson_scripts": {"AnimateDiff": {"args": [{"enable": True, "batch_size": 2}]}}}),
    ("POST", "/sdapi/v1/img2img", {"init_images": [PNG], "width": 8, "height": 8}),
    ("POST", "/sdapi/v1/img2img", {"prompt": "no init images"}),
    ("POST", "/sdapi/v1/img2img", {"init_images": ["not an image"]}),
    ("POST", "/sdapi/v1/extra-single-image", {"image": PNG}),
    ("POST", "/sdapi/v1/extra-single-image", {"image": PNG, "upscaling_resize": 0.5}),
    ("POST", "/sdapi/v1/extra-batch-images", {"imageList": [{"data": PNG, "name": "a.png"}]}),
    ("POST", "/sdapi/v1/extra-batch-images", {"imageList": [{"data": PNG}]}),
    ("GET", "/sdapi/v1/no-such-route", None),
    ("GET", "/sdapi/v1/txt2img", None),
]


@pytest.mark.parametrize(("method", "path", "body"), CALLS, ids=[f"{m} {p} {i}" for i, (m, p, _) in enumerate(CALLS)])
def test_every_answer_fits_the_real_models(client: httpx.Client, method: str, path: str, body: Any) -> None:
    # contract_client checks each answer as it arrives (check_response) and raises if it does not fit.
    response = client.request(method, path, json=body)
    assert response.status_code in (200, 401, 404, 405, 422, 500)


def test_the_models_catch_drift_in_answers() -> None:
    good = {"images": ["aGk="], "parameters": {}, "info": json.dumps({"seed": 1})}
    GenerationResponse.model_validate(good, strict=True)
    for drifted in (
        {**good, "info": {"seed": 1}},  # info as an object, not the JSON string the real server sends
        {**good, "images": [b"raw"]},
        {**good, "images": [{"data": "aGk="}]},
        {"images": ["aGk="], "info": "{}"},  # parameters missing
        {**good, "extra": 1},
    ):
        with pytest.raises(pydantic.ValidationError):
            GenerationResponse.model_validate(drifted, strict=True)
    with pytest.raises(pydantic.ValidationError):
        ExtrasSingleImageResponse.model_validate({"image": "aGk="}, strict=True)  # html_info missing
    with pytest.raises(pydantic.ValidationError):
        check_response("GET", "/sdapi/v1/sd-models", 200, json.dumps([{"title": "a", "model_name": "a"}]).encode())
    with pytest.raises(AssertionError):
        check_response("GET", "/sdapi/v1/unknown", 200, b"{}")


def test_the_models_catch_drift_in_requests() -> None:
    with pytest.raises(pydantic.ValidationError):
        ExtrasBatchImagesRequest.model_validate({"imageList": [{"data": PNG}]}, strict=True)  # FileData.name
    drifts: list[dict[str, object]] = [{"prompt": 1}, {"batch_size": "2"}, {"alwayson_scripts": []}, {"promt": "typo"}]
    for drifted in drifts:
        with pytest.raises(pydantic.ValidationError):
            check_request("/sdapi/v1/txt2img", drifted)
    with pytest.raises(pydantic.ValidationError):
        check_request("/sdapi/v1/img2img", {"init_images": PNG})  # a string, not a list


# --- what the agent sends fits the real request models -------------------------------------------------------------


def example_tasks() -> list[dict[str, Any]]:
    tasks = []
    for path in sorted((REPO_ROOT / "examples").glob("task-*.yaml")):
        tasks.append(yaml.safe_load(path.read_text())["spec"]["task"])
    return tasks


def legacy_body(task: str, **fields: Any) -> dict[str, Any]:
    """The old API's flat body, as its users send it (alwayson_scripts carries the routing keys)."""
    scripts = {"task": task, "id_task": f"{task}-1", "sd_model_checkpoint": "v1-5-pruned-emaonly.safetensors"}
    scripts.update(fields.pop("scripts", {}))
    return {"alwayson_scripts": scripts, **fields}


LEGACY_BODIES = {
    "text-to-image": legacy_body(
        "text-to-image", prompt="a cat", steps=16, width=512, n_iter=1, batch_size=1, scripts={"save_dir": "outputs"}
    ),
    "image-to-image": legacy_body(
        "image-to-image", prompt="a cat", scripts={"image_link": "https://assets.example.com/cat.png"}
    ),
    "extra-single-image": legacy_body(
        "extra-single-image", upscaling_resize=4, upscaler_1="R-ESRGAN 4x+", scripts={"image_link": "https://a/b.png"}
    ),
    "override-settings": legacy_body(
        "text-to-image", prompt="p", scripts={"override_settings": {"CLIP_stop_at_last_layers": 2}}
    ),
}
# The old API's AnimateDiff example carries `uid` (and users add `sd_vae`) among alwayson_scripts: the real server
# refuses both with 422 "Script 'uid' not found" unless the agent strips them (issue 9; the lead's agent change).
LEGACY_WITH_FOREIGN_KEYS = {
    "animatediff with uid": legacy_body(
        "text-to-image",
        prompt="a waving flag",
        steps=20,
        scripts={
            "uid": "anim-1",
            "AnimateDiff": {"args": [{"enable": True, "video_length": 16, "fps": 8, "format": ["GIF", "MP4"]}]},
        },
    ),
    "sd_vae": legacy_body("text-to-image", prompt="p", scripts={"sd_vae": "vae-ft-mse-840000-ema-pruned.safetensors"}),
}


def assert_fits(tasktype: str, content: dict[str, Any]) -> None:
    call = prepare_payload(tasktype, content)
    check_request(api_path(call.endpoint), call.payload)  # the path the agent posts to
    if call.endpoint in ("txt2img", "img2img"):
        # init_script_args: every alwayson_scripts key must be one of the runner's script titles.
        titles = {script.title.lower() for script in runner(call.endpoint)}
        unknown = [key for key in call.payload.get("alwayson_scripts") or {} if key.lower() not in titles]
        assert not unknown, f"the real server answers 422 Script {unknown[0]!r} not found"


@pytest.mark.parametrize("task", example_tasks(), ids=lambda task: task["metadata"]["id"])
def test_example_tasks_become_requests_the_real_server_accepts(task: dict[str, Any]) -> None:
    assert_fits(task["metadata"]["tasktype"], task["content"])


@pytest.mark.parametrize("name", LEGACY_BODIES)
def test_legacy_bodies_become_requests_the_real_server_accepts(name: str) -> None:
    task = legacy_to_task(LEGACY_BODIES[name])
    assert task["metadata"]["tasktype"] in TASKTYPE_ENDPOINTS
    assert_fits(task["metadata"]["tasktype"], task["content"])


@pytest.mark.parametrize("name", LEGACY_WITH_FOREIGN_KEYS)
def test_legacy_bodies_with_uid_or_sd_vae_become_requests_the_real_server_accepts(name: str) -> None:
    task = legacy_to_task(LEGACY_WITH_FOREIGN_KEYS[name])
    assert_fits(task["metadata"]["tasktype"], task["content"])
