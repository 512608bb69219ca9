"""The start of an attempt run beside its generation: a refused start stops the Web UI, an accepted one never does."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sdtask.agent.failures import AttemptFailed
from sdtask.agent.starting import AttemptStart, StartRefused


class Conflict(Exception):
    """What the Running write raises when the task changed since the agent read it."""


async def written(delay: float, result: Any = None, error: Exception | None = None) -> Any:
    await asyncio.sleep(delay)
    if error is not None:
        raise error
    return result


class WebUI:
    def __init__(self) -> None:
        self.interrupts = 0
        self.stopped = asyncio.Event()

    async def interrupt(self) -> bool:
        self.interrupts += 1
        self.stopped.set()
        return True

    async def generate(self, seconds: float) -> str:
        """Ends early when interrupted, as the Web UI returns the images finished so far."""
        try:
            await asyncio.wait_for(self.stopped.wait(), seconds)
        except TimeoutError:
            return "complete"
        return "interrupted"


def test_a_running_write_refused_mid_generation_interrupts_it_at_once() -> None:
    async def scenario() -> tuple[str, int]:
        webui = WebUI()
        start = AttemptStart(written(0.02, error=Conflict()), written(0.0))
        async with start.interrupting(webui.interrupt):
            result = await webui.generate(30)
        with pytest.raises(Conflict):
            await start.running
        await start.settle()
        return result, webui.interrupts

    result, interrupts = asyncio.run(scenario())
    assert result == "interrupted"
    assert interrupts >= 1


def test_a_refused_claim_interrupts_too() -> None:
    async def scenario() -> str:
        webui = WebUI()
        claimed = written(0.02, error=AttemptFailed("OutputClaimed", "s3://b/p/id belongs to another task"))
        start = AttemptStart(written(0.0, {"status": {"phase": "Running"}}), claimed)
        async with start.interrupting(webui.interrupt):
            result = await webui.generate(30)
        await start.settle()
        return result

    assert asyncio.run(scenario()) == "interrupted"


def test_an_accepted_start_never_interrupts_the_generation() -> None:
    async def scenario() -> tuple[str, int, dict[str, Any]]:
        webui = WebUI()
        start = AttemptStart(written(0.01, {"status": {"phase": "Running"}}), written(0.01))
        async with start.interrupting(webui.interrupt):
            result = await webui.generate(0.1)
        return result, webui.interrupts, await start.running

    result, interrupts, running = asyncio.run(scenario())
    assert (result, interrupts, running["status"]["phase"]) == ("complete", 0, "Running")


def test_once_a_write_failed_no_generation_starts() -> None:
    async def scenario() -> None:
        start = AttemptStart(written(0.0, error=Conflict()), written(0.0))
        await asyncio.wait({start.running})
        with pytest.raises(StartRefused):
            start.check()
        await start.settle()

    asyncio.run(scenario())


def test_a_start_still_on_its_way_lets_the_generation_begin() -> None:
    async def scenario() -> None:
        start = AttemptStart(written(0.05, {"status": {}}), written(0.05))
        start.check()  # nothing known yet: no reason to wait
        await start.settle()

    asyncio.run(scenario())


def test_a_retaken_task_comes_with_its_running_write_done() -> None:
    async def scenario() -> dict[str, Any]:
        start = AttemptStart({"status": {"phase": "Running", "attempts": 2}}, written(0.0))
        await start.settle()
        return await start.running

    assert asyncio.run(scenario())["status"]["attempts"] == 2
