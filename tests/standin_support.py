"""The stand-in Web UI for tests: fixtures that start it (every answer held to the real API's models, see
tests/contract) and helpers to read what it returns."""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sdtask.standin import StandinWebUI, read_standin_metadata, write_checkpoint
from sdtask.standin.images import render_png
from tests.contract.models import check_response

Start = Callable[..., httpx.Client]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "webui"


@pytest.fixture
def models_dir(data_dir: Path) -> Path:
    """The Web UI's built-in checkpoint folder, `<data-dir>/models/Stable-diffusion`."""
    folder = data_dir / "models" / "Stable-diffusion"
    write_checkpoint(folder / "alpha.safetensors")
    write_checkpoint(folder / "beta.ckpt")
    (folder / "readme.txt").write_text("not a checkpoint")
    return folder


@pytest.fixture
def start(data_dir: Path, models_dir: Path) -> Iterator[Start]:
    """Start a stand-in (keyword arguments as StandinWebUI's) and get a client for it once its startup load is
    over; all stopped at the end."""
    running: list[tuple[StandinWebUI, httpx.Client]] = []

    def _start(**options: Any) -> httpx.Client:
        webui = StandinWebUI(options.pop("data_dir", data_dir), **options).start()
        assert webui.wait_until_loaded()
        client = contract_client(webui.url)
        running.append((webui, client))
        return client

    yield _start
    for webui, client in running:
        client.close()
        webui.stop()


@pytest.fixture
def client(start: Start) -> httpx.Client:
    return start()


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def titles(client: httpx.Client) -> dict[str, str]:
    """model_name -> title of the listed checkpoints."""
    return {model["model_name"]: model["title"] for model in client.get("/sdapi/v1/sd-models").json()}


def loaded_option(client: httpx.Client) -> str | None:
    value: str | None = client.get("/sdapi/v1/options").json()["sd_model_checkpoint"]
    return value


def stats(client: httpx.Client) -> dict[str, Any]:
    value: dict[str, Any] = client.get("/standin/stats").json()
    return value


def decoded_images(response: httpx.Response) -> list[bytes]:
    assert response.status_code == 200, response.text
    return [base64.b64decode(image) for image in response.json()["images"]]


def metadata(image: bytes) -> dict[str, Any]:
    found = read_standin_metadata(image)
    assert found is not None
    return found


def png_size(image: bytes) -> tuple[int, int]:
    assert image[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(image[16:20], "big"), int.from_bytes(image[20:24], "big")


def b64_png(tag: bytes, width: int = 32, height: int = 24) -> str:
    image = render_png(hashlib.sha256(tag).digest(), width, height, {"endpoint": "test"})
    return base64.b64encode(image).decode()


def running_job(client: httpx.Client) -> dict[str, Any]:
    state: dict[str, Any] = client.get("/sdapi/v1/progress").json()["state"]
    return state


def contract_client(base_url: str, **options: Any) -> httpx.Client:
    """A client whose every answer from the stand-in is checked against the real API's response models."""

    def check(response: httpx.Response) -> None:
        response.read()
        check_response(response.request.method, response.request.url.path, response.status_code, response.content)

    return httpx.Client(base_url=base_url, timeout=10, event_hooks={"response": [check]}, **options)
