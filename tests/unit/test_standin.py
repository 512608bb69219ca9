"""The stand-in Web UI, driven over real HTTP as the operator's agent would drive the real one."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from sdtask.devcluster.waiting import wait_for
from sdtask.standin import StandinWebUI
from sdtask.standin.fifolock import FIFOLock
from tests.standin_support import (
    Start,
    b64_png,
    decoded_images,
    metadata,
    png_size,
    running_job,
    stats,
    titles,
    wait_until,
)

# --- generation -------------------------------------------------------------------------------------------------


def test_txt2img_returns_batch_size_times_n_iter_pngs_with_a1111_shapes(client: httpx.Client) -> None:
    request = {"prompt": "a red fox", "negative_prompt": "blurry", "batch_size": 2, "n_iter": 3, "steps": 7}
    response = client.post("/sdapi/v1/txt2img", json=request)
    images = decoded_images(response)
    body = response.json()
    info = json.loads(body["info"])

    assert len(images) == 6
    assert body["parameters"] == request
    assert info["all_seeds"] == [info["seed"] + offset for offset in range(6)]
    assert info["all_subseeds"] == [info["subseed"] + offset for offset in range(6)]
    assert info["all_prompts"] == ["a red fox"] * 6
    assert (info["prompt"], info["negative_prompt"], info["steps"], info["batch_size"]) == ("a red fox", "blurry", 7, 2)
    assert (info["width"], info["height"], info["sd_model_name"]) == (512, 512, "alpha")
    assert {"sampler_name", "sd_model_hash", "job_timestamp"} <= info.keys()
    assert [png_size(image) for image in images] == [(512, 512)] * 6
    first = metadata(images[0])
    assert first == {
        "endpoint": "txt2img",
        "model": titles(client)["alpha"],
        "prompt": "a red fox",
        "seed": info["seed"],
        "index": 0,
        "input_sha256": [],
        "width": 512,
        "height": 512,
    }
    assert [metadata(image)["seed"] for image in images] == info["all_seeds"]


def test_same_request_gives_same_bytes_and_other_prompt_or_seed_differs(client: httpx.Client) -> None:
    def generate(**request: Any) -> tuple[bytes, int]:
        response = client.post("/sdapi/v1/txt2img", json={"width": 64, "height": 64, **request})
        return decoded_images(response)[0], json.loads(response.json()["info"])["seed"]

    image, seed = generate(prompt="a cat")
    assert generate(prompt="a cat") == (image, seed)
    assert generate(prompt="a dog")[0] != image
    seeded, explicit = generate(prompt="a cat", seed=1234)
    assert explicit == 1234
    assert seeded != image
    assert generate(prompt="a cat", seed=1234)[0] == seeded


def test_send_images_false_returns_info_without_images(client: httpx.Client) -> None:
    response = client.post("/sdapi/v1/txt2img", json={"send_images": False, "batch_size": 2})
    assert response.status_code == 200
    assert response.json()["images"] == []
    assert len(json.loads(response.json()["info"])["all_seeds"]) == 2


def test_img2img_records_which_init_image_was_used(client: httpx.Client) -> None:
    first, second = b64_png(b"first"), b64_png(b"second")

    def generate(init: str) -> bytes:
        return decoded_images(client.post("/sdapi/v1/img2img", json={"prompt": "p", "init_images": [init]}))[0]

    from_first = generate(first)
    assert metadata(from_first)["input_sha256"] == [hashlib.sha256(base64.b64decode(first)).hexdigest()]
    assert metadata(from_first)["endpoint"] == "img2img"
    assert generate(first) == from_first
    from_data_url = generate("data:image/png;base64," + first)
    assert metadata(from_data_url)["input_sha256"] == metadata(from_first)["input_sha256"]
    from_second = generate(second)
    assert metadata(from_second)["input_sha256"] != metadata(from_first)["input_sha256"]
    assert from_second != from_first


def test_img2img_does_not_echo_init_images_unless_asked(client: httpx.Client) -> None:
    init = b64_png(b"x")
    plain = client.post("/sdapi/v1/img2img", json={"init_images": [init]}).json()["parameters"]
    echoed = client.post("/sdapi/v1/img2img", json={"init_images": [init], "include_init_images": True}).json()
    assert plain["init_images"] is None
    assert echoed["parameters"]["init_images"] == [init]


def test_img2img_mask_is_hashed_after_the_init_images(client: httpx.Client) -> None:
    init, mask = b64_png(b"init"), b64_png(b"mask")
    image = decoded_images(client.post("/sdapi/v1/img2img", json={"init_images": [init], "mask": mask}))[0]
    digests = [hashlib.sha256(base64.b64decode(value)).hexdigest() for value in (init, mask)]
    assert metadata(image)["input_sha256"] == digests


@pytest.mark.parametrize(
    ("request_body", "where"),
    [
        ({"init_images": ["https://bucket.example/cat.png"]}, "init_images[0]"),
        ({"init_images": [b64_png(b"ok"), "bm90IGFuIGltYWdl"]}, "init_images[1]"),
        ({"init_images": [b64_png(b"ok")], "mask": "http://example/mask.png"}, "mask"),
    ],
)
def test_img2img_with_undecodable_image_is_a_500_like_the_real_server(
    client: httpx.Client, request_body: dict[str, Any], where: str
) -> None:
    response = client.post("/sdapi/v1/img2img", json=request_body)
    assert response.status_code == 500
    body = response.json()
    assert set(body) == {"error", "detail", "body", "errors"}
    assert body["errors"].startswith("Invalid encoded image")
    assert where in body["errors"]


def test_img2img_without_init_images_is_not_found(client: httpx.Client) -> None:
    response = client.post("/sdapi/v1/img2img", json={"prompt": "p"})
    assert response.status_code == 404
    assert response.json()["detail"] == "Init image not found"


# --- extras -----------------------------------------------------------------------------------------------------


def test_extra_single_image_upscales_by_the_requested_factor(client: httpx.Client) -> None:
    source = b64_png(b"small", 40, 30)
    doubled = client.post("/sdapi/v1/extra-single-image", json={"image": source})
    tripled = client.post("/sdapi/v1/extra-single-image", json={"image": source, "upscaling_resize": 3})
    assert doubled.status_code == tripled.status_code == 200
    assert png_size(base64.b64decode(doubled.json()["image"])) == (80, 60)
    assert png_size(base64.b64decode(tripled.json()["image"])) == (120, 90)
    assert "html_info" in doubled.json()
    assert metadata(base64.b64decode(doubled.json()["image"]))["input_sha256"] == [
        hashlib.sha256(base64.b64decode(source)).hexdigest()
    ]


def test_extra_single_image_reports_big_sizes_but_renders_capped(client: httpx.Client) -> None:
    response = client.post(
        "/sdapi/v1/extra-single-image", json={"image": b64_png(b"big", 1024, 512), "upscaling_resize": 4}
    )
    image = base64.b64decode(response.json()["image"])
    assert png_size(image) == (1024, 512)
    assert (metadata(image)["width"], metadata(image)["height"]) == (4096, 2048)
    assert "4096x2048" in response.json()["html_info"]


def test_extra_batch_images_returns_one_image_per_input_in_order(client: httpx.Client) -> None:
    sources = [b64_png(b"one", 10, 10), b64_png(b"two", 20, 10)]
    image_list = [{"data": data, "name": f"{index}.png"} for index, data in enumerate(sources)]
    response = client.post("/sdapi/v1/extra-batch-images", json={"imageList": image_list, "upscaling_resize": 2})
    images = decoded_images(response)
    assert [png_size(image) for image in images] == [(20, 20), (40, 20)]
    assert [metadata(image)["input_sha256"] for image in images] == [
        [hashlib.sha256(base64.b64decode(data)).hexdigest()] for data in sources
    ]
    assert "html_info" in response.json()


def test_extras_with_bad_image_is_a_500(client: httpx.Client) -> None:
    single = client.post("/sdapi/v1/extra-single-image", json={"image": "https://example.com/x.png"})
    batch = client.post("/sdapi/v1/extra-batch-images", json={"imageList": [{"data": "nope", "name": "x"}]})
    assert single.status_code == batch.status_code == 500
    assert single.json()["errors"].startswith("Invalid encoded image")


# --- queue, progress, interrupt ---------------------------------------------------------------------------------


def test_progress_reports_the_running_job_and_interrupt_returns_images_done_so_far(start: Start) -> None:
    client = start(image_delay=0.2)
    result: dict[str, Any] = {}

    def generate() -> None:
        with httpx.Client(base_url=str(client.base_url), timeout=10) as own:
            began = time.monotonic()
            result["response"] = own.post("/sdapi/v1/txt2img", json={"n_iter": 10, "steps": 20})
            result["elapsed"] = time.monotonic() - began

    worker = threading.Thread(target=generate)
    worker.start()
    wait_until(lambda: running_job(client)["job_no"] >= 1)
    progress = client.get("/sdapi/v1/progress").json()
    assert progress["state"]["job"] == "scripts_txt2img"
    assert (progress["state"]["job_count"], progress["state"]["sampling_steps"]) == (10, 20)
    assert 0.1 < progress["progress"] < 1 and progress["eta_relative"] > 0
    assert progress["current_image"] is None

    assert client.post("/sdapi/v1/interrupt").json() == {}
    worker.join(timeout=5)
    images = decoded_images(result["response"])
    assert 1 <= len(images) < 10
    assert result["elapsed"] < 1.9
    assert len(json.loads(result["response"].json()["info"])["infotexts"]) == len(images)
    assert running_job(client)["interrupted"] is True
    assert running_job(client)["job_count"] == 0
    assert stats(client)["interrupts"] == 1


def test_interrupt_while_idle_does_not_affect_the_next_job(client: httpx.Client) -> None:
    client.post("/sdapi/v1/interrupt")
    assert len(decoded_images(client.post("/sdapi/v1/txt2img", json={"batch_size": 2, "width": 8, "height": 8}))) == 2


def test_concurrent_generations_run_one_at_a_time(start: Start) -> None:
    delay = 0.25
    client = start(image_delay=delay)

    def generate(prompt: str) -> None:
        with httpx.Client(base_url=str(client.base_url), timeout=10) as own:
            assert own.post("/sdapi/v1/txt2img", json={"prompt": prompt}).status_code == 200

    workers = [threading.Thread(target=generate, args=(prompt,)) for prompt in ("first", "second")]
    began = time.monotonic()
    workers[0].start()
    wait_until(lambda: running_job(client)["job"] != "")
    workers[1].start()
    wait_until(lambda: stats(client)["requests"].get("/sdapi/v1/txt2img") == 2)
    # While one generation runs and one waits, everything else is still answered.
    assert client.get("/internal/ping").json() == {}
    for worker in workers:
        worker.join(timeout=5)
    # Side by side they would both be done after one delay; in turn it takes two.
    assert time.monotonic() - began >= 2 * delay


# --- robustness and extras --------------------------------------------------------------------------------------


def test_bad_requests_get_fastapi_style_errors_and_the_server_survives(client: httpx.Client) -> None:
    bad_json = client.post("/sdapi/v1/txt2img", content=b"{not json", headers={"Content-Type": "application/json"})
    assert bad_json.status_code == 422 and "detail" in bad_json.json()
    assert client.post("/sdapi/v1/txt2img", json=[1, 2]).status_code == 422
    assert client.post("/sdapi/v1/txt2img", content=b"").status_code == 422
    wrong_type = client.post("/sdapi/v1/txt2img", json={"width": "wide"})
    assert wrong_type.status_code == 422 and wrong_type.json()["detail"][0]["loc"] == ["body", "width"]
    assert client.post("/sdapi/v1/txt2img", json={"batch_size": 1000}).status_code == 422
    assert client.post("/sdapi/v1/options", content=b"\xff\xfe").status_code == 422
    assert client.get("/sdapi/v1/nothing-here").status_code == 404
    assert client.get("/sdapi/v1/nothing-here").json() == {"detail": "Not Found"}
    assert client.get("/sdapi/v1/txt2img").status_code == 405
    assert client.get("/internal/ping").json() == {}


def test_stats_count_requests_per_path(client: httpx.Client) -> None:
    client.get("/internal/ping")
    client.get("/internal/ping")
    client.get("/sdapi/v1/memory")
    counted = stats(client)
    assert counted["requests"]["/internal/ping"] == 2
    assert counted["requests"]["/sdapi/v1/memory"] == 1
    assert counted["loaded_model"] == titles(client)["alpha"]


def test_url_and_context_manager(data_dir: Path) -> None:
    with StandinWebUI(data_dir) as webui:
        assert webui.url.startswith("http://127.0.0.1:")
        assert httpx.get(webui.url + "/internal/ping").json() == {}
    with pytest.raises(RuntimeError):
        _ = webui.url


def test_the_stand_in_queue_lock_serves_waiting_calls_in_the_order_they_came() -> None:
    """modules/fifo_lock.py: calls queued behind a running one run first come, first served."""
    lock = FIFOLock()
    order: list[int] = []
    lock.acquire()
    threads = []
    for index in range(5):
        thread = threading.Thread(target=_take, args=(lock, order, index))
        thread.start()
        wait_for(partial(_waiting, lock, index + 1), 5, f"call {index} to wait")
        threads.append(thread)
    lock.release()
    for thread in threads:
        thread.join(5)
    assert order == [0, 1, 2, 3, 4]


def _waiting(lock: FIFOLock, count: int) -> bool:
    return lock.waited == count


def _take(lock: FIFOLock, order: list[int], index: int) -> None:
    with lock:
        order.append(index)
