"""What follows a failed attempt: retries with a growing back-off, input errors never, and spec.maxRetries."""

import datetime as dt

from sdtask.api.task import DEFAULT_MAX_RETRIES
from sdtask.constants import Phase
from sdtask.retry import after_failed_attempt, backoff, max_retries

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def test_infrastructure_failures_retry_with_growing_backoff_then_fail() -> None:
    assert backoff(1, 10) == dt.timedelta(seconds=10) and backoff(3, 10) == dt.timedelta(seconds=40)
    first = after_failed_attempt(1, 2, True, NOW, 10)
    assert first.phase == Phase.PENDING and first.not_before == NOW + dt.timedelta(seconds=10)
    assert after_failed_attempt(3, 2, True, NOW, 10).phase == Phase.FAILED


def test_input_errors_never_retry() -> None:
    assert after_failed_attempt(1, 5, False, NOW).phase == Phase.FAILED


def test_a_task_retries_as_often_as_its_spec_says_else_the_models_default() -> None:
    assert max_retries({"maxRetries": 0}) == 0
    assert max_retries({"maxRetries": 5}) == 5
    assert max_retries({}) == max_retries({"maxRetries": None}) == DEFAULT_MAX_RETRIES
