"""New tasks wait for their admission here, in a queue of their bodies, not in kopf's per-object workers.

kopf hands each object's events to a worker of that object; a handler that waits (for a free admission) keeps its
worker and the ten coroutines beneath it alive. In a burst of 10,000 new tasks the API server delivers them faster
than they can be admitted: 3,800 workers were waiting at once, about 25 KB each, and the operator's memory, once
taken, is not given back (Python's allocator keeps a partly used arena). A queued body costs a fifth of that, and
the handler's return lets the worker go.

Only the latest body of a task is kept (a newer event replaces the queued one, in its place in the line); a deleted
task leaves the line. A failed admission is tried again after a backoff; after a few failures the task is failed
with the error as its reason, so no task waits unadmitted for an event that may never come.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from sdtask import logs
from sdtask.clients.kube import describe_error, is_api_error
from sdtask.retry import backoff

log = logging.getLogger(__name__)

Body = dict[str, Any]
Admit = Callable[[Body], Awaitable[None]]
GiveUp = Callable[[Body, Exception], Awaitable[None]]

MAX_ADMISSION_FAILURES = 5


class AdmissionQueue:
    """Bodies of tasks to admit, in arrival order, by uid; `workers` admissions at once."""

    def __init__(self, admit: Admit, give_up: GiveUp, workers: int, retry_base_seconds: float) -> None:
        self._admit = admit
        self._give_up = give_up
        self._workers = workers
        self._retry_base_seconds = retry_base_seconds
        self._waiting: dict[str, Body] = {}  # uid -> latest body; the uid is in _line once while waiting
        self._line: asyncio.Queue[str] = asyncio.Queue()
        self._failures: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._retries: set[asyncio.TimerHandle] = set()

    def __len__(self) -> int:
        return len(self._waiting)

    @property
    def retries_waiting(self) -> int:
        """Failed admissions waiting for their backoff to end."""
        return len(self._retries)

    def start(self) -> None:
        for index in range(self._workers):
            self._tasks.add(asyncio.create_task(self._work(), name=f"admission worker {index}"))

    async def stop(self) -> None:
        for handle in self._retries:
            handle.cancel()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    def submit(self, uid: str, body: Body) -> None:
        if uid not in self._waiting:
            self._line.put_nowait(uid)
        self._waiting[uid] = body

    def drop(self, uid: str) -> None:
        """The task is gone (or no longer new): nothing to admit."""
        self._waiting.pop(uid, None)
        self._failures.pop(uid, None)

    async def _work(self) -> None:
        while True:
            uid = await self._line.get()
            body = self._waiting.pop(uid, None)
            if body is None:
                continue  # dropped while it waited
            meta = body.get("metadata") or {}
            # A long-lived worker: its log fields are those of the task at hand, for that task only.
            with logs.log_context(namespace=meta.get("namespace"), task=meta.get("name")):
                await self._admit_one(uid, body)

    async def _admit_one(self, uid: str, body: Body) -> None:
        try:
            await self._admit(body)
        except Exception as error:  # the worker serves every task: it must outlive any one admission
            failures = self._failures.get(uid, 0) + 1
            if failures >= MAX_ADMISSION_FAILURES:
                try:
                    await self._give_up(body, error)
                except Exception as give_up_error:
                    log.warning(
                        "failing the task after its failed admissions failed too: %s", describe_error(give_up_error)
                    )
                else:
                    self._failures.pop(uid, None)
                    return
            self._failures[uid] = failures
            delay = backoff(failures, self._retry_base_seconds).total_seconds()
            unforeseen = not is_api_error(error)  # a bug's traceback is worth its lines
            log.warning(
                "admission failed (%s); trying again in %.0f s", describe_error(error), delay, exc_info=unforeseen
            )
            self._retry_later(uid, body, delay)
        else:
            self._failures.pop(uid, None)

    def _retry_later(self, uid: str, body: Body, delay: float) -> None:
        def retry() -> None:
            self._retries.discard(handle)
            if uid in self._failures and uid not in self._waiting:  # not dropped, and no newer body queued meanwhile
                self.submit(uid, body)

        handle = asyncio.get_running_loop().call_later(delay, retry)
        self._retries.add(handle)
