"""Delivering a finished task's callback, from an outbox that never holds up the caller.

A slow or dead receiver must not block the agent (which would then sit on its next task) nor the operator's
housekeeping (every namespace waits behind it). So ending a task only *queues* its callback; a few workers deliver
from the queue, each delivery bounded in time (per attempt and overall) and in the bytes read. The state of the
delivery is written to `status.callback` and the `CallbackDelivered` condition; it never changes the task's result.

The task's status says `callback.state: Pending` until a delivery ends: when the process dies first, the operator's
redelivery (it looks for long-Pending callbacks) takes over, so a callback is delivered at least once.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from sdtask.addresses import AddressPolicy
from sdtask.api.task import CONDITION_CALLBACK_DELIVERED
from sdtask.clients.callback import (
    DEFAULT_ATTEMPT_TIMEOUT,
    DEFAULT_ATTEMPTS,
    DEFAULT_DEADLINE,
    CallbackResult,
    send_callback,
)
from sdtask.clients.kube import Kube
from sdtask.clients.outbound import Outbound, Resolver
from sdtask.conditions import now_iso, set_condition
from sdtask.constants import LABEL_CALLBACK_SECRET, Phase
from sdtask.request import callback_payload

log = logging.getLogger(__name__)

CALLBACK_POLICY_SETTING = "allowPrivateCallbacks (SDTASK_ALLOW_PRIVATE_CALLBACKS)"


@dataclass(frozen=True)
class CallbackPolicy:
    """How callbacks are sent: the operator's callback address policy (agents get it through their pod env)."""

    allow_private: bool = False
    allowed_hosts: frozenset[str] = frozenset()
    attempts: int = DEFAULT_ATTEMPTS
    base_delay: float = 1.0
    attempt_timeout: float = DEFAULT_ATTEMPT_TIMEOUT
    deadline: float = DEFAULT_DEADLINE
    resolver: Resolver | None = field(default=None, compare=False)  # tests replace DNS

    def addresses(self) -> AddressPolicy:
        return AddressPolicy(self.allow_private, self.allowed_hosts, setting=CALLBACK_POLICY_SETTING)

    async def send(self, url: str, payload: Any, *, token: str | None, outbound: Outbound) -> CallbackResult:
        """One callback (result or start) under this policy's attempts and time limits."""
        return await send_callback(
            url,
            payload,
            token=token,
            outbound=outbound,
            attempts=self.attempts,
            base_delay=self.base_delay,
            timeout=self.attempt_timeout,
            deadline=self.deadline,
        )


def task_metadata(task: Mapping[str, Any]) -> dict[str, Any]:
    """The request's own metadata, with the runtime the operator routed it to (empty in the legacy form)."""
    metadata = dict(((task.get("spec") or {}).get("task") or {}).get("metadata") or {})
    routed = (task.get("status") or {}).get("runtime")
    if routed:
        metadata["runtime"] = routed
    return metadata


async def deliver_callback(
    kube: Kube,
    outbound: Outbound,
    task: Mapping[str, Any],
    status: Mapping[str, Any],
    component: str,
    policy: CallbackPolicy,
) -> bool:
    """Send the callback of a finished task and record the result in its status. True when delivered."""
    meta = task["metadata"]
    callback = (task.get("spec") or {}).get("callback") or {}
    url = str(callback.get("url") or "")
    failed = status.get("phase") != Phase.SUCCEEDED.value
    payload = callback_payload(
        task_metadata(task),
        output_location=status.get("output_location") or "",
        image_urls=list(status.get("images") or []),
        output_url=status.get("output_url") or "",
        error=(status.get("message") or "") if failed else "",
        runtime=(task.get("status") or {}).get("runtime"),
    )
    token, refusal = await signing_token(kube, meta["namespace"], callback.get("secretRef") or {})
    if refusal is None:
        result = await policy.send(url, payload, token=token, outbound=outbound)
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
            status.get("conditions"),
            CONDITION_CALLBACK_DELIVERED,
            delivered,
            "Delivered" if delivered else "DeliveryFailed",
            message,
            now,
        ),
    }
    await kube.patch_task_status(meta["namespace"], meta["name"], patch)
    if not delivered:
        await kube.post_event(dict(task), "Warning", "CallbackFailed", message, component)
    return delivered


