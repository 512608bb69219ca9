"""Request translation: routing keys, overrides, legacy bodies, response shapes; checkpoint matching and the Web UI
client (which turns a prepared call into an HTTP request)."""

from __future__ import annotations

import asyncio
import copy
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from sdtask.clients.webui import (
    Checkpoint,
    WebUIClient,
    WebUIError,
    WebUITimeout,
    WebUIUnavailable,
    api_path,
    match_checkpoint,
)
from sdtask.request import (
    ROUTING_KEYS,
    TASKTYPE_ENDPOINTS,
    PreparedCall,
    callback_payload,
    is_legacy_body,
    legacy_to_task,
    prepare_payload,
    requested_checkpoint,
    response_object,
)

CAT = "https://example.com/cat.png"


def legacy_body(**scripts: Any) -> dict[str, Any]:
    return {
        "prompt": "cat wizard",
        "steps": 16,
        "alwayson_scripts": {
            "task": "image-to-image",
            "id_task": "abc-123",
            "sd_model_checkpoint": "v1-5-pruned-emaonly.safetensors",
            "save_dir": "outputs/legacy",
            "image_link": CAT,
            **scripts,
        },
    }


# --- prepare_payload --------------------------------------------------------------------------------------------


def test_endpoints() -> None:
    assert {k: prepare_payload(k, {}).endpoint for k in TASKTYPE_ENDPOINTS} == TASKTYPE_ENDPOINTS
    assert api_path(prepare_payload("text-to-image", {}).endpoint) == "/sdapi/v1/txt2img"


def test_unknown_tasktype_is_a_value_error_listing_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown tasktype 'pipeline'.*image-to-image"):
        prepare_payload("pipeline", {})


def test_content_must_be_an_object() -> None:
    with pytest.raises(ValueError, match="must be an object"):
        prepare_payload("text-to-image", ["x"])  # type: ignore[arg-type]  # the wrong type is the case under test


def test_new_form_strips_the_checkpoint_and_keeps_real_scripts() -> None:
    controlnet = {"args": [{"image": CAT, "module": "canny"}]}
    content = {
        "prompt": "a cat",
        "init_images": [CAT],
        "alwayson_scripts": {"sd_model_checkpoint": "sdxl.safetensors", "controlnet": controlnet},
    }
    before = copy.deepcopy(content)

    call = prepare_payload("image-to-image", content)

    assert call == PreparedCall(
        endpoint="img2img",
        payload={"prompt": "a cat", "init_images": [CAT], "alwayson_scripts": {"controlnet": controlnet}},
        checkpoint="sdxl.safetensors",
    )
    assert content == before  # not mutated
    call.payload["alwayson_scripts"]["controlnet"]["args"][0]["image"] = "changed"
    assert content == before  # and not aliased


def test_legacy_body_is_stripped_merged_and_mapped() -> None:
    body = legacy_body(override_settings={"CLIP_stop_at_last_layers": 2, "eta_noise_seed_delta": 1, "x": "legacy"})
    body["override_settings"] = {"x": "top", "sd_model_checkpoint": "ignored-by-payload.safetensors"}
    task = legacy_to_task(body)

    call = prepare_payload(task["metadata"]["tasktype"], task["content"])

    assert call.endpoint == "img2img"
    assert call.checkpoint == "v1-5-pruned-emaonly.safetensors"
    assert call.payload["alwayson_scripts"] == {}
    assert not set(ROUTING_KEYS) & set(call.payload["alwayson_scripts"])
    # the legacy settings win on conflicts, as in the old queue agent (it updated the body's override_settings with
    # them); the checkpoint is switched by the agent, never through override_settings
    assert call.payload["override_settings"] == {
        "CLIP_stop_at_last_layers": 2,
        "eta_noise_seed_delta": 1,
        "x": "legacy",
    }
    assert call.payload["init_images"] == [CAT]
    assert call.payload["prompt"] == "cat wizard"


def test_checkpoint_only_override_leaves_no_override_settings() -> None:
    call = prepare_payload("text-to-image", legacy_body(override_settings={"sd_model_checkpoint": "a.ckpt"}))
    assert "override_settings" not in call.payload


def test_present_but_emptied_override_settings_stays_an_object() -> None:
    call = prepare_payload("text-to-image", {"override_settings": {"sd_model_checkpoint": "a.ckpt"}})
    assert call.payload == {"override_settings": {}}
    assert call.checkpoint == "a.ckpt"


