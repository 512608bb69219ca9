"""The queue lock of the real server: first come, first served.

AUTOMATIC1111 v1.10 serialises generations (and model loads, refreshes) on `modules/call_queue.py` `queue_lock`, a
`modules/fifo_lock.py` FIFOLock: calls waiting for it run in the order they asked, which a plain `threading.Lock`
does not promise. Clients that queue a call behind a running one (the agent does) rely on that order.
"""

from __future__ import annotations

import collections
import threading
from types import TracebackType


class FIFOLock:
    """A lock granted in the order it was asked for. `waited` counts the acquisitions that had to wait."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._held = False
        self._waiting: collections.deque[threading.Event] = collections.deque()
        self.waited = 0

    def acquire(self) -> None:
        with self._guard:
            if not self._held:
                self._held = True
                return
            turn = threading.Event()
            self._waiting.append(turn)
            self.waited += 1
        turn.wait()  # release() hands the lock over: `_held` stays True for us

    def release(self) -> None:
        with self._guard:
            if self._waiting:
                self._waiting.popleft().set()
            else:
                self._held = False

    def __enter__(self) -> FIFOLock:
        self.acquire()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.release()
