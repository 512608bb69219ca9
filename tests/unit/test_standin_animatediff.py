"""AnimateDiff in the stand-in, as sd-webui-animatediff v2 behaves behind the real API (scripts/animatediff_ui.py,
scripts/animatediff_output.py): off unless enabled, the frame count replaces the batch size, one base64 video per
requested format, each in its real container."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from sdtask.media import detect_format
from tests.standin_support import b64_png, decoded_images, metadata

MAGIC: dict[str, Callable[[bytes], bool]] = {
    "GIF": lambda data: data[:6] in (b"GIF87a", b"GIF89a"),
    "MP4": lambda data: data[4:8] == b"ftyp",
    "WEBP": lambda data: data[:4] == b"RIFF" and data[8:12] == b"WEBP",
    "WEBM": lambda data: data[:4] == b"\x1a\x45\xdf\xa3" and b"webm" in data[:64],
}


def animatediff(**options: Any) -> dict[str, Any]:
    return {"alwayson_scripts": {"AnimateDiff": {"args": [options]}}, "width": 16, "height": 16}


def generate(client: httpx.Client, endpoint: str = "txt2img", **body: Any) -> tuple[list[bytes], dict[str, Any]]:
    response = client.post(f"/sdapi/v1/{endpoint}", json=body)
    return decoded_images(response), json.loads(response.json()["info"])


def test_one_video_per_format_in_the_extensions_order_with_real_magic(client: httpx.Client) -> None:
    request = animatediff(enable=True, format=["WEBM", "MP4", "GIF", "WEBP", "PNG"], video_length=6)
    videos, details = generate(client, prompt="waves", **request)
    assert [kind for video in videos for kind, check in MAGIC.items() if check(video)] == ["GIF", "MP4", "WEBP", "WEBM"]
    assert [metadata(video)["format"] for video in videos] == ["GIF", "MP4", "WEBP", "WEBM"]
    assert all(metadata(video)["frames"] == 6 and metadata(video)["prompt"] == "waves" for video in videos)
    assert videos[0].count(b"\x21\xf9\x04") == 6  # one graphic control block per GIF frame
    # set_p: the batch is max(video_length, context batch size 16): 16 frames were generated.
    assert (details["batch_size"], len(details["all_seeds"])) == (16, 16)


def test_videos_are_recognised_by_our_media_sniffer(client: httpx.Client) -> None:
    videos, _ = generate(client, **animatediff(enable=True, format=["GIF", "MP4", "WEBP"], video_length=4))
    assert [detect_format(video).extension for video in videos] == ["gif", "mp4", "webp"]


def test_video_length_above_the_context_batch_replaces_the_batch_size(client: httpx.Client) -> None:
    videos, details = generate(client, batch_size=2, **animatediff(enable=True, format=["GIF"], video_length=20))
    assert len(videos) == 1 and metadata(videos[0])["frames"] == 20
    assert details["batch_size"] == 20


def test_each_batch_of_n_iter_gets_its_videos(client: httpx.Client) -> None:
    videos, details = generate(client, n_iter=2, **animatediff(enable=True, format=["GIF", "MP4"], batch_size=4))
    assert [metadata(video)["format"] for video in videos] == ["GIF", "MP4", "GIF", "MP4"]
    assert metadata(videos[2])["seed"] == details["all_seeds"][4]


def test_frames_come_after_the_videos_only_with_the_frame_format(client: httpx.Client) -> None:
    images, _ = generate(client, **animatediff(enable=True, format=["GIF", "Frame"], video_length=4, batch_size=4))
    assert MAGIC["GIF"](images[0])
    assert [image[:4] for image in images[1:]] == [b"\x89PNG"] * 4


def test_without_a_video_format_the_frames_stay_images(client: httpx.Client) -> None:
    images, _ = generate(client, **animatediff(enable=True, format=["PNG"], batch_size=3))
    assert [image[:4] for image in images] == [b"\x89PNG"] * 3


@pytest.mark.parametrize(
    "scripts",
    [
        animatediff(format=["GIF"]),  # enable defaults to false
        animatediff(enable=False, format=["MP4"]),
        {"alwayson_scripts": {"AnimateDiff": {"args": []}}},
        {"alwayson_scripts": {"AnimateDiff": {}}},
    ],
)
def test_animatediff_is_off_unless_enabled(client: httpx.Client, scripts: dict[str, Any]) -> None:
    images, _ = generate(client, **{"width": 16, "height": 16, **scripts})
    assert [image[:4] for image in images] == [b"\x89PNG"]


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"enable": True, "fps": 0}, "AssertionError"),
        ({"enable": True, "format": ["TXT"]}, "AssertionError"),
        ({"enable": True, "format": "GIF"}, "AssertionError"),  # a string, not a list
        ({"enable": True, "no_such_parameter": 1}, "TypeError"),
    ],
)
def test_bad_animatediff_arguments_fail_the_request(client: httpx.Client, options: dict[str, Any], error: str) -> None:
    response = client.post("/sdapi/v1/txt2img", json=animatediff(**options))
    assert (response.status_code, response.json()["error"]) == (500, error)


def test_img2img_animation_records_its_input(client: httpx.Client) -> None:
    init = b64_png(b"first frame")
    videos, _ = generate(
        client, "img2img", init_images=[init], **animatediff(enable=True, format=["WEBM"], video_length=3)
    )
    assert MAGIC["WEBM"](videos[0])
    assert len(metadata(videos[0])["input_sha256"]) == 1


def test_a_grid_shifts_index_of_first_image_though_the_videos_replace_it(client: httpx.Client) -> None:
    # animatediff_output.py makes videos from res.images[index_of_first_image:], replaces res.images, and leaves
    # index_of_first_image at 1: a client that skips "the grid" would drop the first video.
    videos, details = generate(
        client, save_images=True, **animatediff(enable=True, format=["GIF", "MP4"], batch_size=4)
    )
    assert details["index_of_first_image"] == 1
    assert [metadata(video)["format"] for video in videos] == ["GIF", "MP4"]
