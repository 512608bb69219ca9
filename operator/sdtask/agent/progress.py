"""Progress of a running generation in the task status: the agent reads the Web UI's /sdapi/v1/progress while the
generation runs and patches `status.progress` at a bounded rate (one write per interval at most, none when nothing
changed), so a thousand running tasks never flood the API server.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, Self

from sdtask.agent import metrics
from sdtask.conditions import now_iso

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_SECONDS = 5.0
FIRST_READ_SECONDS = 1.0


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def progress_status(raw: Mapping[str, Any], now: dt.datetime) -> dict[str, Any] | None:
    """The Web UI's /progress answer (modules/api/api.py progressapi) -> status.progress; None while no job runs.

    `progress` there already counts finished jobs (job_no / job_count) plus the current job's sampling steps.
    """
    state = raw.get("state") or {}
    jobs = int(_number(state.get("job_count")) or 0)
    fraction = _number(raw.get("progress"))
    if jobs <= 0 or fraction is None:
        return None
    fraction = min(max(fraction, 0.0), 1.0)
    eta = max(_number(raw.get("eta_relative")) or 0.0, 0.0)
    step, steps = int(_number(state.get("sampling_step")) or 0), int(_number(state.get("sampling_steps")) or 0)
    job = min(int(_number(state.get("job_no")) or 0) + 1, jobs)
    parts = [f"{fraction:.0%}"]
    if steps:
        parts.append(f"step {min(step, steps)}/{steps}")
    if jobs > 1:
        parts.append(f"batch {job}/{jobs}")
    parts.append(f"ETA {eta:.0f}s")
    return {
        "fraction": round(fraction, 3),
        "etaSeconds": round(eta, 1),
        "step": min(step, steps) if steps else step,
        "steps": steps,
        "job": job,
        "jobs": jobs,
        "summary": " ".join(parts),
        "updateTime": now_iso(now),
    }


class ProgressReporter:
    """`async with ProgressReporter(read, write):` around the generate call. Best effort: a failed read or write
    is skipped, never fails the task."""

    def __init__(
        self,
        read: Callable[[], Awaitable[dict[str, Any]]],
        write: Callable[[dict[str, Any]], Awaitable[Any]],
        *,
        interval: float = DEFAULT_INTERVAL_SECONDS,
    ) -> None:
        self.read = read
        self.write = write
        self.interval = max(interval, 0.1)
        self.writes = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._loop(), name="progress-reporter")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Stop, then wait for a write in flight: none may land after the final status the caller writes next.
        self._stop.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=30)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task

    async def _loop(self) -> None:
        last: str | None = None
        # The first read comes soon (a person watching wants to see it move), then one read per interval: the write
        # rate can never exceed one per interval.
        wait = min(FIRST_READ_SECONDS, self.interval)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=wait)
            wait = self.interval
            if self._stop.is_set():
                return
            try:
                progress = progress_status(await self.read(), dt.datetime.now(dt.UTC))
            except Exception as error:  # the Web UI busy or restarting: try again next interval
                log.debug("progress read failed: %s", error)
                continue
            if progress is None or progress["summary"] == last:
                continue
            try:
                await self.write({"progress": progress})
            except Exception as error:  # e.g. the task was deleted meanwhile
                log.debug("progress write failed: %s", error)
                continue
            last = progress["summary"]
            self.writes += 1
            metrics.PROGRESS_WRITES.inc()
