"""The two writes that make an attempt this pod's: the Running status (guarded by the resourceVersion the watch
showed: a 409 means the operator took the task back, a 404 that it was deleted) and the claim on its output folder
(sdtask/ownership.py). Each is a round trip of 10-40 ms under load; the agent runs them beside the attempt's
preparation, model switch and generation rather than before them, so the Web UI starts as soon as it is free.

What stays ordered: the generation does not start once either write is known to have failed, and is interrupted as
soon as one fails while it runs; nothing reaches the output folder before the claim succeeded, and no status (final,
progress) is written before the Running one (the callers await `running` / `claim` first).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)

# The Web UI forgets an interrupt that comes before its job began (modules/shared_state.py State.begin resets
# `interrupted`): a generation whose request is still on its way is interrupted again until it returns.
INTERRUPT_REPEAT_SECONDS = 0.25


class StartRefused(Exception):
    """One of the start writes failed before the generation began: it is not started (the write's own error, read
    from `running` / `claim`, says what happens next)."""


def _failed(future: asyncio.Future[Any]) -> bool:
    return future.done() and (future.cancelled() or future.exception() is not None)


class AttemptStart:
    """`running` (the task as the Running write left it) and `claim` (None, or AttemptFailed), already under way."""

    def __init__(
        self, running: Coroutine[Any, Any, dict[str, Any]] | dict[str, Any], claim: Coroutine[Any, Any, None]
    ) -> None:
        if isinstance(running, dict):  # written before (a task taken again after an agent restart)
            done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            done.set_result(running)
            self.running: asyncio.Future[dict[str, Any]] = done
        else:
            self.running = asyncio.ensure_future(running)
        self.claim: asyncio.Future[None] = asyncio.ensure_future(claim)

    def refused(self) -> bool:
        """Either write is known to have failed."""
        return _failed(self.running) or _failed(self.claim)

    def check(self) -> None:
        """Before a step that uses the Web UI: raise StartRefused once either write failed."""
        if self.refused():
            raise StartRefused()

    async def until_refused(self) -> None:
        """Return as soon as either write fails; never while both succeed (cancel it)."""
        pending: set[asyncio.Future[Any]] = {self.running, self.claim}
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if any(_failed(future) for future in done):
                return
        await asyncio.Event().wait()

    @contextlib.asynccontextmanager
    async def interrupting(self, interrupt: Callable[[], Awaitable[bool]]) -> AsyncIterator[None]:
        """Around the generation call: a write failing meanwhile interrupts it (repeatedly, until the call returns)."""

        async def stop_when_refused() -> None:
            await self.until_refused()
            log.info("the task is not this pod's to run (its start was refused): interrupting the generation")
            while True:
                await interrupt()
                await asyncio.sleep(INTERRUPT_REPEAT_SECONDS)

        watcher = asyncio.create_task(stop_when_refused(), name="start-watch")
        try:
            yield
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def settle(self) -> None:
        """Wait for both writes to end (whatever their result): none is left in flight when the attempt ends."""
        writes: list[asyncio.Future[Any]] = [self.running, self.claim]
        await asyncio.wait(writes)
        for future in writes:
            if not future.cancelled():
                future.exception()  # retrieved: the caller decided on it (or it no longer matters)
