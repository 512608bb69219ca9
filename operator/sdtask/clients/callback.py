"""The one module that delivers task callbacks (HTTP POST of JSON, signed when a token is configured).

The request goes through `clients.outbound` like every request a task causes (address policy, pinning, no proxy).

Delivery failures are reported in the result, never raised: a callback endpoint that is down must not fail a task
whose images are already in S3.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sdtask.api.task import DEFAULT_CALLBACK_ATTEMPTS
from sdtask.clients.outbound import Outbound, OutboundError
from sdtask.links import redact_url

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-SDTask-Signature"
TIMESTAMP_HEADER = "X-SDTask-Timestamp"
SIGNATURE_SCHEME = "sha256="
DEFAULT_MAX_DELAY = 60.0
DEFAULT_ATTEMPT_TIMEOUT = 10.0
DEFAULT_DEADLINE = 300.0  # all attempts of one callback together
DEFAULT_ATTEMPTS = DEFAULT_CALLBACK_ATTEMPTS
DEFAULT_TOLERANCE = 300.0  # how old a timestamp a receiver should accept
MAX_RESPONSE_BYTES = 4096  # a receiver's answer is read this far: only its status matters
_RETRYABLE_STATUSES = frozenset({408, 429})


@dataclass(frozen=True)
class CallbackResult:
    delivered: bool
    attempts: int
    last_error: str


def encode_body(payload: Any) -> bytes:
    """The exact bytes sent (and signed): compact UTF-8 JSON."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def sign_body(body: bytes, token: str, timestamp: str) -> str:
    """Value of the signature header: `sha256=<hex HMAC-SHA256 of "<timestamp>.<body>" keyed by token>`.

    The timestamp (Unix seconds, sent as X-SDTask-Timestamp) is signed with the body, so a receiver that refuses old
    timestamps can't be fed a recorded callback again.
    """
    digest = hmac.new(token.encode("utf-8"), timestamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()
    return SIGNATURE_SCHEME + digest


def verify_signature(
    body: bytes,
    token: str,
    signature: str | None,
    timestamp: str | None,
    *,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE,
) -> bool:
    """What a receiver does: the timestamp is recent, and the signature recomputed matches in constant time."""
    if signature is None or timestamp is None or not timestamp.strip().isdigit():
        return False
    if abs(now - int(timestamp.strip())) > tolerance:
        return False
    return hmac.compare_digest(sign_body(body, token, timestamp.strip()), signature.strip())


def is_retryable_status(status: int) -> bool:
    return status >= 500 or status in _RETRYABLE_STATUSES


def backoff_delay(attempt: int, base_delay: float, *, max_delay: float = DEFAULT_MAX_DELAY, jitter: float) -> float:
    """Delay after failed attempt number `attempt` (1-based): base * 2^(attempt-1), capped, scaled into
    [50%, 100%] by `jitter` in [0, 1) so many agents retrying at once do not hit the endpoint in step."""
    exponential = min(max_delay, base_delay * 2.0 ** max(0, attempt - 1))
    return exponential * (0.5 + 0.5 * min(max(jitter, 0.0), 1.0))


def retry_after_seconds(value: str | None, *, max_delay: float = DEFAULT_MAX_DELAY) -> float | None:
    """A numeric Retry-After header in seconds (capped); None when absent or given as a date."""
    if value is None or not value.strip().isdigit():
        return None
    return min(float(value.strip()), max_delay)


async def send_callback(
    url: str,
    payload: Any,
    *,
    token: str | None,
    outbound: Outbound,
    attempts: int = DEFAULT_ATTEMPTS,
    base_delay: float = 1.0,
    timeout: float = DEFAULT_ATTEMPT_TIMEOUT,
    deadline: float = DEFAULT_DEADLINE,
    max_delay: float = DEFAULT_MAX_DELAY,
    clock: Callable[[], float] = time.time,
) -> CallbackResult:
    """POST `payload` as JSON to `url`, retrying connection errors, timeouts, 5xx, 408 and 429 with exponential
    backoff and jitter. Never raises for delivery failures.

    Every attempt is bounded (`timeout`, and at most MAX_RESPONSE_BYTES of the answer are read), all of them together
    by `deadline`. Each attempt is signed afresh with the time it is sent. The address policy is `outbound`'s.
    """
    attempts = max(1, attempts)
    body = encode_body(payload)
    last_error = ""
    attempt = 0
    try:
        async with asyncio.timeout(deadline):
            for attempt in range(1, attempts + 1):
                outcome = await _post_once(outbound, url, body, _headers(body, token, clock()), timeout)
                if outcome.delivered:
                    return CallbackResult(delivered=True, attempts=attempt, last_error="")
                last_error = outcome.error
                log.warning("callback to %s failed (attempt %d/%d): %s", redact_url(url), attempt, attempts, last_error)
                if not outcome.retryable or attempt >= attempts:
                    break
                delay = outcome.retry_after
                if delay is None:
                    delay = backoff_delay(attempt, base_delay, max_delay=max_delay, jitter=random.random())
                await asyncio.sleep(delay)
    except TimeoutError:
        last_error = f"gave up after {deadline:g}s in all" + (f" (last error: {last_error})" if last_error else "")
    return CallbackResult(delivered=False, attempts=attempt, last_error=last_error)


def _headers(body: bytes, token: str | None, now: float) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if token:
        timestamp = str(int(now))
        headers[TIMESTAMP_HEADER] = timestamp
        headers[SIGNATURE_HEADER] = sign_body(body, token, timestamp)
    return headers


@dataclass(frozen=True)
class _Outcome:
    delivered: bool
    retryable: bool = False
    error: str = ""
    retry_after: float | None = None


async def _post_once(outbound: Outbound, url: str, body: bytes, headers: dict[str, str], timeout: float) -> _Outcome:
    try:
        response = await outbound.request(
            "POST",
            url,
            content=body,
            headers=headers,
            max_bytes=MAX_RESPONSE_BYTES,
            total_timeout=timeout,
            follow_redirects=False,  # a redirect of a signed POST is not followed: the receiver must answer itself
            truncate=True,  # only the status matters; a long answer is cut, never read to its end
        )
    except OutboundError as error:
        return _Outcome(delivered=False, retryable=error.retryable, error=error.reason)
    except Exception as error:  # a malformed URL and the like: report, never raise
        return _Outcome(delivered=False, retryable=False, error=f"{type(error).__name__}: {error}")
    if response.ok:
        return _Outcome(delivered=True)
    status = response.status
    return _Outcome(
        delivered=False,
        retryable=is_retryable_status(status),
        error=f"HTTP {status} {response.reason}".rstrip(),
        retry_after=retry_after_seconds(response.headers.get("Retry-After")) if status in (429, 503) else None,
    )
