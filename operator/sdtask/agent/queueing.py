"""This pod's generation calls in the Web UI's queue: the next task's call is sent while the current one generates, so
the Web UI starts it the moment the current one ends, with no round trip between two generations on the GPU.

What the real server does (AUTOMATIC1111 v1.10): generation endpoints are plain functions that FastAPI runs in its
thread pool, each taking `modules/call_queue.py` `queue_lock`, a `modules/fifo_lock.py` FIFOLock; so calls run one at
a time in the order they reached the lock, and a waiting call's request (its images decoded already) sits in the
server until its turn. `/sdapi/v1/interrupt` takes no lock and stops whatever job runs; a job forgets an interrupt
that came before it began (`State.begin` resets it). Hence the rules here:

- At most one call waits behind the running one, and only behind a call known to be at the server already (itself
  sent ahead, or seen running in /progress): sent at the same moment, the later one could reach the lock first.
- The head (the oldest call not yet answered) is the one the Web UI runs. An interrupt meant for it can land on the
  call behind it when the head ends at that very moment: a call that waited behind while an interrupt was sent is
  `tainted`, and its answer is not trusted (the task generates again).
- A waiting call cannot be taken back out of the server's queue. When its task is not to run after all (deleted,
  taken back, its start refused), the call is `discard`ed: interrupted once it runs, until it returns, and the next
  call is not sent before that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sdtask.clients.webui import WebUITimeout, WebUIUnavailable, api_path

log = logging.getLogger(__name__)

# A discarded call is interrupted this often while it runs (an interrupt sent just before its job began is forgotten).
DISCARD_INTERRUPT_SECONDS = 0.1
# How soon /progress is asked again while waiting to see a call begin (doubling up to the cap).
BEGUN_POLL_SECONDS = 0.01
BEGUN_POLL_MAX_SECONDS = 0.5


class GenerationAPI(Protocol):
    """What the queue uses of the Web UI client (clients/webui.py WebUIClient)."""

    async def generate(
        self, endpoint: str, payload: dict[str, Any], timeout: float, began: Callable[[], float] | None = None
    ) -> dict[str, Any]: ...

    async def progress(self) -> dict[str, Any]: ...

    async def interrupt(self) -> bool: ...


@dataclass(eq=False)
class QueuedCall:
    """One generation call of ours, from the moment it is sent until it is answered."""

    endpoint: str
    timeout: float  # of the whole call, the wait in the queue included
    model: str | None  # the checkpoint it runs on (a call is queued only behind one on the same model)
    answer: asyncio.Task[dict[str, Any]] = field(init=False)
    sent: float = field(default_factory=time.monotonic)
    running_since: float | None = None  # when it became the head: the Web UI runs it from about then
    begun: bool = False  # known to have reached the server's lock (a call sent later runs after it)
    tainted: bool = False
    discarded: bool = False

    def done(self) -> bool:
        return self.answer.done()

    def began(self) -> float:
        """When the Web UI began running it, as far as we know (for the generation time)."""
        return self.running_since if self.running_since is not None else time.monotonic()


class WebUIQueue:
    """Sends generation calls to one Web UI and knows which of them it runs (see the module's rules)."""

    def __init__(self, webui: GenerationAPI) -> None:
        self.webui = webui
        self._calls: list[QueuedCall] = []  # unanswered, in the order sent
        self._answered = asyncio.Event()  # set whenever a call is answered
        self._stopping: set[asyncio.Task[None]] = set()  # discarded calls being interrupted

    # --- state ------------------------------------------------------------------------------------------------------
    def head(self) -> QueuedCall | None:
        """The call the Web UI runs (the oldest unanswered one)."""
        return self._calls[0] if self._calls else None

    def waiting(self) -> QueuedCall | None:
        """The call sent ahead that waits behind the head, if any."""
        return self._calls[1] if len(self._calls) > 1 else None

    # --- sending ------------------------------------------------------------------------------------------------------
    async def send(self, endpoint: str, payload: dict[str, Any], timeout: float, model: str | None) -> QueuedCall:
        """Send a call to run next: after any discarded call has returned, so that nothing of ours runs before it."""
        while any(call.discarded for call in self._calls):
            await self._next_answer()
        return self._send(endpoint, payload, timeout, model, ahead=bool(self._calls))

    def send_ahead(self, endpoint: str, payload: dict[str, Any], timeout: float, model: str | None) -> QueuedCall:
        """Send a call to wait behind the running one (`can_queue_behind` first). Its `timeout` covers the wait."""
        return self._send(endpoint, payload, timeout, model, ahead=True)

    def _send(
        self, endpoint: str, payload: dict[str, Any], timeout: float, model: str | None, ahead: bool
    ) -> QueuedCall:
        # Sent ahead, it reaches the lock after the head and before anything sent later.
        call = QueuedCall(endpoint, timeout, model, begun=ahead)
        call.running_since = None if self._calls else call.sent
        call.answer = asyncio.ensure_future(self.webui.generate(endpoint, payload, timeout, began=call.began))
        self._calls.append(call)
        call.answer.add_done_callback(lambda _: self._settle(call))
        return call

    def _settle(self, call: QueuedCall) -> None:
        if call.answer.cancelled() or isinstance(call.answer.exception(), (WebUITimeout, WebUIUnavailable)):
            # Given up without the server's answer: it may still run that job, and whatever interrupt follows may
            # land on the call behind it instead.
            for behind in self._calls:
                if behind is not call:
                    behind.tainted = True
        with contextlib.suppress(ValueError):
            self._calls.remove(call)
        if self._calls and self._calls[0].running_since is None:
            self._calls[0].running_since = time.monotonic()
        if call.discarded and not call.answer.cancelled():
            call.answer.exception()  # retrieved: nobody waits for a discarded call's answer
        self._answered.set()

    async def _next_answer(self) -> None:
        self._answered.clear()
        await self._answered.wait()

    async def can_queue_behind(self, head: QueuedCall) -> bool:
        """Wait until `head` is known to be at the server (so a call sent now runs after it); False once it is
        answered first, or when another call of ours already waits."""
        if head.done() or head is not self.head() or self.waiting() is not None:
            return False
        if not head.begun:
            head.begun = await self._seen_running(head)
        return head.begun and not head.done() and head is self.head() and self.waiting() is None

    async def _seen_running(self, head: QueuedCall) -> bool:
        """Poll /progress (no lock) until it shows a job, with a growing interval; False once `head` is answered."""
        wait = BEGUN_POLL_SECONDS
        while not head.done():
            try:
                state = (await self.webui.progress()).get("state") or {}
            except Exception:  # the Web UI is busy answering: just don't queue behind this call
                return False
            if state.get("job"):
                return not head.done()
            await asyncio.wait({head.answer}, timeout=wait)
            wait = min(wait * 2, BEGUN_POLL_MAX_SECONDS)
        return False

    # --- answers ------------------------------------------------------------------------------------------------------
    async def answer(self, call: QueuedCall, timeout: float) -> dict[str, Any]:
        """The call's answer, within `timeout` from now (a call sent ahead has waited already; its own time starts
        when it runs). On timeout the call is given up (its connection closed) and WebUITimeout raised."""
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(call.answer)
        except TimeoutError:
            call.answer.cancel()
            await asyncio.wait({call.answer})  # settled (and the calls behind it tainted) before anyone goes on
            raise WebUITimeout(api_path(call.endpoint), timeout) from None

    # --- stopping -----------------------------------------------------------------------------------------------------
    async def interrupt(self) -> bool:
        """Interrupt what the Web UI runs. The call waiting behind may be what it runs by now: it is tainted."""
        for call in self._calls[1:]:
            call.tainted = True
        return await self.webui.interrupt()

    def discard(self, call: QueuedCall) -> None:
        """The call's task is not to run: interrupt the call once it runs, until it returns (in the background)."""
        if call.done() or call.discarded:
            return
        call.discarded = True
        log.info("a generation queued in the Web UI is not wanted any more: it is interrupted when it begins")
        stopping = asyncio.ensure_future(self._stop_when_running(call))
        self._stopping.add(stopping)
        stopping.add_done_callback(self._stopping.discard)

    async def _stop_when_running(self, call: QueuedCall) -> None:
        while not call.done():
            if call is self.head():
                await self.webui.interrupt()  # not self.interrupt: only calls behind this one may be hit
                for behind in self._calls[1:]:
                    behind.tainted = True
                await asyncio.wait({call.answer}, timeout=DISCARD_INTERRUPT_SECONDS)
            else:
                await self._next_answer()