async def signing_token(kube: Kube, namespace: str, secret_ref: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The token that signs the callback, or why there is none (then nothing is sent)."""
    name = secret_ref.get("name")
    if not name:
        return None, None
    key = str(secret_ref.get("key") or "token")
    token = await kube.read_secret_value(namespace, str(name), key, required_label=LABEL_CALLBACK_SECRET)
    if token is None:
        return None, f"callback secret {name}/{key} not found or not labelled {LABEL_CALLBACK_SECRET}=true"
    return token, None


class CallbackOutbox:
    """A queue of callbacks to deliver and the workers that deliver them. `submit` never waits.

    One outbox per process (agent or operator); `close()` gives queued deliveries a bounded time to finish. A task
    already queued or being delivered is not queued twice.
    """

    def __init__(
        self, kube: Kube, policy: CallbackPolicy, component: str, *, workers: int = 4, max_queued: int = 10_000
    ) -> None:
        self.kube = kube
        self.policy = policy
        self.component = component
        self._queue: asyncio.Queue[tuple[dict[str, Any], dict[str, Any]]] = asyncio.Queue(max_queued)
        self._pending: set[str] = set()
        self._workers: list[asyncio.Task[None]] = []
        self._worker_count = max(1, workers)
        self._outbound = Outbound(policy.addresses(), resolver=policy.resolver, read_timeout=policy.attempt_timeout)

    def submit(self, task: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
        """Queue the callback of a finished task; False when it is already queued or the queue is full (then the
        status stays Pending and the operator's redelivery picks it up)."""
        uid = str(task["metadata"].get("uid") or task["metadata"]["name"])
        if uid in self._pending:
            return False
        try:
            self._queue.put_nowait((dict(task), dict(status)))
        except asyncio.QueueFull:
            log.warning("callback outbox full; %s left Pending for redelivery", task["metadata"]["name"])
            return False
        self._pending.add(uid)
        self._start()
        return True

    @property
    def queued(self) -> int:
        return len(self._pending)

    def _start(self) -> None:
        if not self._workers:
            self._workers = [asyncio.create_task(self._work()) for _ in range(self._worker_count)]

    async def _work(self) -> None:
        while True:
            task, status = await self._queue.get()
            uid = str(task["metadata"].get("uid") or task["metadata"]["name"])
            try:
                await deliver_callback(self.kube, self._outbound, task, status, self.component, self.policy)
            except Exception as error:  # the status write failed: leave it Pending for redelivery
                log.warning("callback of %s: %s", task["metadata"]["name"], error)
            finally:
                self._pending.discard(uid)
                self._queue.task_done()

    async def drain(self, timeout: float) -> bool:
        """Wait until every queued callback was attempted, at most `timeout` seconds. True when all were."""
        try:
            async with asyncio.timeout(timeout):
                await self._queue.join()
            return True
        except TimeoutError:
            return False

    async def close(self, timeout: float = 10.0) -> None:
        await self.drain(timeout)
        for worker in self._workers:
            worker.cancel()
        for worker in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        self._workers = []
        await self._outbound.aclose()


_shared: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, CallbackOutbox]] = weakref.WeakKeyDictionary()


def shared_outbox(kube: Kube, policy: CallbackPolicy, component: str) -> CallbackOutbox:
    """The outbox of this event loop and component, for callers that don't hold one of their own."""
    outboxes = _shared.setdefault(asyncio.get_running_loop(), {})
    outbox = outboxes.get(component)
    if outbox is None or outbox.policy != policy:
        outbox = outboxes[component] = CallbackOutbox(kube, policy, component)
    return outbox
