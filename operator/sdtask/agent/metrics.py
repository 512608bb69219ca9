"""Prometheus metrics of one agent (one runtime pod), served on the port the pod spec declares (`metrics`).

Labels stay bounded: the runtime and namespace come from the pod (constant per process), never task names or URLs.
The Web UI calls' own metrics (generation, model switch, errors) live with the client, in `sdtask.clients.webui`.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from sdtask.clients.webui import DURATION_BUCKETS

BYTES_BUCKETS = (1024, 16384, 131072, 1048576, 4194304, 16777216, 67108864)

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


def link_fetched(scheme: str, seconds: float, size: int | None) -> None:
    scheme = scheme if scheme in ("http", "https", "s3") else "other"
    LINK_TIME.labels(scheme, "ok" if size is not None else "error").observe(seconds)
    if size is not None:
        LINK_BYTES.labels(scheme).inc(size)
        LINK_SIZE.labels(scheme).observe(size)
