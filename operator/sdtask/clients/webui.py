"""The one module that talks to the SD Web UI (AUTOMATIC1111 API), plus checkpoint matching (pure)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any

import httpx
from prometheus_client import Counter, Histogram

from sdtask.checkpoints import Checkpoint, match_checkpoint
from sdtask.clients.closing import AsyncClosable
from sdtask.config import DEFAULT_MODEL_SWITCH_TIMEOUT_SECONDS

__all__ = [
    "Checkpoint",
    "WebUIClient",
    "WebUIError",
    "WebUIException",
    "WebUITimeout",
    "WebUIUnavailable",
    "match_checkpoint",
]

log = logging.getLogger(__name__)

API = "/sdapi/v1"
DEFAULT_REQUEST_TIMEOUT = 30.0
INTERRUPT_TIMEOUT = 10.0
PROGRESS_TIMEOUT = 5.0
_MESSAGE_LIMIT = 2000
_ERROR_BODY_LIMIT = 16 * 1024

# The agent's metrics of its Web UI calls (served by `sdtask.agent.metrics.serve`, one registry per process).
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)
GENERATION = Histogram(
    "sdtask_agent_generation_seconds",
    "Web UI generation calls (txt2img, img2img, extras), by endpoint and result",
    ["endpoint", "result"],
    buckets=DURATION_BUCKETS,
)
SWITCH = Histogram(
    "sdtask_agent_model_switch_seconds",
    "Checkpoint switches of a dynamic runtime, by result",
    ["result"],
    buckets=DURATION_BUCKETS,
)
SWITCHES = Counter("sdtask_agent_model_switches_total", "Checkpoint switches, by result", ["result"])
WEBUI_ERRORS = Counter(
    "sdtask_agent_webui_errors_total",
    "Failed Web UI calls: kind is http-<status>, timeout or unavailable",
    ["endpoint", "kind"],
)


class WebUIException(Exception):
    """Base of every error of this client."""


class WebUIError(WebUIException):
    """The Web UI answered with a non-2xx status (or an unusable body)."""

    def __init__(self, status: int, message: str, body: Any = None) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message
        self.body = body  # the Web UI's JSON error body, when it sent one (the legacy .out record's `reason`)

    def __str__(self) -> str:
        return f"Web UI answered HTTP {self.status}: {self.message}"


class WebUITimeout(WebUIException):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__(path, timeout)
        self.path = path
        self.timeout = timeout

    def __str__(self) -> str:
        return f"Web UI call {self.path} timed out after {self.timeout:g}s"


class WebUIUnavailable(WebUIException):
    """No HTTP answer at all: connection refused, reset, DNS..."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path, reason)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"Web UI unreachable ({self.path}): {self.reason}"


def api_path(endpoint: str) -> str:
    """Where a generation endpoint is posted: txt2img -> /sdapi/v1/txt2img."""
    return f"{API}/{endpoint.strip('/')}"


def basic_auth(credentials: str) -> httpx.BasicAuth | None:
    """HTTP Basic auth for a Web UI started with `--api-auth user:pass[,user2:pass2]` (modules/api/api.py checks
    every API route against those pairs); None without credentials."""
    first = credentials.strip().split(",", 1)[0].strip()
    if not first:
        return None
    user, _, password = first.partition(":")
    return httpx.BasicAuth(user, password)


def _hex_or_none(value: Any) -> str | None:
    return value.lower() if isinstance(value, str) and re.fullmatch(r"[0-9a-fA-F]{8,64}", value) else None


