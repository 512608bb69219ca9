"""Ending a task: the final status (with the response object of the old API), an Event, then the callback.

Both the agent (after a generation) and the operator (a task it cannot route, a lost pod with no retries left, a
deadline) end tasks, so both use this one path: every failure gets a reason, a message, an Event and a callback.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sdtask.clients.callback import send_callback
from sdtask.clients.kube import Kube
from sdtask.conditions import now_iso, set_condition
from sdtask.constants import ANNOTATION_REQUEST_FORMAT, LABEL_POD, Phase
from sdtask.links import address_refusal
from sdtask.request import callback_payload, response_object
from sdtask.retry import after_failed_attempt

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CallbackPolicy:
    allow_private: bool = False
    allowed_hosts: frozenset[str] = frozenset()
    attempts: int = 5
    base_delay: float = 1.0


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


def task_metadata(task: Mapping[str, Any]) -> dict[str, Any]:
    """The request's own metadata, with the runtime the operator routed it to (empty in the legacy form)."""
    metadata = dict(((task.get("spec") or {}).get("task") or {}).get("metadata") or {})
    routed = (task.get("status") or {}).get("runtime")
    if routed:
        metadata["runtime"] = routed
    return metadata


def final_status(task: Mapping[str, Any], outcome: Outcome, now: dt.datetime) -> dict[str, Any]:
    """The status patch that ends a task. Pure."""
    status = task.get("status") or {}
    succeeded = outcome.phase == Phase.SUCCEEDED
    model = outcome.model or status.get("model")
    conditions = set_condition(status.get("conditions"), "Running", False, outcome.reason, outcome.message, now)
    conditions = set_condition(conditions, "Succeeded", succeeded, outcome.reason, outcome.message, now)
    conditions = set_condition(conditions, "Failed", not succeeded, outcome.reason, outcome.message, now)
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


async def callback_refusal(url: str, policy: CallbackPolicy) -> str | None:
    """The same address policy as for links: a task must not make the cluster call its own private services."""
    host = urlsplit(url).hostname or ""
    if not host:
        return f"callback URL {url!r} has no host"
    if policy.allow_private or host.lower() in policy.allowed_hosts:
        return None
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None)
    except OSError as error:
        return f"callback host {host} does not resolve ({error.strerror or error})"
    for info in infos:
        refusal = address_refusal(ipaddress.ip_address(info[4][0]))
        if refusal:
            return f"callback to {host} refused: it resolves to {refusal}; allow private callbacks to permit it"
    return None


async def finish_task(
    kube: Kube, task: dict[str, Any], outcome: Outcome, component: str, policy: CallbackPolicy
) -> dict[str, Any]:
    """Write the final status, post an Event, deliver the callback. Returns the status written."""
    meta = task["metadata"]
    now = dt.datetime.now(dt.UTC)
    status = final_status(task, outcome, now)
    await kube.patch_task_status(meta["namespace"], meta["name"], status)
    event_type = "Normal" if outcome.phase == Phase.SUCCEEDED else "Warning"
    await kube.post_event(task, event_type, outcome.reason, outcome.message, component)
    callback = (task.get("spec") or {}).get("callback") or {}
    if callback.get("url"):
        await deliver_callback(kube, task, status, callback, component, policy)
    return status


async def deliver_callback(
    kube: Kube,
    task: dict[str, Any],
    status: dict[str, Any],
    callback: Mapping[str, Any],
    component: str,
    policy: CallbackPolicy,
) -> None:
    """Its state is its own condition: a callback that cannot be delivered never changes the task's result."""
    meta = task["metadata"]
    url = str(callback["url"])
    failed = status["phase"] != Phase.SUCCEEDED.value
    payload = callback_payload(
        task_metadata(task),
        output_location=status["output_location"],
        image_urls=status["images"],
        output_url=status["output_url"],
        error=status["message"] if failed else "",
        runtime=(task.get("status") or {}).get("runtime"),
    )
    refusal = await callback_refusal(url, policy)
    token = None
    secret_ref = callback.get("secretRef") or {}
    if refusal is None and secret_ref.get("name"):
        token = await kube.read_secret_value(meta["namespace"], secret_ref["name"], secret_ref.get("key", "token"))
        if token is None:
            refusal = f"callback secret {secret_ref['name']}/{secret_ref.get('key', 'token')} not found"
    if refusal is None:
        result = await send_callback(url, payload, token=token, attempts=policy.attempts, base_delay=policy.base_delay)
        delivered, attempts, error = result.delivered, result.attempts, result.last_error
    else:
        delivered, attempts, error = False, 0, refusal
    now = dt.datetime.now(dt.UTC)
    message = f"delivered to {urlsplit(url).hostname}" if delivered else f"not delivered: {error}"
    patch = {
        "callback": {
            "state": "Delivered" if delivered else "Failed",
            "attempts": attempts,
            "lastError": error,
            "lastAttemptTime": now_iso(now),
        },
        "conditions": set_condition(
            status["conditions"],
            "CallbackDelivered",
            delivered,
            "Delivered" if delivered else "DeliveryFailed",
            message,
            now,
        ),
    }
    await kube.patch_task_status(meta["namespace"], meta["name"], patch)
    if not delivered:
        await kube.post_event(task, "Warning", "CallbackFailed", message, component)


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
) -> Phase:
    """Requeue the task with back-off when it may be retried, else end it as Failed (with Event and callback)."""
    meta, status = task["metadata"], task.get("status") or {}
    attempts = int(status.get("attempts") or 0)
    spec = task.get("spec") or {}
    max_retries = int(spec["maxRetries"]) if spec.get("maxRetries") is not None else 2
    now = dt.datetime.now(dt.UTC)
    outcome = after_failed_attempt(attempts, max_retries, retryable, now, backoff_seconds)
    if outcome.phase == Phase.FAILED:
        if retryable:
            message += f" (no retries left after {attempts} attempt(s))"
        await finish_task(kube, task, Outcome(Phase.FAILED, reason, message), component, policy)
        return Phase.FAILED  # like a success, it keeps its pod label: which pod ran it
    retry_at = now_iso(outcome.not_before)
    message += f"; retrying after {retry_at} (attempt {attempts + 1} of {max_retries + 1})"
    conditions = set_condition(status.get("conditions"), "Running", False, reason, message, now)
    conditions = set_condition(conditions, "Scheduled", False, reason, message, now)
    await kube.patch_task_status(
        meta["namespace"],
        meta["name"],
        {
            "phase": Phase.PENDING.value,
            "reason": reason,
            "message": message,
            "pod": "",
            "notBefore": retry_at,
            "progress": None,
            "conditions": conditions,
        },
    )
    await kube.patch_task_labels(meta["namespace"], meta["name"], {LABEL_POD: None})
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
    if await callback_refusal(url, policy) is not None:
        return False  # the result callback will report the refusal
    token = None
    secret_ref = callback.get("secretRef") or {}
    if secret_ref.get("name"):
        token = await kube.read_secret_value(meta["namespace"], secret_ref["name"], secret_ref.get("key", "token"))
        if token is None:
            return False
    result = await send_callback(
        url, start_payload(task, pod, attempt), token=token, attempts=policy.attempts, base_delay=policy.base_delay
    )
    if result.delivered:
        await kube.patch_task_status(meta["namespace"], meta["name"], {"callback": {"startedAttempt": attempt}})
    return result.delivered
