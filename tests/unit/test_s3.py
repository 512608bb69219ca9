"""The S3 module against a real S3-protocol server on loopback (moto)."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import pytest
from botocore.exceptions import ClientError

from sdtask.clients.s3 import (
    ObjectTooLarge,
    S3Client,
    S3Settings,
    claim_json,
    describe_s3_error,
    get_object_capped,
    make_s3_client,
    put_json,
    put_object,
    replace_json_if,
)

BUCKET = "outputs"
SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"


@pytest.fixture(scope="module")
def client(s3_endpoint: str) -> S3Client:
    s3 = make_s3_client(S3Settings(s3_endpoint, "us-east-1", "AKIAEXAMPLE", SECRET))
    s3.create_bucket(Bucket=BUCKET)
    return s3


def test_settings_repr_never_shows_credentials() -> None:
    settings = S3Settings("http://127.0.0.1:9000", "eu-west-1", "AKIAEXAMPLE", SECRET)
    assert SECRET not in repr(settings) and "AKIAEXAMPLE" not in repr(settings)
    assert "eu-west-1" in repr(settings)


def test_client_configuration(s3_endpoint: str) -> None:
    s3 = make_s3_client(
        S3Settings(s3_endpoint, "eu-west-1", "a", "b", connect_timeout=3, read_timeout=7, max_attempts=4)
    )
    config: Any = s3.meta.config  # the stubs do not list the Config attributes
    assert config.s3 == {"addressing_style": "path"}
    assert (config.connect_timeout, config.read_timeout) == (3, 7)
    assert config.retries == {"total_max_attempts": 4, "mode": "standard"}
    assert s3.meta.region_name == "eu-west-1" and s3.meta.endpoint_url == s3_endpoint
    # on AWS itself the SDK picks the addressing style
    aws_config: Any = make_s3_client(S3Settings(None, "us-east-1", "a", "b")).meta.config
    assert aws_config.s3 is None


def test_an_upload_sends_its_body_at_once_without_waiting_for_100_continue(client: S3Client) -> None:
    sent: list[dict[str, str]] = []

    def capture(request: Any, **_: Any) -> None:
        sent.append({name.lower(): str(value) for name, value in request.headers.items()})

    client.meta.events.register("before-send.s3", capture)
    try:
        asyncio.run(put_object(client, BUCKET, "output/t0/image-1.png", b"\x89PNG-small", "image/png"))
    finally:
        client.meta.events.unregister("before-send.s3", capture)
    assert sent and "expect" not in sent[-1]
    assert client.get_object(Bucket=BUCKET, Key="output/t0/image-1.png")["Body"].read() == b"\x89PNG-small"


def test_put_object_sets_content_type_and_overwrites(client: S3Client) -> None:
    key = "output/t1/image-1.gif"
    asyncio.run(put_object(client, BUCKET, key, b"GIF89a-first", "image/gif"))
    asyncio.run(put_object(client, BUCKET, key, b"GIF89a-retry", "image/gif"))
    head = client.head_object(Bucket=BUCKET, Key=key)
    assert head["ContentType"] == "image/gif"
    assert client.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"GIF89a-retry"
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix="output/t1/")["Contents"]
    assert [item["Key"] for item in listed] == [key]


def test_put_json(client: S3Client) -> None:
    record = {"id": "t1", "image_url": ["s3://outputs/output/t1/image-1.png"], "prompt": "chat sorcier ✨"}
    asyncio.run(put_json(client, BUCKET, "output/t1/t1.out", record))
    response = client.get_object(Bucket=BUCKET, Key="output/t1/t1.out")
    assert response["ContentType"] == "application/json"
    assert json.loads(response["Body"].read().decode("utf-8")) == record


def test_get_object_capped(client: S3Client) -> None:
    client.put_object(Bucket=BUCKET, Key="in/ten.bin", Body=b"0123456789")
    assert asyncio.run(get_object_capped(client, BUCKET, "in/ten.bin", 10)) == b"0123456789"
    with pytest.raises(ObjectTooLarge) as caught:
        asyncio.run(get_object_capped(client, BUCKET, "in/ten.bin", 9))
    assert caught.value.size == 10
    assert str(caught.value) == "s3://outputs/in/ten.bin is 10 bytes, over the 9-byte limit"


@pytest.mark.parametrize(
    ("bucket", "key", "reason"), [(BUCKET, "nope", "no such key"), ("nope", "k", "no such bucket")]
)
def test_missing_objects_are_described(client: S3Client, bucket: str, key: str, reason: str) -> None:
    with pytest.raises(ClientError) as caught:
        asyncio.run(get_object_capped(client, bucket, key, 100))
    assert describe_s3_error(caught.value) == reason


@pytest.mark.parametrize(
    ("code", "message", "reason"),
    [
        ("AccessDenied", "Access Denied", "access denied"),
        ("403", "Forbidden", "access denied"),
        ("SlowDown", "Please reduce your request rate.", "S3 error SlowDown: Please reduce your request rate."),
    ],
)
def test_client_errors_are_described(code: str, message: str, reason: str) -> None:
    error = ClientError({"Error": {"Code": code, "Message": message}}, "GetObject")
    assert describe_s3_error(error) == reason


def test_unreachable_endpoint_is_described_without_credentials() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    s3 = make_s3_client(S3Settings(f"http://127.0.0.1:{port}", "us-east-1", "AKIAEXAMPLE", SECRET, max_attempts=1))
    with pytest.raises(Exception) as caught:
        asyncio.run(put_object(s3, BUCKET, "k", b"x", "image/png"))
    reason = describe_s3_error(caught.value)
    assert reason.startswith("S3 unreachable or misconfigured: Could not connect")
    assert SECRET not in reason


def test_calls_run_off_the_event_loop(client: S3Client) -> None:
    """While boto3 works, the loop keeps running other coroutines."""
    client.put_object(Bucket=BUCKET, Key="in/one.bin", Body=b"1")

    async def scenario() -> list[str]:
        order: list[str] = []

        async def ticker() -> None:
            order.append("tick")

        async def download() -> None:
            await get_object_capped(client, BUCKET, "in/one.bin", 10)
            order.append("downloaded")

        await asyncio.gather(download(), ticker())
        return order

    assert asyncio.run(scenario()) == ["tick", "downloaded"]


def test_claim_json_creates_once_and_everyone_reads_the_winner(client: S3Client) -> None:
    """The owner marker of an output location: the first claim wins, a later one gets the winner's value."""
    first, etag = asyncio.run(claim_json(client, BUCKET, "owners/a.json", {"uid": "1"}))
    second, same_etag = asyncio.run(claim_json(client, BUCKET, "owners/a.json", {"uid": "2"}))
    assert first == second == {"uid": "1"} and etag and same_etag == etag
    stored = json.loads(client.get_object(Bucket=BUCKET, Key="owners/a.json")["Body"].read())
    assert stored == {"uid": "1"}


def test_replace_json_if_applies_only_to_the_version_that_was_read(client: S3Client) -> None:
    _, etag = asyncio.run(claim_json(client, BUCKET, "owners/b.json", {"uid": "old"}))
    assert asyncio.run(replace_json_if(client, BUCKET, "owners/b.json", {"uid": "new"}, etag))
    # a second writer that read the same old version loses: the marker changed since
    assert not asyncio.run(replace_json_if(client, BUCKET, "owners/b.json", {"uid": "late"}, etag))
    assert asyncio.run(claim_json(client, BUCKET, "owners/b.json", {"uid": "x"}))[0] == {"uid": "new"}
