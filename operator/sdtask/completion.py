"""Ending a task: the final status (with the response object of the old API), an Event, then the callback.

Both the agent (after a generation) and the operator (a task it cannot route, a lost pod with no retries left, a
deadline) end tasks, so both use this one path: every failure gets a reason, a message, an Event and a callback.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sdtask.api.task import (
    CONDITION_FAILED,
    CONDITION_RUNNING,
    CONDITION_SCHEDULED,
    CONDITION_SUCCEEDED,
)
from sdtask.callbacks import CallbackOutbox, CallbackPolicy, shared_outbox, signing_token, task_metadata
from sdtask.clients.kube import Kube, is_conflict, is_not_found
from sdtask.clients.outbound import Outbound
from sdtask.conditions import now_iso, set_condition
from sdtask.constants import ANNOTATION_REQUEST_FORMAT, Phase
from sdtask.request import callback_payload, response_object
from sdtask.retry import after_failed_attempt, max_retries

__all__ = ["CallbackPolicy", "Outcome", "end_failed_attempt", "final_status", "finish_task", "task_metadata"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    phase: Phase
    reason: str
    message: str
    output_location: str = ""
    images: Sequence[str] = ()
    output_url: str = ""
    model: str | None = None


def is_legacy(task: Mapping[str, Any]) -> bool:
    return (task.get("metadata", {}).get("annotations") or {}).get(ANNOTATION_REQUEST_FORMAT) == "legacy"


def final_status(task: Mapping[str, Any], outcome: Outcome, now: dt.datetime) -> dict[str, Any]:
    """The status patch that ends a task. Pure."""
    status = task.get("status") or {}
    succeeded = outcome.phase == Phase.SUCCEEDED
    model = outcome.model or status.get("model")
    conditions = set_condition(status.get("conditions"), CONDITION_RUNNING, False, outcome.reason, outcome.message, now)
    conditions = set_condition(conditions, CONDITION_SUCCEEDED, succeeded, outcome.reason, outcome.message, now)
    conditions = set_condition(conditions, CONDITION_FAILED, not succeeded, outcome.reason, outcome.message, now)
    has_callback = bool(((task.get("spec") or {}).get("callback") or {}).get("url"))
    return {
        "phase": outcome.phase.value,
        "reason": outcome.reason,
        "message": outcome.message,
        "pod": status.get("pod") or "",
        "model": model,
        "completionTime": now_iso(now),
        "notBefore": None,
        "progress": None,  # only a running generation has progress (null removes it in a merge patch)
        "output_location": outcome.output_location,
        "images": list(outcome.images),
        "output_url": outcome.output_url,
        "response": response_object(
            task_metadata(task), outcome.output_location, legacy=is_legacy(task), checkpoint=model
        ),
        "conditions": conditions,
        "callback": {"state": "Pending" if has_callback else "Disabled", "attempts": 0},
    }


@dataclass(frozen=True)
class Expect:
    """What the task must still be for a final write to apply: its phase, and (for an agent) its pod, and (for a
    lost pod's requeue) the attempt that ran there."""

    phases: frozenset[str | None]
    pod: str | None = None
    attempt: int | None = None

    def holds(self, task: Mapping[str, Any]) -> bool:
        status = task.get("status") or {}
        return (
            status.get("phase") in self.phases
            and (self.pod is None or status.get("pod") == self.pod)
            and (self.attempt is None or int(status.get("attempts") or 0) == self.attempt)
        )


def running_on(pod: str, attempt: int | None = None) -> Expect:
    return Expect(frozenset({Phase.RUNNING.value}), pod, attempt)


NOT_FINISHED = Expect(frozenset({None, Phase.PENDING.value, Phase.SCHEDULED.value, Phase.RUNNING.value}))


async def patch_status_if(
    kube: Kube, task: Mapping[str, Any], status: dict[str, Any], expect: Expect | None, *, tries: int = 5
) -> bool:
    """Patch the status only while `expect` holds; False when it no longer held (nothing written).

    The check and the write are one: the patch carries the resourceVersion of the read that passed the check, so
    a deadline failure written meanwhile makes it fail (409) instead of being overwritten by a success. The task as
    written is not decoded: no caller needs it, and decoding the answer was a good part of what a write cost.
    """
    meta = task["metadata"]
    if expect is None:
        await kube.write_task_status(meta["namespace"], meta["name"], status)
        return True
    if expect.holds(task) and meta.get("resourceVersion"):
        # The caller's copy passes the check: if the task is still that version (usually: the agent's own Running
        # write), one guarded write does it, without reading the task first.
        try:
            await kube.write_task_status(meta["namespace"], meta["name"], status, meta["resourceVersion"])
            return True
        except Exception as error:
            if is_not_found(error):
                return False
            if not is_conflict(error):
                raise
    for _ in range(tries):
        try:
            current = await kube.get_task(meta["namespace"], meta["name"])
        except Exception as error:
            if is_not_found(error):
                return False
            raise
        if not expect.holds(current):
            return False
        try:
            await kube.write_task_status(
                meta["namespace"], meta["name"], status, current["metadata"]["resourceVersion"]
            )
            return True
        except Exception as error:
            if is_not_found(error):
                return False
            if not is_conflict(error):
                raise
    return False


async def finish_task(
    kube: Kube,
    task: dict[str, Any],
    outcome: Outcome,
    component: str,
    policy: CallbackPolicy,
    outbox: CallbackOutbox | None = None,
    expect: Expect | None = None,
) -> dict[str, Any] | None:
    """Write the final status, post an Event, queue the callback (never waits for its delivery). Returns the status
    written, None when `expect` no longer held (someone else ended the task: no Event, no callback from here).
    Without an `outbox`, the process's shared one for `component` delivers the callback."""
    meta = task["metadata"]
    now = dt.datetime.now(dt.UTC)
    status = final_status(task, outcome, now)
    if not await patch_status_if(kube, task, status, expect):
        log.info("%s/%s: no longer %s; its end is not written", meta["namespace"], meta["name"], expect)
        return None
    event_type = "Normal" if outcome.phase == Phase.SUCCEEDED else "Warning"
    await kube.post_event(task, event_type, outcome.reason, outcome.message, component)
    if ((task.get("spec") or {}).get("callback") or {}).get("url"):
        (outbox or shared_outbox(kube, policy, component)).submit(task, status)
    return status


async def end_failed_attempt(
    kube: Kube,
    task: dict[str, Any],
    reason: str,
    message: str,
    *,
    retryable: bool,
    backoff_seconds: float,
    component: str,
    policy: CallbackPolicy,
    outbox: CallbackOutbox | None = None,
    expect: Expect | None = None,
) -> Phase | None:
    """Requeue the task with back-off when it may be retried, else end it as Failed (with Event and callback).
    None when `expect` no longer held: nothing was written."""
    status = task.get("status") or {}
    attempts = int(status.get("attempts") or 0)
    spec = task.get("spec") or {}
    allowed = max_retries(spec)
    now = dt.datetime.now(dt.UTC)
    outcome = after_failed_attempt(attempts, allowed, retryable, now, backoff_seconds)
    if outcome.phase == Phase.FAILED:
        if retryable:
            message += f" (no retries left after {attempts} attempt(s))"
        written = await finish_task(
            kube, task, Outcome(Phase.FAILED, reason, message), component, policy, outbox, expect
        )
        return Phase.FAILED if written is not None else None  # like a success, it keeps its status.pod
    retry_at = now_iso(outcome.not_before)
    message += f"; retrying after {retry_at} (attempt {attempts + 1} of {allowed + 1})"
    conditions = set_condition(status.get("conditions"), CONDITION_RUNNING, False, reason, message, now)
    conditions = set_condition(conditions, CONDITION_SCHEDULED, False, reason, message, now)
    requeue = {
        "phase": Phase.PENDING.value,
        "reason": reason,
        "message": message,
        "pod": "",
        "notBefore": retry_at,
        "progress": None,
        "conditions": conditions,
    }
    # status.pod emptied in the same write: the pod's agent no longer sees the task, and nothing is left to undo.
    if not await patch_status_if(kube, task, requeue, expect):
        return None
    await kube.post_event(task, "Warning", reason, message, component)
    return Phase.PENDING


def start_payload(task: Mapping[str, Any], pod: str, attempt: int) -> dict[str, Any]:
    """The opt-in callback when a task starts running (the old system sent one): the result callback's shape with
    `result: null` and `status: Running`, so one receiver handles both."""
    status = task.get("status") or {}
    payload = callback_payload(
        task_metadata(task), output_location="", image_urls=[], output_url="", runtime=status.get("runtime")
    )
    return {**payload, "result": None, "status": "Running", "pod": pod, "attempt": attempt}


async def announce_start(kube: Kube, task: dict[str, Any], pod: str, attempt: int, policy: CallbackPolicy) -> bool:
    """POST the start callback once per attempt when `spec.callback.onStart` asks for it. Best effort: it never
    delays or fails the task (run it in the background); True when delivered."""
    callback = (task.get("spec") or {}).get("callback") or {}
    status = task.get("status") or {}
    if not callback.get("url") or not callback.get("onStart"):
        return False
    if ((status.get("callback") or {}).get("startedAttempt") or 0) >= attempt:
        return False  # this attempt was announced before the agent restarted
    meta, url = task["metadata"], str(callback["url"])
    token, refusal = await signing_token(kube, meta["namespace"], callback.get("secretRef") or {})
    if refusal is not None:
        return False  # the result callback will report it
    async with Outbound(policy.addresses(), resolver=policy.resolver, read_timeout=policy.attempt_timeout) as outbound:
        result = await policy.send(url, start_payload(task, pod, attempt), token=token, outbound=outbound)
    if result.delivered:
        await kube.patch_task_status(meta["namespace"], meta["name"], {"callback": {"startedAttempt": attempt}})
    return result.delivered
