"""How an attempt ends early: every failure is an AttemptFailed with a reason, a human message and whether a retry
could help; the runner turns it into the task's status."""

from __future__ import annotations

from typing import Any


class CancelledTask(Exception):
    """The task was deleted while it ran."""


class AttemptFailed(Exception):
    def __init__(self, reason: str, message: str, *, retryable: bool = False, webui_error: Any = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retryable = retryable
        self.webui_error = webui_error  # the Web UI's own error body, kept for the legacy .out record
