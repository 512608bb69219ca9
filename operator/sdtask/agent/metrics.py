"""Prometheus metrics of one agent (one runtime pod), served on the port the pod spec declares (`metrics`).

Labels stay bounded: the runtime and namespace come from the pod (constant per process), never task names or URLs.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)
BYTES_BUCKETS = (1024, 16384, 131072, 1048576, 4194304, 16777216, 67108864)

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
LINK_BYTES = Counter("sdtask_agent_link_download_bytes_total", "Bytes of input links downloaded", ["scheme"])
LINK_TIME = Histogram(
    "sdtask_agent_link_download_seconds",
    "Input link downloads, by scheme and result",
    ["scheme", "result"],
    buckets=DURATION_BUCKETS,
)
LINK_SIZE = Histogram(
    "sdtask_agent_link_download_size_bytes", "Size of downloaded input links", ["scheme"], buckets=BYTES_BUCKETS
)
BUSY = Gauge("sdtask_agent_busy", "1 while the agent runs a task")
PROGRESS_WRITES = Counter("sdtask_agent_progress_writes_total", "Progress patches written to task status")


def serve(port: int) -> None:
    if port:
        start_http_server(port)


def endpoint_label(path: str) -> str:
    """/sdapi/v1/txt2img -> txt2img: the API's fixed set of paths, never free text."""
    return path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or "-"


def webui_error(path: str, error: BaseException) -> None:
    from sdtask.clients.webui import WebUIError, WebUITimeout

    if isinstance(error, WebUIError):
        kind = f"http-{error.status}"
    elif isinstance(error, WebUITimeout):
        kind = "timeout"
    else:
        kind = "unavailable"
    WEBUI_ERRORS.labels(endpoint_label(path), kind).inc()


def link_fetched(scheme: str, seconds: float, size: int | None) -> None:
    scheme = scheme if scheme in ("http", "https", "s3") else "other"
    LINK_TIME.labels(scheme, "ok" if size is not None else "error").observe(seconds)
    if size is not None:
        LINK_BYTES.labels(scheme).inc(size)
        LINK_SIZE.labels(scheme).observe(size)
