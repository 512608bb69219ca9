"""The one module that talks to S3 (boto3).

boto3 is synchronous: every call here runs in a worker thread so the agent's event loop never blocks. Credentials are
never logged: they are hidden from the settings' repr and never put into messages.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, ParamValidationError
from botocore.handlers import add_expect_header

from sdtask.api.runtime import DEFAULT_REGION

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
else:
    S3Client = Any

__all__ = [
    "ObjectTooLarge",
    "S3Client",
    "S3Settings",
    "claim_json",
    "describe_s3_error",
    "get_json",
    "get_object_capped",
    "is_transient_s3_error",
    "make_s3_client",
    "put_json",
    "put_object",
    "replace_json_if",
    "retry_transient",
]

log = logging.getLogger(__name__)
T = TypeVar("T")
JSON_CONTENT_TYPE = "application/json"
# Answers that say "later": throttling and the server's own failures (the S3 error codes of 5xx and 503 SlowDown).
_TRANSIENT_CODES = frozenset(
    {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "RequestTimeTooSkewed", "Throttling"}
)

_REASONS_BY_CODE = {
    "NoSuchKey": "no such key",
    "NoSuchBucket": "no such bucket",
    "AccessDenied": "access denied",
    "403": "access denied",
    "404": "not found",
    "InvalidAccessKeyId": "the access key is not valid",
    "SignatureDoesNotMatch": "the secret key does not match the access key",
}


@dataclass(frozen=True)
class S3Settings:
    endpoint_url: str | None = None
    region: str = DEFAULT_REGION
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    max_attempts: int = 5  # in all, the first try included


class ObjectTooLarge(ValueError):
    def __init__(self, bucket: str, key: str, size: int | None, max_bytes: int) -> None:
        super().__init__(bucket, key, size, max_bytes)
        self.bucket = bucket
        self.key = key
        self.size = size
        self.max_bytes = max_bytes

    def __str__(self) -> str:
        size = "more than" if self.size is None else f"{self.size} bytes,"
        return f"s3://{self.bucket}/{self.key} is {size} over the {self.max_bytes}-byte limit"


def make_s3_client(settings: S3Settings) -> S3Client:
    """A boto3 S3 client: standard retries, timeouts, path-style addressing for custom endpoints.

    Path-style because S3-compatible servers (MinIO, moto, Ceph) on a plain host name rarely resolve
    `<bucket>.<host>` virtual-host names.
    """
    config = Config(
        retries={"total_max_attempts": settings.max_attempts, "mode": "standard"},
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        s3={"addressing_style": "path"} if settings.endpoint_url else None,
    )
    # A private session: the default one is shared and not safe to create clients from in several threads.
    session = boto3.session.Session()
    client = session.client(
        "s3",
        endpoint_url=settings.endpoint_url,
        region_name=settings.region,
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=settings.secret_access_key,
        config=config,
    )
    # botocore sends every PUT with `Expect: 100-continue` and holds the body back until S3 says go on: a round trip
    # per upload, on a task's way to Succeeded, that only saves resending a body S3 refuses. Ours are images and
    # small records, and a refusal is rare (it fails the upload either way).
    client.meta.events.unregister("before-call.s3", add_expect_header)
    return client


async def put_object(client: S3Client, bucket: str, key: str, data: bytes, content_type: str) -> None:
    await asyncio.to_thread(client.put_object, Bucket=bucket, Key=key, Body=data, ContentType=content_type)


async def put_json(client: S3Client, bucket: str, key: str, value: Any) -> None:
    """Store `value` as UTF-8 JSON (the `.out` record)."""
    body = json.dumps(value, ensure_ascii=False, indent=2).encode("utf-8")
    await put_object(client, bucket, key, body, JSON_CONTENT_TYPE)


async def claim_json(client: S3Client, bucket: str, key: str, value: Any) -> tuple[Any, str]:
    """Create `key` holding `value` unless it exists (If-None-Match: *, atomic in S3); the value now stored and its
    ETag (for `replace_json_if`). Two writers racing for the same key both get the one that won.

    A stored value that isn't JSON comes back as None (with its ETag, so it can still be replaced).
    """
    body = json.dumps(value, sort_keys=True).encode("utf-8")
    try:
        written = await asyncio.to_thread(
            client.put_object, Bucket=bucket, Key=key, Body=body, ContentType=JSON_CONTENT_TYPE, IfNoneMatch="*"
        )
        return value, str(written.get("ETag", ""))
    except ClientError as error:
        if not _is_precondition_failure(error):
            raise
    return await asyncio.to_thread(_get_json_with_etag_sync, client, bucket, key)


async def replace_json_if(client: S3Client, bucket: str, key: str, value: Any, etag: str) -> bool:
    """Replace `key` by `value` only while it still has `etag` (If-Match, atomic in S3); False when it changed."""
    body = json.dumps(value, sort_keys=True).encode("utf-8")
    try:
        await asyncio.to_thread(
            client.put_object, Bucket=bucket, Key=key, Body=body, ContentType=JSON_CONTENT_TYPE, IfMatch=etag
        )
    except ClientError as error:
        if _is_precondition_failure(error) or str(error.response.get("Error", {}).get("Code")) in ("NoSuchKey", "404"):
            return False
        raise
    return True


def _is_precondition_failure(error: ClientError) -> bool:
    # 409 ConditionalRequestConflict: S3's answer to two conditional writes of one key at the same moment.
    return str(error.response.get("Error", {}).get("Code")) in (
        "PreconditionFailed",
        "412",
        "ConditionalRequestConflict",
    )


def _get_json_with_etag_sync(client: S3Client, bucket: str, key: str, max_bytes: int = 64 * 1024) -> tuple[Any, str]:
    response = client.get_object(Bucket=bucket, Key=key)
    body = response["Body"]
    try:
        data = body.read(max_bytes + 1)
    finally:
        body.close()
    etag = str(response.get("ETag", ""))
    if len(data) > max_bytes:
        return None, etag
    try:
        return json.loads(data), etag
    except ValueError:
        return None, etag


async def get_json(client: S3Client, bucket: str, key: str, max_bytes: int = 16 * 1024 * 1024) -> Any | None:
    """The JSON stored at `key`, None when there is none (or it isn't JSON)."""
    try:
        return json.loads(await get_object_capped(client, bucket, key, max_bytes))
    except ClientError as error:
        if str(error.response.get("Error", {}).get("Code")) in ("NoSuchKey", "404"):
            return None
        raise
    except ValueError:
        return None


async def get_object_capped(client: S3Client, bucket: str, key: str, max_bytes: int) -> bytes:
    """The object's bytes; ObjectTooLarge before reading when ContentLength is over `max_bytes`.

    botocore errors (ClientError, BotoCoreError) propagate; `describe_s3_error` turns them into a message.
    """
    return await asyncio.to_thread(_get_object_capped_sync, client, bucket, key, max_bytes)


def _get_object_capped_sync(client: S3Client, bucket: str, key: str, max_bytes: int) -> bytes:
    response = client.get_object(Bucket=bucket, Key=key)
    body = response["Body"]
    try:
        size = response.get("ContentLength")
        if size is not None and size > max_bytes:
            raise ObjectTooLarge(bucket, key, size, max_bytes)
        # Read one byte more than allowed: catches a body longer than its announced length without reading it all.
        data = body.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise ObjectTooLarge(bucket, key, None, max_bytes)
        return data
    finally:
        body.close()


def is_transient_s3_error(error: BaseException) -> bool:
    """An error a later try may not meet: S3 unreachable or timing out, throttling, a 5xx. Not a refusal (access
    denied, no such bucket, bad credentials): retrying those only delays the message. Pure."""
    if isinstance(error, NoCredentialsError | ParamValidationError):
        return False
    if isinstance(error, BotoCoreError):  # connection refused or reset, timeouts, endpoint unreachable
        return True
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return code in _TRANSIENT_CODES or status >= 500 or (code.isdigit() and int(code) >= 500)
    return isinstance(error, ConnectionError | TimeoutError)


async def retry_transient(
    call: Callable[[], Awaitable[T]],
    *,
    within: float,
    base_delay: float = 1.0,
    max_delay: float = 10.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """`call()`, tried again after transient S3 errors (`is_transient_s3_error`) with a doubling delay, as long as the
    next try starts within `within` seconds of the first; then the last error propagates. Other errors at once.

    boto3's own retries (a few, within seconds) ride out a blip; this rides out an outage of S3 or of the network
    to it without losing what was generated (the alternative, failing the attempt, means generating it again)."""
    deadline = clock() + within
    attempt = 0
    while True:
        try:
            return await call()
        except Exception as error:
            attempt += 1
            delay = min(max_delay, base_delay * 2 ** (attempt - 1))
            if not is_transient_s3_error(error) or clock() + delay > deadline:
                raise
            log.warning(
                "S3 request failed (try %d), trying again in %.1fs: %s", attempt, delay, describe_s3_error(error)
            )
            await sleep(delay)


def describe_s3_error(exc: BaseException) -> str:
    """A short human reason for a botocore error (no credentials: botocore messages never hold the secret)."""
    if isinstance(exc, ObjectTooLarge):
        return str(exc)
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        reason = _REASONS_BY_CODE.get(code)
        if reason is not None:
            return reason
        message = error.get("Message") or ""
        return f"S3 error {code}: {message}".rstrip(": ")
    if isinstance(exc, BotoCoreError):
        return f"S3 unreachable or misconfigured: {exc}"
    return f"{type(exc).__name__}: {exc}"
