"""Outputs wait out an S3 outage within a bound: which errors are worth another try, and how long tries go on."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError, ReadTimeoutError

from sdtask.clients.s3 import is_transient_s3_error, retry_transient


def client_error(code: str, status: int) -> ClientError:
    response: Any = {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "PutObject")


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (EndpointConnectionError(endpoint_url="http://s3.local"), True),
        (ReadTimeoutError(endpoint_url="http://s3.local"), True),
        (client_error("SlowDown", 503), True),
        (client_error("InternalError", 500), True),
        (client_error("AccessDenied", 403), False),
        (client_error("NoSuchBucket", 404), False),
        (NoCredentialsError(), False),
        (ValueError("a bug"), False),
    ],
)
def test_only_errors_a_later_try_may_not_meet_are_retried(error: Exception, transient: bool) -> None:
    assert is_transient_s3_error(error) is transient


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_an_outage_shorter_than_the_bound_is_waited_out() -> None:
    time = FakeTime()
    calls: list[float] = []

    async def upload() -> str:
        calls.append(time.now)
        if time.now < 30:  # S3 unreachable for 30 s
            raise EndpointConnectionError(endpoint_url="http://s3.local")
        return "stored"

    result = asyncio.run(retry_transient(upload, within=90, clock=time.clock, sleep=time.sleep))
    assert result == "stored"
    assert time.sleeps == [1, 2, 4, 8, 10, 10]  # doubling, capped
    assert 30 <= calls[-1] <= 40  # stored soon after S3 came back


def test_tries_stop_within_the_bound_and_the_last_error_propagates() -> None:
    time = FakeTime()

    async def upload() -> None:
        raise EndpointConnectionError(endpoint_url="http://s3.local")

    with pytest.raises(EndpointConnectionError):
        asyncio.run(retry_transient(upload, within=90, clock=time.clock, sleep=time.sleep))
    assert time.now <= 90
    assert sum(time.sleeps) == time.now and len(time.sleeps) > 5


def test_a_refusal_is_not_retried() -> None:
    time = FakeTime()

    async def upload() -> None:
        raise client_error("AccessDenied", 403)

    with pytest.raises(ClientError):
        asyncio.run(retry_transient(upload, within=90, clock=time.clock, sleep=time.sleep))
    assert time.sleeps == []
