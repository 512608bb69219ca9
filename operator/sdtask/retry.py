"""What happens after an attempt fails: retry with backoff, or fail the task. Pure."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sdtask.api.task import DEFAULT_MAX_RETRIES
from sdtask.constants import Phase

MAX_BACKOFF = dt.timedelta(minutes=10)


def max_retries(spec: Mapping[str, Any]) -> int:
    """A task's spec.maxRetries, else the model's default."""
    value = spec.get("maxRetries")
    return int(value) if value is not None else DEFAULT_MAX_RETRIES


@dataclass(frozen=True)
class AfterFailure:
    phase: Phase
    not_before: dt.datetime | None


def backoff(attempts: int, base_seconds: float) -> dt.timedelta:
    """Exponential: base, 2*base, 4*base ... capped, so a flapping dependency isn't hammered."""
    return min(dt.timedelta(seconds=base_seconds * 2 ** max(attempts - 1, 0)), MAX_BACKOFF)


def after_failed_attempt(
    attempts: int, max_retries: int, retryable: bool, now: dt.datetime, base_seconds: float = 10.0
) -> AfterFailure:
    """`attempts` counts the attempt that just failed. Input errors (bad link, missing model) are never retried."""
    if retryable and attempts <= max_retries:
        return AfterFailure(Phase.PENDING, now + backoff(attempts, base_seconds))
    return AfterFailure(Phase.FAILED, None)
