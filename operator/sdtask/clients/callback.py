"""The one module that delivers task callbacks (HTTP POST of JSON, signed when a token is configured).

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
from dataclasses import dataclass
from typing import Any

import httpx

from sdtask.links import redact_url

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-SDTask-Signature"
SIGNATURE_SCHEME = "sha256="
DEFAULT_MAX_DELAY = 60.0
_RETRYABLE_STATUSES = frozenset({408, 429})
# Errors of the request itself (not of the network): retrying cannot help.
_PERMANENT_TRANSPORT_ERRORS: tuple[type[Exception], ...] = (httpx.UnsupportedProtocol, httpx.InvalidURL)


@dataclass(frozen=True)
class CallbackResult:
    delivered: bool
    attempts: int
    last_error: str


def encode_body(payload: Any) -> bytes:
    """The exact bytes sent (and signed): compact UTF-8 JSON."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def sign_body(body: bytes, token: str) -> str:
    """Value of the signature header: `sha256=<hex HMAC-SHA256 of body keyed by token>`."""
    digest = hmac.new(token.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return SIGNATURE_SCHEME + digest


def verify_signature(body: bytes, token: str, header_value: str | None) -> bool:
    """What a receiver does: recompute and compare in constant time."""
    return header_value is not None and hmac.compare_digest(sign_body(body, token), header_value.strip())


def is_retryable_status(status: int) -> bool:
    return status >= 500 or status in _RETRYABLE_STATUSES


def backoff_delay(attempt: int, base_delay: float, *, max_delay: float = DEFAULT_MAX_DELAY, jitter: float) -> float:
    """Delay after failed attempt number `attempt` (1-based): base * 2^(attempt-1), capped, scaled into
    [50%, 100%] by `jitter` in [0, 1) so many agents retrying at once do not hit the endpoint in step."""
    exponential = min(max_delay, base_delay * 2 ** max(0, attempt - 1))
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
    attempts: int = 5,
    base_delay: float = 1.0,
    timeout: float = 10.0,
    client: httpx.AsyncClient | None = None,
    max_delay: float = DEFAULT_MAX_DELAY,
) -> CallbackResult:
    """POST `payload` as JSON to `url`, retrying connection errors, timeouts, 5xx, 408 and 429 with exponential
    backoff and jitter. Never raises for delivery failures."""
    attempts = max(1, attempts)
    body = encode_body(payload)
    headers = {"Content-Type": "application/json"}
    if token:
        headers[SIGNATURE_HEADER] = sign_body(body, token)
    owned = client is None
    http = client if client is not None else httpx.AsyncClient()
    last_error = ""
    attempt = 0
    try:
        for attempt in range(1, attempts + 1):
            outcome = await _post_once(http, url, body, headers, timeout)
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
    finally:
        if owned:
            await http.aclose()
    return CallbackResult(delivered=False, attempts=attempt, last_error=last_error)


@dataclass(frozen=True)
class _Outcome:
    delivered: bool
    retryable: bool = False
    error: str = ""
    retry_after: float | None = None


async def _post_once(
    http: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str], timeout: float
) -> _Outcome:
    try:
        response = await http.post(url, content=body, headers=headers, timeout=timeout)
    except _PERMANENT_TRANSPORT_ERRORS as exc:
        return _Outcome(delivered=False, retryable=False, error=f"{type(exc).__name__}: {exc}")
    except httpx.TimeoutException:
        return _Outcome(delivered=False, retryable=True, error=f"timed out after {timeout:g}s")
    except httpx.TransportError as exc:
        return _Outcome(delivered=False, retryable=True, error=f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # a malformed URL and the like: report, never raise
        return _Outcome(delivered=False, retryable=False, error=f"{type(exc).__name__}: {exc}")
    if response.is_success:
        return _Outcome(delivered=True)
    status = response.status_code
    return _Outcome(
        delivered=False,
        retryable=is_retryable_status(status),
        error=f"HTTP {status} {response.reason_phrase}".rstrip(),
        retry_after=retry_after_seconds(response.headers.get("Retry-After")) if status in (429, 503) else None,
    )