def test_image_link_does_not_replace_given_init_images() -> None:
    body = legacy_body()
    body["init_images"] = ["https://example.com/dog.png"]
    assert prepare_payload("image-to-image", body).payload["init_images"] == ["https://example.com/dog.png"]


def test_image_link_maps_to_image_for_extra_single_image() -> None:
    call = prepare_payload("extra-single-image", legacy_body(task="extra-single-image"))
    assert call.payload["image"] == CAT
    assert "alwayson_scripts" not in call.payload  # extras have no scripts: nothing left to send


def test_image_link_list_maps_to_init_images_and_is_ignored_for_txt2img() -> None:
    links = [CAT, "s3://bucket/dog.png"]
    assert prepare_payload("image-to-image", legacy_body(image_link=links)).payload["init_images"] == links
    assert "init_images" not in prepare_payload("text-to-image", legacy_body(image_link=links)).payload
    with pytest.raises(ValueError, match="several images"):
        prepare_payload("extra-single-image", legacy_body(image_link=links))


def test_requested_checkpoint_precedence() -> None:
    scripts = {"alwayson_scripts": {"sd_model_checkpoint": "a", "override_settings": {"sd_model_checkpoint": "c"}}}
    assert requested_checkpoint({**scripts, "override_settings": {"sd_model_checkpoint": "b"}}) == "a"
    assert requested_checkpoint({"override_settings": {"sd_model_checkpoint": "b"}, **_legacy_override("c")}) == "b"
    assert requested_checkpoint(_legacy_override("c")) == "c"
    blank_first = {"alwayson_scripts": {"sd_model_checkpoint": "  ", "override_settings": {"sd_model_checkpoint": "c"}}}
    assert requested_checkpoint(blank_first) == "c"
    assert requested_checkpoint({"alwayson_scripts": {"sd_model_checkpoint": " "}, "override_settings": {}}) is None
    assert requested_checkpoint({"alwayson_scripts": "junk", "override_settings": None}) is None


def _legacy_override(name: str) -> dict[str, Any]:
    return {"alwayson_scripts": {"override_settings": {"sd_model_checkpoint": name}}}


# --- legacy bodies ----------------------------------------------------------------------------------------------


def test_is_legacy_body() -> None:
    assert is_legacy_body(legacy_body())
    assert is_legacy_body({"alwayson_scripts": {"id_task": "x"}})
    assert not is_legacy_body({"task": {"metadata": {}, "content": {"alwayson_scripts": {"task": "x"}}}})
    assert not is_legacy_body({"prompt": "x", "alwayson_scripts": {"controlnet": {}}})
    assert not is_legacy_body({"prompt": "x"})
    assert not is_legacy_body(["alwayson_scripts"])


def test_legacy_to_task() -> None:
    body = legacy_body()
    task = legacy_to_task(body)
    assert task == {
        "metadata": {
            "id": "abc-123",
            "runtime": "",
            "tasktype": "image-to-image",
            "prefix": "outputs/legacy",
            "context": "",
        },
        "content": body,
    }
    task["content"]["alwayson_scripts"]["id_task"] = "changed"
    assert body["alwayson_scripts"]["id_task"] == "abc-123"


@pytest.mark.parametrize(
    ("task", "tasktype"),
    [("text-to-image", "text-to-image"), ("txt2img", "text-to-image"), ("extra-batch-images", "extra-batch-images")],
)
def test_legacy_task_names(task: str, tasktype: str) -> None:
    assert legacy_to_task(legacy_body(task=task))["metadata"]["tasktype"] == tasktype


