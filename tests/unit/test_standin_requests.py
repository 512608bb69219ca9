"""Request checks of the stand-in that follow the real Web UI v1.10 (modules/api/api.py, modules/api/models.py,
modules/sd_samplers.py, modules/processing.py): scripts, samplers, extras fields, grids."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.standin_support import b64_png, decoded_images, metadata, png_size

SMALL = {"width": 8, "height": 8}


def info(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    value: dict[str, Any] = json.loads(response.json()["info"])
    return value


# --- scripts ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["uid", "sd_vae", "sd_model_checkpoint", "ControlNet"])
def test_alwayson_scripts_key_that_is_no_script_is_a_422(client: httpx.Client, key: str) -> None:
    response = client.post("/sdapi/v1/txt2img", json={**SMALL, "alwayson_scripts": {key: {"args": []}}})
    assert response.status_code == 422
    assert response.json() == {
        "error": "HTTPException",
        "detail": f"Script '{key}' not found",
        "body": "",
        "errors": f"422: Script '{key}' not found",
    }


def test_script_titles_match_case_insensitively_and_selectable_ones_are_refused(client: httpx.Client) -> None:
    for key in ("AnimateDiff", "animatediff", "Refiner", "seed"):
        ok = client.post("/sdapi/v1/txt2img", json={**SMALL, "alwayson_scripts": {key: {"args": []}}})
        assert ok.status_code == 200, key
    selectable = client.post("/sdapi/v1/txt2img", json={**SMALL, "alwayson_scripts": {"X/Y/Z plot": {}}})
    assert selectable.status_code == 422
    assert selectable.json()["detail"] == "Cannot have a selectable script in the always on scripts params"
    unknown = client.post("/sdapi/v1/txt2img", json={**SMALL, "script_name": "no such script"})
    assert (unknown.status_code, unknown.json()["detail"]) == (422, "Script 'no such script' not found")
    img2img_only = client.post("/sdapi/v1/txt2img", json={**SMALL, "script_name": "Loopback"})
    assert img2img_only.status_code == 422


def test_scripts_and_script_info_list_the_stand_ins_scripts(client: httpx.Client) -> None:
    scripts = client.get("/sdapi/v1/scripts").json()
    assert "animatediff" in scripts["txt2img"] and "animatediff" in scripts["img2img"]
    assert "x/y/z plot" in scripts["txt2img"] and "loopback" not in scripts["txt2img"]
    assert "controlnet" not in scripts["txt2img"]
    described = client.get("/sdapi/v1/script-info").json()
    assert {"name": "animatediff", "is_alwayson": True, "is_img2img": False, "args": []} in described


# --- samplers -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_fields", "used"),
    [
        ({}, "Euler"),  # sampler_index's API default
        ({"sampler_name": "Euler a"}, "Euler a"),
        ({"sampler_name": "DPM++ 2M Karras"}, "DPM++ 2M"),  # the scheduler label is split off
        ({"sampler_index": "DDIM"}, "DDIM"),
        ({"sampler_name": "No Such Sampler"}, "DPM++ 2M"),  # unknown: the default sampler, no error
        ({"sampler_name": "k_euler_a"}, "DPM++ 2M"),  # aliases are not names
    ],
)
def test_samplers_resolve_like_get_sampler_and_scheduler(
    client: httpx.Client, request_fields: dict[str, Any], used: str
) -> None:
    assert info(client.post("/sdapi/v1/txt2img", json={**SMALL, **request_fields}))["sampler_name"] == used


# --- img2img ------------------------------------------------------------------------------------------------------


def test_img2img_checks_the_mask_before_scripts_and_scripts_before_init_images(client: httpx.Client) -> None:
    bad_mask = client.post(
        "/sdapi/v1/img2img", json={"init_images": ["bad"], "mask": "bad", "alwayson_scripts": {"uid": {}}}
    )
    assert (bad_mask.status_code, bad_mask.json()["detail"]) == (500, "Invalid encoded image")
    bad_script = client.post("/sdapi/v1/img2img", json={"init_images": ["bad"], "alwayson_scripts": {"uid": {}}})
    assert bad_script.status_code == 422
    assert client.post("/sdapi/v1/img2img", json={"init_images": []}).status_code == 500


# --- extras -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("factor", "kind"), [(0.5, "value_error.number.not_ge"), (9, "value_error.number.not_le")])
def test_upscaling_resize_outside_1_to_8_is_a_422(client: httpx.Client, factor: float, kind: str) -> None:
    response = client.post("/sdapi/v1/extra-single-image", json={"image": b64_png(b"x"), "upscaling_resize": factor})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert (error["loc"], error["type"]) == (["body", "upscaling_resize"], kind)


@pytest.mark.parametrize(
    ("image_list", "location"),
    [
        ([{"data": "x"}], ["body", "imageList", 0, "name"]),
        ([{"name": "a.png"}], ["body", "imageList", 0, "data"]),
        (None, ["body", "imageList"]),
    ],
)
def test_extra_batch_images_needs_data_and_name(
    client: httpx.Client, image_list: list[dict[str, str]] | None, location: list[str | int]
) -> None:
    body = {} if image_list is None else {"imageList": image_list}
    response = client.post("/sdapi/v1/extra-batch-images", json=body)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == location


# --- grids --------------------------------------------------------------------------------------------------------


def test_save_images_with_a_batch_returns_the_grid_first(client: httpx.Client) -> None:
    response = client.post("/sdapi/v1/txt2img", json={**SMALL, "batch_size": 3, "save_images": True})
    images, details = decoded_images(response), info(response)
    assert len(images) == 4
    assert details["index_of_first_image"] == 1
    assert metadata(images[0])["grid"] is True
    assert png_size(images[0]) == (24, 8)  # image_grid: 3 images in one row (the largest divisor <= sqrt(3))
    assert [metadata(image)["seed"] for image in images[1:]] == details["all_seeds"]
    assert len(details["infotexts"]) == 4


@pytest.mark.parametrize(
    "request_fields",
    [
        {"batch_size": 3},  # save_images defaults to false: do_not_save_grid
        {"batch_size": 1, "save_images": True},  # grid_only_if_multiple
        {"batch_size": 3, "save_images": True, "override_settings": {"return_grid": False}},
    ],
)
def test_no_grid_otherwise(client: httpx.Client, request_fields: dict[str, Any]) -> None:
    response = client.post("/sdapi/v1/txt2img", json={**SMALL, **request_fields})
    assert info(response)["index_of_first_image"] == 0
    assert all("grid" not in metadata(image) for image in decoded_images(response))


def test_send_images_false_still_reports_the_seeds(client: httpx.Client) -> None:
    response = client.post("/sdapi/v1/txt2img", json={**SMALL, "send_images": False, "batch_size": 2})
    assert response.json()["images"] == []
    assert len(info(response)["all_seeds"]) == 2