def error_message(response: httpx.Response) -> str:
    """The Web UI's own explanation of a failure: `detail`, else `errors`, else `error`, else the raw body."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        for key in ("detail", "errors", "error"):
            text = _as_text(body.get(key))
            if text:
                return text[:_MESSAGE_LIMIT]
    text = response.text.strip()
    return text[:_MESSAGE_LIMIT] if text else response.reason_phrase


def _json_or_none(response: httpx.Response) -> Any:
    if len(response.content) > _ERROR_BODY_LIMIT:
        return None
    try:
        return response.json()
    except ValueError:
        return None


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list):  # FastAPI validation errors: [{"loc": [...], "msg": "..."}]
        return "; ".join(_validation_item(item) for item in value)
    if value:
        return json.dumps(value)
    return ""


def _validation_item(item: Any) -> str:
    if isinstance(item, dict) and "msg" in item:
        location = ".".join(str(part) for part in item.get("loc", []))
        return f"{location}: {item['msg']}" if location else str(item["msg"])
    return str(item)


class WebUIClient(AsyncClosable):
    """Async client of one Web UI. Pass `client` to share an httpx.AsyncClient (it is then not closed here)."""

    def __init__(
        self,
        base_url: str,
        *,
        client: httpx.AsyncClient | None = None,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        switch_timeout: float = DEFAULT_MODEL_SWITCH_TIMEOUT_SECONDS,
        credentials: str = "",
    ) -> None:
        """`credentials` is the Web UI's `--api-auth` value ("user:password"; the first pair of a list is used)."""
        self.base_url = base_url.rstrip("/")
        self.request_timeout = request_timeout
        self.switch_timeout = switch_timeout
        self._owns_client = client is None
        self._auth = basic_auth(credentials)
        # The Web UI is local to the pod: no proxy from the environment.
        self._client = client if client is not None else httpx.AsyncClient(trust_env=False)

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def ping(self) -> bool:
        """True when the API answers. `/internal/ping` exists only when the UI is launched (modules/ui.py), not with
        `--nowebui`; `/sdapi/v1/memory` exists in both modes and takes no lock."""
        try:
            response = await self._client.get(self._url(f"{API}/memory"), timeout=self.request_timeout, auth=self._auth)
        except httpx.HTTPError:
            return False
        return response.is_success

    async def wait_until_ready(self, stop: asyncio.Event, poll_seconds: float = 1.0) -> str | None:
        """Wait until the Web UI answers its options (as the old queue agent did before taking work, since the model
        loads after the server starts listening); returns the loaded checkpoint, or None if `stop` was set first."""
        while not stop.is_set():
            try:
                return await self.loaded_checkpoint()
            except WebUIException as error:
                log.debug("Web UI not ready yet: %s", error)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), poll_seconds)
        return None

    async def list_checkpoints(self) -> list[Checkpoint]:
        items = await self._call("GET", f"{API}/sd-models", timeout=self.request_timeout)
        if not isinstance(items, list):
            raise WebUIError(200, "sd-models did not return a list")
        return [
            Checkpoint(
                title=str(item.get("title", "")),
                model_name=str(item.get("model_name", "")),
                filename=str(item.get("filename", "")),
                sha256=_hex_or_none(item.get("sha256")),
                shorthash=_hex_or_none(item.get("hash")),
            )
            for item in items
            if isinstance(item, dict) and item.get("title")
        ]

    async def refresh_checkpoints(self) -> None:
        """Rescan the checkpoint folders. The real server takes the queue lock for it (so it waits for a running
        generation) and reads every file's header: it gets the switch timeout, not the short one."""
        await self._call("POST", f"{API}/refresh-checkpoints", timeout=self.switch_timeout)

    async def loaded_checkpoint(self) -> str | None:
        options = await self._call("GET", f"{API}/options", timeout=self.request_timeout)
        if not isinstance(options, dict):
            raise WebUIError(200, "options did not return an object")
        value = options.get("sd_model_checkpoint")
        return value if isinstance(value, str) and value else None

    async def switch_checkpoint(self, title: str, *, timeout: float | None = None) -> None:
        """Ask the Web UI to load `title`. Call `match_checkpoint` first. A name that matches a checkpoint but fails to
        load still answers 200 `null` (modules/options.py restores the old value and the API ignores the result):
        read `loaded_checkpoint` back to know whether the switch happened."""
        started, result = time.monotonic(), "error"
        try:
            await self._call(
                "POST",
                f"{API}/options",
                json_body={"sd_model_checkpoint": title},
                timeout=self.switch_timeout if timeout is None else timeout,
            )
            result = "ok"
        finally:
            SWITCH.labels(result).observe(time.monotonic() - started)
            SWITCHES.labels(result).inc()

    async def generate(
        self, endpoint: str, payload: dict[str, Any], timeout: float, began: Callable[[], float] | None = None
    ) -> dict[str, Any]:
        """POST /sdapi/v1/<endpoint> (txt2img, img2img, extra-single-image, extra-batch-images). `began` tells when the
        Web UI began it (a call queued behind another one waited first): the generation time is measured from then."""
        started, outcome = time.monotonic(), "error"
        try:
            result = await self._call("POST", api_path(endpoint), json_body=payload, timeout=timeout)
            outcome = "ok"
        finally:
            since = max(started, began()) if began is not None else started
            GENERATION.labels(endpoint_label(endpoint), outcome).observe(time.monotonic() - since)
        if not isinstance(result, dict):
            raise WebUIError(200, f"{endpoint} did not return an object")
        return result

    async def progress(self) -> dict[str, Any]:
        """GET /sdapi/v1/progress: answered during a generation (it takes no queue lock); no preview image."""
        result = await self._call("GET", f"{API}/progress?skip_current_image=true", timeout=PROGRESS_TIMEOUT)
        if not isinstance(result, dict):
            raise WebUIError(200, "progress did not return an object")
        return result

    async def interrupt(self) -> bool:
        """Ask the Web UI to stop the current generation. Best effort: False instead of raising."""
        try:
            await self._call("POST", f"{API}/interrupt", timeout=INTERRUPT_TIMEOUT)
        except WebUIException as exc:
            log.warning("interrupt failed: %s", exc)
            return False
        return True

    def _url(self, path: str) -> str:
        return self.base_url + path

    async def _call(self, method: str, path: str, *, timeout: float, json_body: Any = None) -> Any:
        try:
            return await self._request(method, path, timeout=timeout, json_body=json_body)
        except WebUIException as error:
            record_webui_error(path, error)
            raise

    async def _request(self, method: str, path: str, *, timeout: float, json_body: Any = None) -> Any:
        try:
            # httpx's timeout is per read; the outer one bounds the whole call.
            async with asyncio.timeout(timeout):
                response = await self._client.request(
                    method, self._url(path), json=json_body, timeout=httpx.Timeout(timeout), auth=self._auth
                )
        except (TimeoutError, httpx.TimeoutException):
            raise WebUITimeout(path, timeout) from None
        except httpx.HTTPError as exc:
            raise WebUIUnavailable(path, f"{type(exc).__name__}: {exc}") from None
        if not response.is_success:
            raise WebUIError(response.status_code, error_message(response), _json_or_none(response))
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise WebUIError(response.status_code, f"{path} returned a body that is not JSON") from None


def answered_checkpoint(response: dict[str, Any]) -> str | None:
    """The checkpoint a generation ran on, as its answer says: `info` (a JSON string, modules/processing.py
    Processed.js) holds `sd_model_name` (the file name without its extension) and `sd_model_hash` (its short hash,
    null with --no-hashing). "name [hash]", "name", or None for an answer without them (extras, a stranger server)."""
    try:
        info = json.loads(response.get("info") or "")
    except (TypeError, ValueError):
        return None
    if not isinstance(info, dict) or not isinstance(info.get("sd_model_name"), str) or not info["sd_model_name"]:
        return None
    digest = info.get("sd_model_hash")
    return f"{info['sd_model_name']} [{digest}]" if isinstance(digest, str) and digest else str(info["sd_model_name"])


def endpoint_label(path: str) -> str:
    """/sdapi/v1/txt2img -> txt2img: the API's fixed set of paths, never free text."""
    return path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or "-"


def record_webui_error(path: str, error: BaseException) -> None:
    if isinstance(error, WebUIError):
        kind = f"http-{error.status}"
    elif isinstance(error, WebUITimeout):
        kind = "timeout"
    else:
        kind = "unavailable"
    WEBUI_ERRORS.labels(endpoint_label(path), kind).inc()
