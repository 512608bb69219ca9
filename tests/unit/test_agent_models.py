"""Checkpoint delivery from models.s3Prefix: the init container of static runtimes and the on-demand fetch of dynamic
ones share it (a real S3 server: moto's, on loopback)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from sdtask.agent.models import ModelFetchError, candidate_files, fetch_checkpoint, run_fetch_model
from sdtask.clients.s3 import S3Client, S3Settings, make_s3_client
from sdtask.config import AgentSettings


@pytest.fixture
def bucket(s3_endpoint: str) -> tuple[S3Client, str]:
    client = make_s3_client(S3Settings(s3_endpoint, "us-east-1", "a", "b"))
    name = f"models-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=name)
    client.put_object(Bucket=name, Key="ckpt/v1-5.safetensors", Body=b"w" * 1000)
    return client, name


def test_names_without_an_extension_try_the_model_extensions() -> None:
    assert candidate_files("v1-5 [6ce0161689]") == ["v1-5.safetensors", "v1-5.ckpt"]
    assert candidate_files("sub/v1-5.ckpt") == ["v1-5.ckpt"]


def test_a_checkpoint_is_fetched_once_and_kept_on_a_persistent_volume(
    bucket: tuple[S3Client, str], tmp_path: Path
) -> None:
    client, name = bucket
    first = fetch_checkpoint(client, f"s3://{name}/ckpt/", "v1-5", tmp_path, max_bytes=10_000)
    assert first.downloaded and first.path.read_bytes() == b"w" * 1000
    again = fetch_checkpoint(client, f"s3://{name}/ckpt", "v1-5.safetensors", tmp_path, max_bytes=10_000)
    assert not again.downloaded and again.path == first.path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v1-5.safetensors"]  # no partial file left


def test_a_file_of_another_size_is_replaced(bucket: tuple[S3Client, str], tmp_path: Path) -> None:
    client, name = bucket
    (tmp_path / "v1-5.safetensors").write_bytes(b"truncated")
    fetched = fetch_checkpoint(client, f"s3://{name}/ckpt/", "v1-5", tmp_path, max_bytes=10_000)
    assert fetched.downloaded and fetched.size == 1000


def test_a_missing_or_oversize_checkpoint_says_which_object(bucket: tuple[S3Client, str], tmp_path: Path) -> None:
    client, name = bucket
    with pytest.raises(ModelFetchError, match=rf"sdxl not found \(s3://{name}/ckpt/sdxl.safetensors, "):
        fetch_checkpoint(client, f"s3://{name}/ckpt/", "sdxl", tmp_path, max_bytes=10_000)
    with pytest.raises(ModelFetchError, match=r"1000 bytes, over the 999-byte limit"):
        fetch_checkpoint(client, f"s3://{name}/ckpt/", "v1-5", tmp_path, max_bytes=999)
    assert list(tmp_path.iterdir()) == []


def test_the_init_container_fails_with_the_reason_in_its_termination_message(
    bucket: tuple[S3Client, str], tmp_path: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, name = bucket
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "a")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "b")
    settings = AgentSettings(
        pod_name="p",
        namespace="n",
        runtime="r",
        checkpoint="gone.safetensors",
        models_dir=str(tmp_path / "models"),
        models_s3_prefix=f"s3://{name}/ckpt/",
        s3_endpoint=s3_endpoint,
    )
    log = tmp_path / "termination-log"
    assert run_fetch_model(settings, log) == 1
    assert log.read_text() == f"ModelMissing: checkpoint gone.safetensors not found (s3://{name}/ckpt/gone.safetensors)"
    present = AgentSettings(**{**settings.__dict__, "checkpoint": "v1-5.safetensors"})
    assert run_fetch_model(present, log) == 0
    assert (tmp_path / "models" / "v1-5.safetensors").stat().st_size == 1000
