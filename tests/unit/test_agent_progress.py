"""Progress in the task status: read from what the (stand-in) Web UI's /progress answers, written at a bounded rate."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from sdtask.agent.progress import ProgressReporter, progress_status
from sdtask.standin.progress import JobState

NOW = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


def test_progress_of_a_running_job_as_the_web_ui_reports_it() -> None:
    job = JobState()
    job.begin("txt2img", job_count=2, sampling_steps=16)
    job.job_no, job.sampling_step = 1, 8
    status = progress_status(job.progress(), NOW)
    assert status is not None
    assert 0.75 <= status["fraction"] <= 0.77  # one job of two done, half of the second
    assert (status["step"], status["steps"], status["job"], status["jobs"]) == (8, 16, 2, 2)
    assert status["summary"].startswith("76% step 8/16 batch 2/2 ETA ")
    assert status["updateTime"] == "2026-12-01T00:00:00Z"


def test_no_progress_while_the_web_ui_is_idle() -> None:
    assert progress_status(JobState().progress(), NOW) is None
    assert progress_status({"progress": "x", "state": {"job_count": 1}}, NOW) is None


def test_writes_are_bounded_by_the_interval_and_skipped_when_nothing_changed() -> None:
    reads = iter([0.1, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9] + [0.95] * 100)
    written: list[dict[str, Any]] = []

    async def read() -> dict[str, Any]:
        return {"progress": next(reads), "eta_relative": 1.0, "state": {"job_count": 1, "sampling_steps": 10}}

    async def write(patch: dict[str, Any]) -> None:
        written.append(patch["progress"])

    async def scenario() -> int:
        async with ProgressReporter(read, write, interval=0.1) as reporter:
            await asyncio.sleep(0.55)
        return reporter.writes

    loop = asyncio.new_event_loop()
    started = loop.time()
    writes = loop.run_until_complete(scenario())
    elapsed = loop.time() - started
    loop.close()
    assert 2 <= writes <= elapsed / 0.1 + 1  # never more than one write per interval
    assert [w["fraction"] for w in written][:2] == [0.1, 0.2]  # the unchanged second read was not written


def test_a_failing_read_or_write_never_stops_the_reporter() -> None:
    calls = {"read": 0}

    async def read() -> dict[str, Any]:
        calls["read"] += 1
        if calls["read"] == 1:
            raise ConnectionError("Web UI restarting")
        return {"progress": 0.1 * calls["read"], "eta_relative": 1.0, "state": {"job_count": 1}}

    async def write(_: dict[str, Any]) -> None:
        if calls["read"] == 2:
            raise RuntimeError("409")

    async def scenario() -> int:
        async with ProgressReporter(read, write, interval=0.1) as reporter:
            async with asyncio.timeout(5):  # the third read is written despite the two failures before it
                while reporter.writes == 0:
                    await asyncio.sleep(0.02)
        return calls["read"]

    assert asyncio.run(scenario()) == 3
