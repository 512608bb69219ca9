"""The agent's calls in the Web UI's queue (agent/queueing.py), against a Web UI that behaves like the real one where
it matters here: one job at a time in arrival order, an interrupt stops whatever job runs, /progress shows the job."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import pytest

from sdtask.agent.queueing import WebUIQueue
from sdtask.clients.webui import WebUITimeout


class FifoWebUI:
    """Jobs run one at a time in the order they reached the lock (asyncio.Lock is first come, first served, as the
    real server's FIFOLock); an interrupt ends the running job early with no images."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.running: str | None = None
        self.stop = asyncio.Event()
        self.began: list[str] = []
        self.interrupted: list[str | None] = []
        self.progress_reads = 0
        self.timed: dict[str, float] = {}  # the generation time each call would report (from when it began)

    async def generate(
        self, endpoint: str, payload: dict[str, Any], timeout: float, began: Callable[[], float] | None = None
    ) -> dict[str, Any]:
        sent = time.monotonic()
        async with asyncio.timeout(timeout):
            async with self.lock:
                name = str(payload["prompt"])
                self.running, self.stop = name, asyncio.Event()
                self.began.append(name)
                try:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.stop.wait(), float(payload.get("seconds", 0.05)))
                    cut = self.stop.is_set()
                finally:
                    self.running = None
        self.timed[name] = time.monotonic() - max(sent, began() if began is not None else sent)
        return {"prompt": name, "images": [] if cut else [name]}

    async def progress(self) -> dict[str, Any]:
        self.progress_reads += 1
        return {"state": {"job": "scripts_txt2img" if self.running else ""}}

    async def interrupt(self) -> bool:
        self.interrupted.append(self.running)
        self.stop.set()
        return True


def run(scenario: Any) -> Any:
    return asyncio.run(asyncio.wait_for(scenario(), 10))


def test_a_call_sent_ahead_runs_right_after_the_running_one_in_order() -> None:
    async def scenario() -> tuple[list[str], dict[str, Any], dict[str, Any]]:
        webui = FifoWebUI()
        queue = WebUIQueue(webui)
        first = await queue.send("txt2img", {"prompt": "first", "seconds": 0.1}, 5, "model-a")
        assert await queue.can_queue_behind(first)
        second = queue.send_ahead("txt2img", {"prompt": "second"}, 5, first.model)
        assert queue.head() is first and queue.waiting() is second
        answers = await queue.answer(first, 5), await queue.answer(second, 5)
        return webui.began, *answers

    began, first, second = run(scenario)
    assert began == ["first", "second"]
    assert first["images"] == ["first"] and second["images"] == ["second"]


def test_a_fresh_call_is_queued_behind_only_once_the_web_ui_shows_it_running() -> None:
    async def scenario() -> tuple[bool, int]:
        webui = FifoWebUI()
        queue = WebUIQueue(webui)
        await webui.lock.acquire()  # someone else's job holds the Web UI: ours has not begun
        head = await queue.send("txt2img", {"prompt": "head", "seconds": 0.2}, 5, None)
        checking = asyncio.ensure_future(queue.can_queue_behind(head))
        await asyncio.sleep(0.05)
        assert not checking.done()  # no job of ours seen yet: a call sent now might overtake it
        webui.lock.release()
        behind = await checking
        await queue.answer(head, 5)
        return behind, webui.progress_reads

    behind, reads = run(scenario)
    assert behind and reads >= 2


def test_nothing_is_queued_behind_a_call_that_was_answered_first() -> None:
    async def scenario() -> bool:
        queue = WebUIQueue(FifoWebUI())
        head = await queue.send("txt2img", {"prompt": "quick", "seconds": 0}, 5, None)
        await queue.answer(head, 5)
        return await queue.can_queue_behind(head)

    assert not run(scenario)


def test_an_interrupt_for_the_running_call_taints_the_one_waiting_behind_it() -> None:
    async def scenario() -> tuple[bool, bool, list[str | None]]:
        webui = FifoWebUI()
        queue = WebUIQueue(webui)
        head = await queue.send("txt2img", {"prompt": "head", "seconds": 1}, 5, None)
        assert await queue.can_queue_behind(head)
        behind = queue.send_ahead("txt2img", {"prompt": "behind"}, 5, None)
        await queue.interrupt()
        await queue.answer(head, 5)
        await queue.answer(behind, 5)
        return head.tainted, behind.tainted, webui.interrupted

    head_tainted, behind_tainted, interrupted = run(scenario)
    assert interrupted == ["head"]
    assert behind_tainted and not head_tainted


def test_a_discarded_call_is_interrupted_as_soon_as_it_runs_and_the_next_waits_for_it() -> None:
    async def scenario() -> tuple[list[str], list[str | None], dict[str, Any]]:
        webui = FifoWebUI()
        queue = WebUIQueue(webui)
        head = await queue.send("txt2img", {"prompt": "head", "seconds": 0.1}, 5, None)
        assert await queue.can_queue_behind(head)
        unwanted = queue.send_ahead("txt2img", {"prompt": "unwanted", "seconds": 5}, 10, None)
        queue.discard(unwanted)
        assert (await queue.answer(head, 5))["images"] == ["head"]  # the running one is not touched
        following = await queue.send("txt2img", {"prompt": "next"}, 5, None)
        answer = await queue.answer(following, 5)
        assert unwanted.done()
        return webui.began, webui.interrupted, answer

    began, interrupted, answer = run(scenario)
    assert began == ["head", "unwanted", "next"]
    assert set(interrupted) == {"unwanted"}  # never the head, never the next one
    assert answer["images"] == ["next"]


def test_an_answer_waited_for_too_long_is_a_timeout_and_taints_the_call_behind() -> None:
    async def scenario() -> bool:
        queue = WebUIQueue(FifoWebUI())
        head = await queue.send("txt2img", {"prompt": "stuck", "seconds": 5}, 10, None)
        assert await queue.can_queue_behind(head)
        behind = queue.send_ahead("txt2img", {"prompt": "behind"}, 15, None)
        with pytest.raises(WebUITimeout):
            await queue.answer(head, 0.1)
        assert head.done() and queue.head() is behind
        queue.discard(behind)
        return behind.tainted

    assert run(scenario)


def test_a_queued_call_reports_its_generation_time_from_when_it_began_not_from_when_it_was_sent() -> None:
    async def scenario() -> dict[str, float]:
        webui = FifoWebUI()
        queue = WebUIQueue(webui)
        head = await queue.send("txt2img", {"prompt": "head", "seconds": 0.4}, 5, None)
        assert await queue.can_queue_behind(head)
        behind = queue.send_ahead("txt2img", {"prompt": "behind", "seconds": 0.05}, 5, None)
        await queue.answer(head, 5)
        await queue.answer(behind, 5)
        return webui.timed

    timed = run(scenario)
    assert timed["head"] >= 0.4
    assert timed["behind"] < 0.3  # its own 0.05 s, not the 0.4 s it waited behind the head
