"""Callback delivery against a local receiver that fails on purpose; signing and backoff as pure functions."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from sdtask.clients.callback import (
    SIGNATURE_HEADER,
    CallbackResult,
    backoff_delay,
    encode_body,
    is_retryable_status,
    retry_after_seconds,
    send_callback,
    sign_body,
    verify_signature,
)

TOKEN = "callback-token-do-not-leak"
PAYLOAD = {
    "id": "t1",
    "runtime": "sd15",
    "result": True,
    "output_location": "s3://bucket/output/t1",
    "image_url": ["s3://bucket/output/t1/image-1.png"],
    "output_url": "s3://bucket/output/t1/t1.out",
    "context": {"ticket": "ünï"},
    "error": "",
}


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """Answers the scripted statuses in order, then 200."""

    statuses: list[int] = field(default_factory=list)
    extra_headers: dict[str, str] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    url: str = ""

    def next_status(self) -> int:
        return self.statuses.pop(0) if self.statuses else 200


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.received.append(Received(dict(self.headers.items()), body))
            self.send_response(state.next_status())
            for name, value in state.extra_headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/sdtask?auth=query-secret"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


def deliver(url: str, *, token: str | None = TOKEN, attempts: int = 5) -> CallbackResult:
    return asyncio.run(send_callback(url, PAYLOAD, token=token, attempts=attempts, base_delay=0.01, timeout=5))


def test_delivered_with_a_verifiable_signature(receiver: Receiver) -> None:
    result = deliver(receiver.url)

    assert result == CallbackResult(delivered=True, attempts=1, last_error="")
    (request,) = receiver.received
    assert json.loads(request.body) == PAYLOAD
    assert request.headers["Content-Type"] == "application/json"
    signature = request.headers[SIGNATURE_HEADER]
    assert signature.startswith("sha256=") and len(signature) == len("sha256=") + 64
    assert verify_signature(request.body, TOKEN, signature)
    assert not verify_signature(request.body, "another-token", signature)
    assert not verify_signature(request.body + b" ", TOKEN, signature)
    assert TOKEN not in repr(request.headers) and TOKEN.encode() not in request.body


def test_no_token_no_signature(receiver: Receiver) -> None:
    assert deliver(receiver.url, token=None).delivered
    assert SIGNATURE_HEADER not in receiver.received[0].headers


def test_server_errors_are_retried_then_delivered(receiver: Receiver) -> None:
    receiver.statuses = [503, 500, 502]
    result = deliver(receiver.url)
    assert result == CallbackResult(delivered=True, attempts=4, last_error="")
    bodies = {request.body for request in receiver.received}
    assert len(receiver.received) == 4 and len(bodies) == 1  # the same signed body every time


@pytest.mark.parametrize("status", [408, 429])
def test_timeouts_and_rate_limits_are_retried(receiver: Receiver, status: int) -> None:
    receiver.statuses = [status]
    receiver.extra_headers = {"Retry-After": "0"}
    assert deliver(receiver.url) == CallbackResult(delivered=True, attempts=2, last_error="")


@pytest.mark.parametrize(("status", "error"), [(400, "HTTP 400 Bad Request"), (404, "HTTP 404 Not Found")])
def test_client_errors_are_not_retried(receiver: Receiver, status: int, error: str) -> None:
    receiver.statuses = [status, status]
    assert deliver(receiver.url) == CallbackResult(delivered=False, attempts=1, last_error=error)
    assert len(receiver.received) == 1


def test_gives_up_after_the_last_attempt(receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    receiver.statuses = [500] * 10
    result = deliver(receiver.url, attempts=3)
    assert result == CallbackResult(delivered=False, attempts=3, last_error="HTTP 500 Internal Server Error")
    assert len(receiver.received) == 3
    logged = caplog.text
    assert "attempt 3/3" in logged and "query-secret" not in logged and TOKEN not in logged


def test_unreachable_endpoint_never_raises() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    result = deliver(f"http://127.0.0.1:{port}/hook", attempts=2)
    assert (result.delivered, result.attempts) == (False, 2)
    assert result.last_error.startswith("ConnectError")


@pytest.mark.parametrize("url", ["not a url", "ftp://example.com/hook", ""])
def test_unusable_url_is_reported_once(url: str) -> None:
    result = deliver(url)
    assert (result.delivered, result.attempts) == (False, 1) and result.last_error


def test_shared_client_is_left_open(receiver: Receiver) -> None:
    import httpx

    async def scenario() -> bool:
        async with httpx.AsyncClient() as client:
            result = await send_callback(receiver.url, PAYLOAD, token=None, client=client)
            return result.delivered and not client.is_closed

    assert asyncio.run(scenario())


# --- pure parts -------------------------------------------------------------------------------------------------


def test_signature_is_hmac_sha256_of_the_exact_body() -> None:
    body = encode_body({"b": 1, "a": "é"})
    assert body == '{"b":1,"a":"é"}'.encode()
    # RFC 4231 test case 2
    assert sign_body(b"what do ya want for nothing?", "Jefe") == (
        "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    )


def test_retryable_statuses() -> None:
    statuses = (200, 301, 400, 401, 403, 404, 408, 409, 422, 429, 500, 502, 503, 504)
    assert [status for status in statuses if is_retryable_status(status)] == [408, 429, 500, 502, 503, 504]


def test_backoff_doubles_is_capped_and_jittered() -> None:
    assert [backoff_delay(n, 1.0, jitter=1.0) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert [backoff_delay(n, 1.0, jitter=0.0) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]
    assert backoff_delay(20, 1.0, max_delay=30.0, jitter=1.0) == 30.0
    assert backoff_delay(1, 1.0, jitter=0.5) == 0.75
    assert backoff_delay(1, 1.0, jitter=7.0) == 1.0  # out-of-range jitter is clamped


def test_retry_after() -> None:
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds("3600", max_delay=60) == 60
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert retry_after_seconds(None) is None