def test_legacy_defaults_prefix_and_accepts_checkpoint_in_override_settings() -> None:
    body = legacy_body(save_dir="", id_task=42)
    del body["alwayson_scripts"]["sd_model_checkpoint"]
    body["override_settings"] = {"sd_model_checkpoint": "sdxl.safetensors"}
    metadata = legacy_to_task(body)["metadata"]
    assert (metadata["prefix"], metadata["id"]) == ("output", "42")
    assert legacy_to_task(legacy_body(save_dir="team/out/"))["metadata"]["prefix"] == "team/out"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"id_task": None}, "alwayson_scripts.id_task is missing"),
        ({"id_task": "a/b"}, "id_task must not contain '/'"),
        ({"task": None}, "alwayson_scripts.task is missing"),
        ({"task": "upscale"}, "alwayson_scripts.task 'upscale' is unknown"),
        ({"sd_model_checkpoint": None}, "sd_model_checkpoint is missing"),
        ({"save_dir": "../x"}, "save_dir must not contain"),
    ],
)
def test_legacy_errors_name_the_field(change: dict[str, Any], message: str) -> None:
    body = legacy_body()
    for key, value in change.items():
        if value is None:
            del body["alwayson_scripts"][key]
        else:
            body["alwayson_scripts"][key] = value
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        legacy_to_task(body)


def test_legacy_without_scripts() -> None:
    with pytest.raises(ValueError, match="alwayson_scripts is missing"):
        legacy_to_task({"prompt": "x"})


# --- responses --------------------------------------------------------------------------------------------------

METADATA = {"id": "t1", "runtime": "sd15", "tasktype": "text-to-image", "prefix": "output", "context": {"k": [1]}}


def test_response_objects() -> None:
    location = "s3://bucket/output/t1"
    assert response_object(METADATA, location, legacy=False, checkpoint="x") == {
        "id": "t1",
        "runtime": "sd15",
        "output_location": location,
    }
    assert response_object(METADATA, location, legacy=True, checkpoint="v1-5.safetensors") == {
        "id_task": "t1",
        "sd_model_checkpoint": "v1-5.safetensors",
        "output_location": location,
    }


def test_callback_payload_success_and_failure() -> None:
    images = ["s3://bucket/output/t1/image-1.png"]
    ok = callback_payload(METADATA, output_location="s3://bucket/output/t1", image_urls=images, output_url="s3://o")
    assert ok == {
        "id": "t1",
        "runtime": "sd15",
        "result": True,
        "output_location": "s3://bucket/output/t1",
        "image_url": images,
        "output_url": "s3://o",
        "context": {"k": [1]},
        "error": "",
    }
    failed = callback_payload(
        {**METADATA, "runtime": ""}, output_location="", image_urls=[], output_url="", error="boom", runtime="any"
    )
    assert (failed["result"], failed["error"], failed["runtime"]) == (False, "boom", "any")


# --- checkpoint matching ----------------------------------------------------------------------------------------

V15 = Checkpoint(
    "v1-5-pruned-emaonly.safetensors [6ce0161689]",
    "v1-5-pruned-emaonly",
    "/m/v1-5-pruned-emaonly.safetensors",
    sha256="6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa",
    shorthash="6ce0161689",
)
SDXL = Checkpoint(
    "xl/sdxl_base.safetensors [31e35c80fc]", "xl_sdxl_base", "/m/xl/sdxl_base.safetensors", shorthash="31e35c80fc"
)
NOHASH = Checkpoint("plain.ckpt", "plain", "C:\\models\\plain.ckpt")
AVAILABLE = [V15, SDXL, NOHASH]


@pytest.mark.parametrize(
    ("requested", "expected"),
    [
        ("v1-5-pruned-emaonly.safetensors [6ce0161689]", V15),
        ("v1-5-pruned-emaonly.safetensors", V15),
        ("v1-5-pruned-emaonly", V15),
        ("xl/sdxl_base.safetensors", SDXL),
        ("sdxl_base.safetensors", SDXL),
        ("xl_sdxl_base", SDXL),
        ("xl/sdxl_base", SDXL),
        ("plain.ckpt", NOHASH),
        ("plain.ckpt [abcdef0123]", NOHASH),
        ("v1-5-pruned-emaonly.safetensors [deadbeef00]", None),
        ("v1-5", None),
        ("", None),
        ("missing.safetensors", None),
    ],
)
def test_match_checkpoint(requested: str, expected: Checkpoint | None) -> None:
    assert match_checkpoint(requested, AVAILABLE) == expected


def test_exact_title_beats_a_looser_match_earlier_in_the_list() -> None:
    other = Checkpoint("a.safetensors [1111111111]", "a", "/m/a.safetensors")
    exact = Checkpoint("b/a.safetensors [2222222222]", "b_a", "/m/b/a.safetensors")
    assert match_checkpoint("b/a.safetensors [2222222222]", [other, exact]) is exact
    assert match_checkpoint("a.safetensors", [exact, other]) is other


