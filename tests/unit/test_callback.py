"""Callback delivery against a local receiver that fails on purpose; signing and backoff as pure functions."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from sdtask.addresses import AddressPolicy
from sdtask.clients.callback import (
    MAX_RESPONSE_BYTES,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    CallbackResult,
    backoff_delay,
    encode_body,
    is_retryable_status,
    retry_after_seconds,
    send_callback,
    sign_body,
    verify_signature,
)
from sdtask.clients.outbound import Outbound
from tests.origin import Origin, reply, send_chunked

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


LOCAL = AddressPolicy(allowed_hosts=frozenset({"127.0.0.1"}))


def deliver(
    url: str, *, token: str | None = TOKEN, attempts: int = 5, policy: AddressPolicy = LOCAL, **options: Any
) -> CallbackResult:
    async def run() -> CallbackResult:
        async with Outbound(policy, resolver=options.pop("resolver", None)) as outbound:
            options.setdefault("timeout", 5)
            return await send_callback(
                url, PAYLOAD, token=token, outbound=outbound, attempts=attempts, base_delay=0.01, **options
            )

    return asyncio.run(run())


def test_delivered_with_a_verifiable_signature(receiver: Receiver) -> None:
    result = deliver(receiver.url)

    assert result == CallbackResult(delivered=True, attempts=1, last_error="")
    (request,) = receiver.received
    assert json.loads(request.body) == PAYLOAD
    assert request.headers["Content-Type"] == "application/json"
    signature, timestamp = request.headers[SIGNATURE_HEADER], request.headers[TIMESTAMP_HEADER]
    assert signature.startswith("sha256=") and len(signature) == len("sha256=") + 64
    now = time.time()
    assert abs(int(timestamp) - now) < 60
    assert verify_signature(request.body, TOKEN, signature, timestamp, now=now)
    assert not verify_signature(request.body, "another-token", signature, timestamp, now=now)
    assert not verify_signature(request.body + b" ", TOKEN, signature, timestamp, now=now)
    assert not verify_signature(request.body, TOKEN, signature, str(int(timestamp) + 1), now=now)
    # A recorded callback replayed later is refused by a receiver that checks the timestamp.
    assert not verify_signature(request.body, TOKEN, signature, timestamp, now=now + 301)
    assert TOKEN not in repr(request.headers) and TOKEN.encode() not in request.body


def test_no_token_no_signature(receiver: Receiver) -> None:
    assert deliver(receiver.url, token=None).delivered
    assert SIGNATURE_HEADER not in receiver.received[0].headers and TIMESTAMP_HEADER not in receiver.received[0].headers


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
    assert result.last_error.startswith("connection failed")


@pytest.mark.parametrize("url", ["not a url", "ftp://example.com/hook", ""])
def test_unusable_url_is_reported_once(url: str) -> None:
    result = deliver(url)
    assert (result.delivered, result.attempts) == (False, 1) and result.last_error


def test_callbacks_to_internal_addresses_are_refused_by_default(receiver: Receiver) -> None:
    port = receiver.url.split(":")[2].split("/")[0]
    dns = {"hooks.evil.test": ["127.0.0.1"], "meta.evil.test": ["169.254.169.254"], "six.evil.test": ["2002:a00:1::"]}

    async def resolver(host: str, port: int) -> list[Any]:
        return [ipaddress.ip_address(a) for a in dns[host]]

    for url in (
        receiver.url,
        f"http://[::1]:{port}/hook",
        f"http://[::ffff:127.0.0.1]:{port}/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.5/hook",
        f"http://hooks.evil.test:{port}/hook",
        "http://meta.evil.test/hook",
        "http://six.evil.test/hook",
    ):
        result = deliver(url, policy=AddressPolicy(setting="allowPrivateCallbacks"), resolver=resolver)
        assert (result.delivered, result.attempts) == (False, 1), url  # a refusal is not retried
        assert result.last_error.startswith("refused: ") and "allowPrivateCallbacks" in result.last_error
    assert receiver.received == []


def test_redirects_are_not_followed(receiver: Receiver) -> None:
    receiver.statuses = [307]
    receiver.extra_headers = {"Location": "http://169.254.169.254/"}
    expected = CallbackResult(delivered=False, attempts=1, last_error="HTTP 307 Temporary Redirect")
    assert deliver(receiver.url) == expected


def test_a_slow_receiver_is_bounded_per_attempt_and_overall() -> None:
    with Origin() as origin:  # /hang answers only at teardown
        started = time.monotonic()
        result = deliver(origin.url("/hang"), attempts=50, timeout=0.2, deadline=1.0)
        elapsed = time.monotonic() - started
    assert not result.delivered and result.last_error.startswith("gave up after 1s in all")
    assert 2 <= result.attempts < 50 and elapsed < 3


def test_only_a_small_part_of_the_answer_is_read() -> None:
    def endless(handler: BaseHTTPRequestHandler) -> None:  # a 200 whose body never ends
        send_chunked(handler, [b"x" * 65536] * 10_000)

    def error_page(handler: BaseHTTPRequestHandler) -> None:
        reply(handler, 500, b"<html>" + b"e" * 100_000)

    with Origin(extra={"/endless": endless, "/error": error_page}) as origin:
        started = time.monotonic()
        assert deliver(origin.url("/endless")) == CallbackResult(delivered=True, attempts=1, last_error="")
        assert time.monotonic() - started < 2
        failed = deliver(origin.url("/error"), attempts=2)
    assert failed == CallbackResult(delivered=False, attempts=2, last_error="HTTP 500 Internal Server Error")
    assert MAX_RESPONSE_BYTES <= 4096


# --- pure parts -------------------------------------------------------------------------------------------------


def test_signature_is_hmac_sha256_of_the_exact_body() -> None:
    body = encode_body({"b": 1, "a": "é"})
    assert body == '{"b":1,"a":"é"}'.encode()
    # The HMAC input is "<timestamp>.<body>", keyed by the token.
    expected = hmac.new(b"Jefe", b"1700000000.what do ya want for nothing?", hashlib.sha256).hexdigest()
    assert sign_body(b"what do ya want for nothing?", "Jefe", "1700000000") == f"sha256={expected}"


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
