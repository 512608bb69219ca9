"""Checkpoints and model switches in the stand-in, as the real Web UI v1.10 lists, names, loads and switches them
(modules/sd_models.py, modules/options.py, modules/api/api.py)."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from sdtask.standin import write_checkpoint
from sdtask.standin.weights import SafetensorError, checkpoint_bytes, load_checkpoint, read_metadata
from tests.standin_support import (
    Start,
    decoded_images,
    loaded_option,
    metadata,
    running_job,
    stats,
    titles,
    wait_until,
)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def models(client: httpx.Client) -> dict[str, dict[str, Any]]:
    return {model["model_name"]: model for model in client.get("/sdapi/v1/sd-models").json()}


def switch(client: httpx.Client, name: str) -> httpx.Response:
    return client.post("/sdapi/v1/options", json={"sd_model_checkpoint": name})


# --- the weights format -------------------------------------------------------------------------------------------


def test_write_checkpoint_makes_a_valid_safetensors_file(tmp_path: Path) -> None:
    path = write_checkpoint(tmp_path / "a" / "m.safetensors", metadata={"modelspec.title": "M"})
    data = path.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    assert header["__metadata__"] == {"modelspec.title": "M"}
    assert all(
        tensor["data_offsets"][1] <= len(data) - 8 - length for key, tensor in header.items() if key != "__metadata__"
    )
    assert read_metadata(str(path)) == {"modelspec.title": "M"}
    assert checkpoint_bytes("x") != checkpoint_bytes("y")
    assert sha256_of(write_checkpoint(tmp_path / "b.safetensors")) != sha256_of(path)


@pytest.mark.parametrize(
    "data",
    [b"", b"garbage", checkpoint_bytes("x")[:20], checkpoint_bytes("x")[:-4], b"\x04" + b"\0" * 7 + b"[1,2]"],
    ids=["empty", "garbage", "truncated header", "truncated tensors", "not an object"],
)
def test_files_that_are_not_valid_safetensors_fail_to_load(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data)
    with pytest.raises(SafetensorError):
        load_checkpoint(str(path))


# --- listing ----------------------------------------------------------------------------------------------------


def test_lists_the_builtin_folder_and_ckpt_dir_recursively_and_nothing_else(
    start: Start, data_dir: Path, models_dir: Path, tmp_path: Path
) -> None:
    ckpt_dir = tmp_path / "mounted"
    write_checkpoint(ckpt_dir / "sub" / "deep.safetensors")
    write_checkpoint(ckpt_dir / "top.ckpt")
    write_checkpoint(ckpt_dir / "some.vae.safetensors")  # list_models' ext_blacklist
    write_checkpoint(tmp_path / "elsewhere" / "never.safetensors")
    client = start(ckpt_dir=ckpt_dir)
    listed = models(client)
    assert set(listed) == {"alpha", "beta", "sub_deep", "top"}
    assert listed["sub_deep"]["filename"] == str(ckpt_dir / "sub" / "deep.safetensors")
    assert listed["sub_deep"]["title"].startswith("sub/deep.safetensors")
    assert set(listed["alpha"]) == {"title", "model_name", "hash", "sha256", "filename", "config"}

    write_checkpoint(tmp_path / "elsewhere" / "later.safetensors")
    write_checkpoint(ckpt_dir / "later.safetensors")
    assert client.post("/sdapi/v1/refresh-checkpoints").status_code == 200
    assert set(models(client)) == {"alpha", "beta", "sub_deep", "top", "later"}


def test_titles_carry_the_hash_only_after_the_model_was_loaded_once(start: Start, models_dir: Path) -> None:
    client = start()  # loads the first listed one, alpha, at start
    listed = models(client)
    alpha_sha = sha256_of(models_dir / "alpha.safetensors")
    assert listed["alpha"]["title"] == f"alpha.safetensors [{alpha_sha[:10]}]"
    assert (listed["alpha"]["hash"], listed["alpha"]["sha256"]) == (alpha_sha[:10], alpha_sha)
    assert (listed["beta"]["title"], listed["beta"]["hash"], listed["beta"]["sha256"]) == ("beta.ckpt", None, None)
    assert loaded_option(client) == listed["alpha"]["title"]

    assert switch(client, "beta").status_code == 200
    beta_sha = sha256_of(models_dir / "beta.ckpt")
    assert models(client)["beta"]["title"] == f"beta.ckpt [{beta_sha[:10]}]"
    assert loaded_option(client) == f"beta.ckpt [{beta_sha[:10]}]"
    client.post("/sdapi/v1/refresh-checkpoints")
    assert models(client)["beta"]["sha256"] == beta_sha  # a refresh does not forget a known hash


def test_no_hashing_never_computes_a_hash(start: Start) -> None:
    client = start(no_hashing=True)
    assert models(client)["alpha"]["hash"] is None
    assert loaded_option(client) == "alpha.safetensors"


@pytest.mark.parametrize(
    "alias",
    ["beta.ckpt", "beta", "title", "short hash", "sha256", "name [short hash]", "beta [short hash]", "legacy hash"],
)
def test_checkpoints_are_selected_by_every_alias_of_the_real_server(
    client: httpx.Client, models_dir: Path, alias: str
) -> None:
    sha = sha256_of(models_dir / "beta.ckpt")
    # Hash-based aliases exist only once the hash is known: load beta once, then go back to alpha.
    if "hash" in alias or alias in ("title", "sha256"):
        assert switch(client, "beta").status_code == 200
        assert switch(client, "alpha").status_code == 200
    data = (models_dir / "beta.ckpt").read_bytes()
    legacy = hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    name = {
        "title": f"beta.ckpt [{sha[:10]}]",
        "short hash": sha[:10],
        "sha256": sha,
        "name [short hash]": f"beta.ckpt [{sha[:10]}]",
        "beta [short hash]": f"beta [{sha[:10]}]",
        "legacy hash": legacy,
    }.get(alias, alias)
    assert switch(client, name).json() is None
    assert loaded_option(client) == f"beta.ckpt [{sha[:10]}]"


def test_hash_aliases_do_not_exist_before_the_first_load(client: httpx.Client, models_dir: Path) -> None:
    sha = sha256_of(models_dir / "beta.ckpt")
    response = switch(client, sha[:10])
    assert response.status_code == 500
    assert response.json()["errors"] == f"model '{sha[:10]}' not found"


# --- starting -----------------------------------------------------------------------------------------------------


def test_ckpt_file_is_listed_and_loaded_at_start(start: Start, tmp_path: Path) -> None:
    ckpt = write_checkpoint(tmp_path / "static" / "served.safetensors")
    client = start(ckpt=ckpt)
    assert loaded_option(client) == f"served.safetensors [{sha256_of(ckpt)[:10]}]"
    assert models(client)["served"]["filename"] == str(ckpt)
    assert stats(client)["model_loads"] == 0  # the start-up load is not a switch


def test_missing_ckpt_is_reported_and_another_checkpoint_is_loaded(
    start: Start, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    client = start(ckpt=tmp_path / "static" / "missing.safetensors")
    assert "Checkpoint in --ckpt argument not found" in capfd.readouterr().err
    assert loaded_option(client) == titles(client)["alpha"]  # the real fallback: the first listed checkpoint


def test_without_any_checkpoint_the_server_runs_and_generation_fails(
    start: Start, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    client = start(data_dir=tmp_path / "empty")
    err = capfd.readouterr().err
    assert "Downloading" in err and "Stable diffusion model failed to load" in err
    assert client.get("/sdapi/v1/sd-models").json() == []
    assert loaded_option(client) is None
    response = client.post("/sdapi/v1/txt2img", json={})
    assert (response.status_code, response.json()["error"]) == (500, "FileNotFoundError")
    assert "No checkpoints found" in response.json()["errors"]


def test_no_download_sd_model_does_not_try_the_download(
    start: Start, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    start(data_dir=tmp_path / "empty", no_download_sd_model=True)
    assert "Downloading" not in capfd.readouterr().err


def test_a_checkpoint_that_does_not_load_at_start_leaves_no_model(start: Start, models_dir: Path) -> None:
    (models_dir / "alpha.safetensors").write_bytes(b"truncated")
    client = start()
    assert loaded_option(client) is None
    assert stats(client)["loaded_model"] is None
    response = client.post("/sdapi/v1/txt2img", json={"width": 8, "height": 8})
    assert (response.status_code, response.json()["error"]) == (500, "SafetensorError")


# --- switching ----------------------------------------------------------------------------------------------------


def test_unknown_checkpoint_is_a_500_and_changes_nothing(client: httpx.Client) -> None:
    before = stats(client)
    response = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "missing.safetensors", "jpeg_quality": 1})
    assert response.status_code == 500
    assert response.json() == {
        "error": "RuntimeError",
        "detail": "",
        "body": "",
        "errors": "model 'missing.safetensors' not found",
    }
    assert loaded_option(client) == titles(client)["alpha"]
    assert client.get("/sdapi/v1/options").json()["jpeg_quality"] == 80
    assert stats(client)["model_loads"] == before["model_loads"]


def test_a_checkpoint_that_fails_to_load_answers_null_and_keeps_the_old_model(
    client: httpx.Client, models_dir: Path
) -> None:
    alpha = loaded_option(client)
    (models_dir / "corrupt.safetensors").write_bytes(checkpoint_bytes("c")[:-3])
    client.post("/sdapi/v1/refresh-checkpoints")
    response = switch(client, "corrupt.safetensors")
    assert (response.status_code, response.json()) == (200, None)
    assert loaded_option(client) == alpha
    assert stats(client)["loaded_model"] == alpha
    image = decoded_images(client.post("/sdapi/v1/txt2img", json={"width": 8, "height": 8}))[0]
    assert metadata(image)["model"] == alpha
    # The hash was computed before the load failed: the corrupt file's title now carries it.
    assert models(client)["corrupt"]["hash"] is not None


def test_unknown_option_keys_fail_after_the_keys_before_them_were_set(client: httpx.Client) -> None:
    response = client.post("/sdapi/v1/options", json={"jpeg_quality": 95, "no_such_option": 1, "samples_format": "jpg"})
    assert (response.status_code, response.json()["error"], response.json()["errors"]) == (
        500,
        "KeyError",
        "'no_such_option'",
    )
    options = client.get("/sdapi/v1/options").json()
    assert (options["jpeg_quality"], options["samples_format"]) == (95, "png")
    assert "no_such_option" not in options


def test_the_option_keeps_the_name_it_was_set_to_when_that_model_is_already_loaded(client: httpx.Client) -> None:
    # Options.set stores the value as sent; reload_model_weights finds the file loaded and does not touch it.
    assert switch(client, "alpha").json() is None
    assert loaded_option(client) == "alpha"
    assert stats(client)["model_loads"] == 0


def test_load_delay_is_paid_only_when_the_model_really_changes(start: Start) -> None:
    client = start(load_delay=0.3)
    alpha = titles(client)["alpha"]

    began = time.monotonic()
    switch(client, alpha)
    assert time.monotonic() - began < 0.3
    assert stats(client)["model_loads"] == 0

    began = time.monotonic()
    switch(client, "beta")
    assert time.monotonic() - began >= 0.3
    assert stats(client)["model_loads"] == 1
    assert stats(client)["loaded_model"] == titles(client)["beta"]


def test_unload_keeps_the_title_and_generation_works_again(client: httpx.Client) -> None:
    alpha = loaded_option(client)
    assert client.post("/sdapi/v1/unload-checkpoint").json() == {}
    assert loaded_option(client) == alpha
    assert stats(client)["model_on_device"] is False
    image = decoded_images(client.post("/sdapi/v1/txt2img", json={"width": 8, "height": 8}))[0]
    assert metadata(image)["model"] == alpha
    assert (stats(client)["model_on_device"], stats(client)["model_loads"]) == (True, 0)


def test_reload_checkpoint_brings_the_weights_back(client: httpx.Client) -> None:
    client.post("/sdapi/v1/unload-checkpoint")
    assert client.post("/sdapi/v1/reload-checkpoint").json() == {}
    assert stats(client)["model_on_device"] is True
    assert stats(client)["model_loads"] == 0


def test_override_settings_runs_on_the_override_and_restores_the_option(client: httpx.Client) -> None:
    alpha = loaded_option(client)
    override = {"override_settings": {"sd_model_checkpoint": "beta"}, "width": 8, "height": 8}
    response = client.post("/sdapi/v1/txt2img", json=override)
    beta = titles(client)["beta"]
    assert metadata(decoded_images(response)[0])["model"] == beta
    assert json.loads(response.json()["info"])["sd_model_name"] == "beta"
    # Like the real server: the option goes back at once, the weights only at the next request that needs them.
    assert loaded_option(client) == alpha
    assert stats(client)["loaded_model"] == beta
    image = decoded_images(client.post("/sdapi/v1/txt2img", json={"width": 8, "height": 8}))[0]
    assert metadata(image)["model"] == alpha
    assert stats(client)["model_loads"] == 2


def test_override_settings_kept_when_restore_afterwards_is_false(client: httpx.Client) -> None:
    request = {"override_settings": {"sd_model_checkpoint": "beta"}, "override_settings_restore_afterwards": False}
    assert client.post("/sdapi/v1/txt2img", json={**request, "width": 8, "height": 8}).status_code == 200
    assert loaded_option(client) == titles(client)["beta"]


def test_override_with_unknown_model_is_ignored_but_unknown_option_fails(client: httpx.Client) -> None:
    unknown_model = {"override_settings": {"sd_model_checkpoint": "nope"}, "width": 8, "height": 8}
    image = decoded_images(client.post("/sdapi/v1/txt2img", json=unknown_model))[0]
    assert metadata(image)["model"] == titles(client)["alpha"]
    unknown_key = client.post("/sdapi/v1/txt2img", json={"override_settings": {"nope": 1}, "width": 8, "height": 8})
    assert (unknown_key.status_code, unknown_key.json()["error"]) == (500, "KeyError")


def test_refresh_waits_for_the_running_generation(start: Start) -> None:
    client = start(image_delay=0.3)

    def generate() -> None:
        with httpx.Client(base_url=str(client.base_url), timeout=10) as own:
            assert own.post("/sdapi/v1/txt2img", json={"width": 8, "height": 8}).status_code == 200

    worker = threading.Thread(target=generate)
    worker.start()
    wait_until(lambda: running_job(client)["job"] != "")
    client.post("/sdapi/v1/refresh-checkpoints")  # takes the queue lock, as api.py does
    # The generation ends its job inside the lock: a refresh that got the lock comes after that end.
    assert running_job(client)["job"] == ""
    worker.join(timeout=5)


def test_skip_load_model_at_start_loads_on_the_first_generation(start: Start) -> None:
    client = start(load_at_start=False)
    assert loaded_option(client) is None
    assert stats(client)["loaded_model"] is None
    image = decoded_images(client.post("/sdapi/v1/txt2img", json={"width": 8, "height": 8}))[0]
    assert metadata(image)["model"] == loaded_option(client) == titles(client)["alpha"]