# --- Web UI client against a local server -----------------------------------------------------------------------


class FakeWebUI:
    """A tiny stand-in speaking the shapes of the AUTOMATIC1111 API."""

    def __init__(self) -> None:
        self.loaded = V15.title
        self.requests: list[tuple[str, str, Any]] = []
        self.release = threading.Event()

    def handle(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        self.requests.append((method, path, body))
        routes: dict[tuple[str, str], Any] = {
            ("GET", "/sdapi/v1/sd-models"): lambda: (200, [_model_item(c) for c in AVAILABLE]),
            ("GET", "/sdapi/v1/memory"): lambda: (200, {"ram": {}, "cuda": {}}),
            ("GET", "/sdapi/v1/options"): lambda: (200, {"sd_model_checkpoint": self.loaded, "samples_format": "png"}),
            ("POST", "/sdapi/v1/options"): lambda: self._switch(body),
            ("POST", "/sdapi/v1/refresh-checkpoints"): lambda: (200, None),
            ("POST", "/sdapi/v1/interrupt"): lambda: (200, None),
            ("POST", "/sdapi/v1/txt2img"): lambda: (200, {"images": ["aGk="], "parameters": body, "info": "{}"}),
            ("POST", "/sdapi/v1/img2img"): lambda: (
                422,
                {"detail": [{"loc": ["body", "init_images"], "msg": "field required", "type": "value_error"}]},
            ),
            ("POST", "/sdapi/v1/extra-single-image"): lambda: (
                500,
                {"error": "OSError", "detail": "", "body": "", "errors": "cannot identify image file"},
            ),
            ("POST", "/sdapi/v1/extra-batch-images"): self._hang,
        }
        route = routes.get((method, path))
        return route() if route else (404, {"detail": "Not Found"})

    def _switch(self, body: Any) -> tuple[int, Any]:
        if match_checkpoint(body["sd_model_checkpoint"], AVAILABLE) is None:
            return 500, {"error": "RuntimeError", "detail": "", "errors": "model 'x' not found"}
        self.loaded = body["sd_model_checkpoint"]
        return 200, None

    def _hang(self) -> tuple[int, Any]:
        self.release.wait(timeout=10)  # released by the fixture: the client times out first
        return 200, {}


def _model_item(checkpoint: Checkpoint) -> dict[str, Any]:
    return {
        "title": checkpoint.title,
        "model_name": checkpoint.model_name,
        "hash": checkpoint.shorthash,
        "sha256": checkpoint.sha256,
        "filename": checkpoint.filename,
        "config": None,
    }


@pytest.fixture
def webui() -> Iterator[tuple[FakeWebUI, str]]:
    fake = FakeWebUI()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            status, payload = fake.handle(self.command, self.path, json.loads(raw) if raw else None)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _serve

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield fake, f"http://127.0.0.1:{server.server_address[1]}/"
    fake.release.set()
    server.shutdown()
    server.server_close()


def test_webui_checkpoints_and_switch(webui: tuple[FakeWebUI, str]) -> None:
    fake, url = webui

    async def scenario() -> tuple[list[Checkpoint], str | None, str | None, bool]:
        async with WebUIClient(url) as client:
            available = await client.list_checkpoints()
            before = await client.loaded_checkpoint()
            await client.refresh_checkpoints()
            await client.switch_checkpoint(SDXL.title)
            return available, before, await client.loaded_checkpoint(), await client.ping()

    available, before, after, alive = asyncio.run(scenario())
    assert available == AVAILABLE
    assert (before, after, alive) == (V15.title, SDXL.title, True)
    assert ("POST", "/sdapi/v1/options", {"sd_model_checkpoint": SDXL.title}) in fake.requests


def test_webui_switch_to_a_missing_model_reports_the_server_text(webui: tuple[FakeWebUI, str]) -> None:
    _, url = webui

    async def scenario() -> None:
        async with WebUIClient(url) as client:
            await client.switch_checkpoint("nope.safetensors")

    with pytest.raises(WebUIError, match="model 'x' not found") as caught:
        asyncio.run(scenario())
    assert caught.value.status == 500


def test_webui_generate(webui: tuple[FakeWebUI, str]) -> None:
    fake, url = webui

    async def scenario() -> dict[str, Any]:
        async with WebUIClient(url) as client:
            return await client.generate("txt2img", {"prompt": "a cat"}, timeout=5)

    assert asyncio.run(scenario())["images"] == ["aGk="]
    assert fake.requests[-1] == ("POST", "/sdapi/v1/txt2img", {"prompt": "a cat"})


@pytest.mark.parametrize(
    ("endpoint", "status", "message"),
    [
        ("img2img", 422, "body.init_images: field required"),
        ("extra-single-image", 500, "cannot identify image file"),
        ("nope", 404, "Not Found"),
    ],
)
def test_webui_errors_carry_status_and_server_message(
    webui: tuple[FakeWebUI, str], endpoint: str, status: int, message: str
) -> None:
    _, url = webui

    async def scenario() -> None:
        async with WebUIClient(url) as client:
            await client.generate(endpoint, {}, timeout=5)

    with pytest.raises(WebUIError) as caught:
        asyncio.run(scenario())
    assert (caught.value.status, caught.value.message) == (status, message)


def test_webui_timeout_then_interrupt(webui: tuple[FakeWebUI, str]) -> None:
    fake, url = webui

    async def scenario() -> bool:
        async with WebUIClient(url) as client:
            with pytest.raises(WebUITimeout, match=r"extra-batch-images timed out after 0\.3s"):
                await client.generate("extra-batch-images", {}, timeout=0.3)
            return await client.interrupt()

    assert asyncio.run(scenario()) is True
    assert fake.requests[-1][:2] == ("POST", "/sdapi/v1/interrupt")


def test_webui_unreachable() -> None:
    async def scenario() -> tuple[bool, bool]:
        async with WebUIClient(f"http://127.0.0.1:{_closed_port()}") as client:
            with pytest.raises(WebUIUnavailable, match="ConnectError"):
                await client.list_checkpoints()
            return await client.ping(), await client.interrupt()

    assert asyncio.run(scenario()) == (False, False)


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- what the real Web UI refuses: legacy keys that are no script titles -------------------------------------------


def test_legacy_uid_and_sd_vae_are_stripped_and_sd_vae_becomes_a_setting() -> None:
    """The real server answers 422 "Script 'uid' not found" for any alwayson_scripts key that is no script title;
    the old queue agent stripped uid and sd_vae and moved sd_vae into override_settings."""
    body = legacy_body(uid="u-1", sd_vae="vae-ft-mse.safetensors", animatediff={"args": [{"enable": True}]})
    call = prepare_payload("image-to-image", legacy_to_task(body)["content"])
    assert call.payload["alwayson_scripts"] == {"animatediff": {"args": [{"enable": True}]}}
    assert call.payload["override_settings"] == {"sd_vae": "vae-ft-mse.safetensors"}


def test_the_old_extra_batch_image_spelling_is_accepted() -> None:
    assert prepare_payload("extra-batch-image", {"imageList": []}).endpoint == "extra-batch-images"
    task = legacy_to_task(
        {"alwayson_scripts": {"task": "extra-batch-image", "id_task": "b1", "sd_model_checkpoint": "x"}}
    )
    assert task["metadata"]["tasktype"] == "extra-batch-images"


def test_a_comma_separated_image_link_gives_several_init_images() -> None:
    call = prepare_payload("image-to-image", legacy_body(image_link=f"{CAT}, https://x.example/dog.png"))
    assert call.payload["init_images"] == [CAT, "https://x.example/dog.png"]


def test_a_controlnet_unit_image_link_becomes_its_input_image() -> None:
    unit = {"image_link": "https://x.example/pose.png", "module": "openpose"}
    call = prepare_payload("image-to-image", legacy_body(controlnet={"args": [unit]}))
    assert call.payload["alwayson_scripts"]["controlnet"]["args"] == [
        {"input_image": "https://x.example/pose.png", "module": "openpose"}
    ]


# --- checkpoints named as the real server accepts them -------------------------------------------------------------


@pytest.mark.parametrize("requested", ["6ce0161689", "6CE0161689", V15.sha256 or "", "6ce0161689b3853a"])
def test_a_checkpoint_may_be_named_by_its_short_hash_or_sha256(requested: str) -> None:
    assert match_checkpoint(requested, AVAILABLE) == V15


def test_a_hash_that_matches_nothing_matches_nothing() -> None:
    assert match_checkpoint("deadbeef00", AVAILABLE) is None
