"""The agent's main loop: watch the tasks whose status.pod names this pod and run them one at a time.

A task is taken when its status names this pod and it is Scheduled, or Running (this agent restarted mid-task: outputs
are numbered per task, so running it again overwrites, never duplicates). SIGTERM lets the current task finish: the
`busy` file keeps the Web UI container's preStop hook waiting until then.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import heapq
import logging
import signal
import threading
from pathlib import Path
from typing import Any

from kubernetes.client.exceptions import ApiException

from sdtask.addresses import AddressPolicy
from sdtask.agent import metrics as agent_metrics
from sdtask.agent.execution import PreparedInput, TaskExecution, attempt_timeout
from sdtask.agent.queueing import QueuedCall
from sdtask.checkpoints import same_checkpoint
from sdtask.clients.fetcher import LinkFetcher
from sdtask.clients.kube import Kube, load_api_client
from sdtask.clients.s3 import S3Settings, make_s3_client
from sdtask.clients.webui import WebUIClient
from sdtask.config import AgentSettings
from sdtask.constants import FIELD_POD, Phase
from sdtask.logs import bind

log = logging.getLogger(__name__)
WATCH_TIMEOUT_SECONDS = 30
MAX_FINISHING = 2  # tasks whose outputs may be stored and reported while the next one generates
TAKEN_PHASES = {Phase.SCHEDULED.value, Phase.RUNNING.value}


def run_order(task: dict[str, Any]) -> tuple[int, str, str]:
    """The operator's dispatch order (priority, then age): tasks assigned to this pod in one pass arrive in any order
    (their patches run concurrently), and the higher-priority one must still start first."""
    metadata = task["metadata"]
    priority = int((task.get("spec") or {}).get("priority") or 0)
    return -priority, str(metadata.get("creationTimestamp") or ""), str(metadata["name"])


def is_mine(task: dict[str, Any], pod_name: str) -> bool:
    status = task.get("status") or {}
    return status.get("pod") == pod_name and status.get("phase") in TAKEN_PHASES


def attempt_key(task: dict[str, Any]) -> tuple[str, int]:
    """One dispatch of a task: what a preparation done ahead is valid for."""
    return task["metadata"].get("uid", ""), int((task.get("status") or {}).get("attempts") or 0)


class RunQueue:
    """The names of the tasks waiting for the Web UI, in run order; the head can be looked at without taking it."""

    def __init__(self) -> None:
        self._heap: list[tuple[tuple[int, str, str], str]] = []
        self._changed = asyncio.Event()

    def put(self, order: tuple[int, str, str], name: str) -> None:
        heapq.heappush(self._heap, (order, name))
        self._changed.set()

    def peek(self) -> str | None:
        return self._heap[0][1] if self._heap else None

    async def get(self) -> str:
        while not self._heap:
            self._changed.clear()
            await self._changed.wait()
        return heapq.heappop(self._heap)[1]


class Agent:
    def __init__(self, settings: AgentSettings, kube: Kube, execution: TaskExecution) -> None:
        self.settings = settings
        self.kube = kube
        self.execution = execution
        self.ready = RunQueue()
        # The next task's preparation (links, model look-up), started while the current one holds the Web UI:
        # (task name, the dispatch it is valid for, the preparation). At most one, so memory stays bounded.
        self.preparing: tuple[str, tuple[str, int], asyncio.Task[PreparedInput]] | None = None
        # The next task's call, sent to wait in the Web UI's queue behind the current one (agent/queueing.py), and the
        # task sending it: (task name, the dispatch it is valid for, the call).
        self.ahead: tuple[str, tuple[str, int], QueuedCall] | None = None
        self.sending_ahead: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()  # a preparation started
        self.execution.on_call = self._call_sent
        self.generating = False  # a task holds the Web UI
        self.finishing: set[asyncio.Task[None]] = set()  # tasks generated, their outputs being stored and reported
        # The newest object the watch showed per queued task: the agent starts from it instead of reading the task
        # again (its Running patch is guarded by that object's resourceVersion, so a stale one costs a retry only).
        self.latest: dict[str, dict[str, Any]] = {}
        # uid -> attempt number of the tasks this process started: the watch echoes our own patches, never run twice.
        self.started: collections.OrderedDict[str, int] = collections.OrderedDict()
        self.stopping = threading.Event()
        self.busy_marker = Path(settings.state_dir) / "busy"

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        # No task is taken before the Web UI answers, and the operator learns the loaded model before the first
        # task, so model affinity works from the start (not only after a switch).
        loaded = await self.execution.webui.wait_until_ready(stop)
        if stop.is_set():
            return
        log.info("Web UI ready, model %s loaded", loaded or "no")
        with contextlib.suppress(Exception):  # reported again after every switch
            await self.execution.report_model(loaded)
        # A daemon thread, not the loop's executor: asyncio.run would wait for a blocked watch call at exit.
        watcher = threading.Thread(target=self._watch_forever, args=(loop,), name="task-watch", daemon=True)
        watcher.start()
        log.info("agent of pod %s/%s watching tasks", self.settings.namespace, self.settings.pod_name)
        try:
            while not stop.is_set():
                name = await self._next(stop)
                if name:
                    await self._run_one(name)
            self._drop_ahead()  # SIGTERM: the next task is not run here
            if self.finishing:  # SIGTERM: the tasks already generated are stored and reported first
                await asyncio.wait(self.finishing)
        finally:
            self.stopping.set()

    async def _next(self, stop: asyncio.Event) -> str | None:
        getter = asyncio.ensure_future(self.ready.get())
        stopper = asyncio.ensure_future(stop.wait())
        done, pending = await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        for future in pending:
            future.cancel()
        return getter.result() if getter in done else None

    async def _run_one(self, name: str) -> None:
        """Start the task and return as soon as the Web UI is free again: its outputs are stored and reported in
        the background while the next task generates (at most MAX_FINISHING at once)."""
        task = self.latest.pop(name, None)
        if task is None or not is_mine(task, self.settings.pod_name) or self._seen(task):
            self._drop_prepared(name)
            return
        prepared = self._take_prepared(name, task)
        ahead = self._take_ahead(name, task)
        while len(self.finishing) >= MAX_FINISHING:
            await asyncio.wait(self.finishing, return_when=asyncio.FIRST_COMPLETED)
        self._remember(task)
        self._set_busy(True)
        free = asyncio.Event()
        job = asyncio.create_task(self._execute(name, task, free, prepared, ahead))
        self.finishing.add(job)
        job.add_done_callback(self._finished)
        waiter = asyncio.ensure_future(free.wait())
        self.generating = True
        self._prepare_next()
        try:
            await asyncio.wait({job, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.generating = False
            waiter.cancel()

    # --- preparing the next task while the current one generates ------------------------------------------------------
    def _prepare_next(self) -> None:
        """Start preparing the next queued task, if a task holds the Web UI and nothing is being prepared."""
        if not self.generating or self.preparing is not None:
            return
        name = self.ready.peek()
        task = self.latest.get(name) if name else None
        if name is None or task is None or not is_mine(task, self.settings.pod_name) or self._seen(task):
            return
        self.preparing = (name, attempt_key(task), asyncio.create_task(self.execution.prepare(task)))
        self._changed.set()

    def _take_prepared(self, name: str, task: dict[str, Any]) -> asyncio.Task[PreparedInput] | None:
        """This task's preparation, if one was started for this very dispatch."""
        if self.preparing is None or self.preparing[0] != name:
            return None
        _, key, preparation = self.preparing
        self.preparing = None
        if key != attempt_key(task):
            preparation.cancel()  # an older dispatch's: its links may differ (the task was edited and re-queued)
            return None
        return preparation

    def _drop_prepared(self, name: str) -> None:
        """The task is not run here (taken back, deleted, already done): its preparation is dropped, and its call
        queued ahead too."""
        if self.preparing is not None and self.preparing[0] == name:
            self.preparing[2].cancel()
            self.preparing = None
        if self.ahead is not None and self.ahead[0] == name:
            self._drop_ahead()

    # --- the next task's call queued in the Web UI (agent/queueing.py) ----------------------------------------------
    def _call_sent(self, call: QueuedCall) -> None:
        """The current task's call is out: the next task's may now go to wait behind it."""
        if self.settings.queue_next_generation and self.ahead is None and self.sending_ahead is None:
            self.sending_ahead = asyncio.create_task(self._send_ahead(call))
            self.sending_ahead.add_done_callback(self._sent_ahead)

    def _sent_ahead(self, sender: asyncio.Task[None]) -> None:
        if self.sending_ahead is sender:
            self.sending_ahead = None
        if not sender.cancelled() and sender.exception() is not None:
            log.warning("queueing the next generation failed: %s", sender.exception())

    async def _send_ahead(self, head: QueuedCall) -> None:
        """Send the next queued task's call once it is prepared and `head` is known to be at the server: only a
        task dispatched to this pod and not started, whose model is the one `head` runs on."""
        queue = self.execution.queue
        while not head.done():
            preparing = self.preparing
            if preparing is None:  # wait for a task to arrive and its preparation to start
                changed = asyncio.ensure_future(self._changed.wait())
                await asyncio.wait({changed, head.answer}, return_when=asyncio.FIRST_COMPLETED)
                changed.cancel()
                self._changed.clear()
                continue
            name, key, preparation = preparing
            await asyncio.wait({preparation, head.answer}, return_when=asyncio.FIRST_COMPLETED)
            if head.done() or self.preparing is not preparing:
                continue
            if preparation.cancelled() or preparation.exception() is not None:
                return  # its failure is reported when the task runs, as without queueing
            ready = preparation.result()
            if not await queue.can_queue_behind(head):
                return
            task = self.latest.get(name)
            if (
                self.preparing is not preparing
                or self.ready.peek() != name
                or task is None
                or not is_mine(task, self.settings.pod_name)
                or self._seen(task)
                or (task.get("status") or {}).get("phase") != Phase.SCHEDULED.value
                or attempt_key(task) != key
                or (self.settings.dynamic_model and ready.wanted and not same_checkpoint(head.model, ready.wanted))
            ):
                return  # changed meanwhile, taken again after a restart, or it needs a model switch first
            own = attempt_timeout(task, self.settings.request_timeout_seconds, dt.datetime.now(dt.UTC))
            call = queue.send_ahead(ready.call.endpoint, ready.inlined.content, own + head.timeout, head.model)
            self.ahead = (name, key, call)
            log.debug("task %s queued in the Web UI behind the running generation", name)
            return

    def _take_ahead(self, name: str, task: dict[str, Any]) -> QueuedCall | None:
        """This task's call queued ahead, if one was sent for this very dispatch; any other is discarded."""
        if self.sending_ahead is not None:
            self.sending_ahead.cancel()
            self.sending_ahead = None
        if self.ahead is not None and self.ahead[0] == name and self.ahead[1] == attempt_key(task):
            call, self.ahead = self.ahead[2], None
            return call
        self._drop_ahead()  # another task's (a higher-priority one came first) or an older dispatch's
        return None

    def _drop_ahead(self) -> None:
        if self.sending_ahead is not None:
            self.sending_ahead.cancel()
            self.sending_ahead = None
        if self.ahead is not None:
            self.execution.queue.discard(self.ahead[2])
            self.ahead = None

    def _finished(self, job: asyncio.Task[None]) -> None:
        self.finishing.discard(job)
        if not self.finishing:
            self._set_busy(False)

    async def _execute(
        self,
        name: str,
        task: dict[str, Any],
        free: asyncio.Event,
        prepared: asyncio.Task[PreparedInput] | None = None,
        ahead: QueuedCall | None = None,
    ) -> None:
        key = attempt_key(task)
        try:
            try:
                phase = await self.execution.execute(task, free, prepared, ahead)
            except ApiException as error:
                if error.status != 409:
                    raise
                # Changed since the watch showed it (the operator may have taken it back): read it and decide again,
                # before the next task takes the Web UI (`free` is not set yet; any generation begun is over).
                self._forget(task)  # not started: the same attempt may come back to us
                dispatched = (task.get("status") or {}).get("phase") == Phase.SCHEDULED.value
                task = await self.kube.get_task(self.settings.namespace, name)
                if not is_mine(task, self.settings.pod_name):
                    log.info("task %s is no longer this pod's", name)
                    return
                if dispatched and (task.get("status") or {}).get("phase") == Phase.RUNNING.value:
                    # Started meanwhile by this very process (the newer dispatch's event came first): not a re-take
                    # after a restart, which would count an attempt.
                    self._remember(task)
                    log.info("task %s already started here", name)
                    return
                self._remember(task)
                if prepared is not None and attempt_key(task) != key:
                    prepared = None  # prepared for the older dispatch: its links may differ
                phase = await self.execution.execute(task, free, prepared)
            log.debug("task %s: %s", name, phase or "cancelled")  # execution logged its end already
        except ApiException as error:
            if error.status != 404:
                log.exception("task %s: API error", name)
            else:
                log.info("task %s was deleted while it ran", name)
        except Exception:  # a bug or an API outage must not kill the agent; the operator requeues
            log.exception("task %s: unexpected error", name)
        finally:
            free.set()

    def _seen(self, task: dict[str, Any]) -> bool:
        """Already started by this process: our own Running/Succeeded patches coming back, or an older attempt. A
        new dispatch (a retry on this pod) has a higher attempt number and is run."""
        status = task.get("status") or {}
        uid = task["metadata"].get("uid", "")
        if uid not in self.started:
            return False
        return status.get("phase") != Phase.SCHEDULED or int(status.get("attempts") or 0) <= self.started[uid]

    def _remember(self, task: dict[str, Any]) -> None:
        self.started[task["metadata"].get("uid", "")] = int((task.get("status") or {}).get("attempts") or 0)
        self.started.move_to_end(task["metadata"].get("uid", ""))
        while len(self.started) > 1000:
            self.started.popitem(last=False)

    def _forget(self, task: dict[str, Any]) -> None:
        self.started.pop(task["metadata"].get("uid", ""), None)

    def _set_busy(self, busy: bool) -> None:
        try:
            if busy:
                self.busy_marker.parent.mkdir(parents=True, exist_ok=True)
                self.busy_marker.touch()
            else:
                self.busy_marker.unlink(missing_ok=True)
        except OSError as error:
            log.warning("busy marker %s: %s", self.busy_marker, error)

    # --- watching (a worker thread: the official client is blocking) -------------------------------------------------
    def _watch_forever(self, loop: asyncio.AbstractEventLoop) -> None:
        selector = f"{FIELD_POD}={self.settings.pod_name}"
        while not self.stopping.is_set():
            try:
                listing = self.kube.list_tasks(self.settings.namespace, selector)
                for item in sorted(listing.get("items", []), key=lambda t: t["metadata"]["creationTimestamp"]):
                    self._offer(loop, item)
                version = listing["metadata"]["resourceVersion"]
                while not self.stopping.is_set():
                    for event in self.kube.watch_tasks(
                        self.settings.namespace, selector, version, WATCH_TIMEOUT_SECONDS
                    ):
                        obj = event["object"]
                        version = obj["metadata"]["resourceVersion"]
                        if event["type"] in ("ADDED", "MODIFIED"):
                            self._offer(loop, obj)
                        elif event["type"] == "DELETED" and self._deleted_for_real(obj):
                            asyncio.run_coroutine_threadsafe(self.execution.cancel(obj["metadata"]["uid"]), loop)
                            loop.call_soon_threadsafe(self._left, obj["metadata"]["name"])  # if only queued here
                        elif event["type"] == "DELETED":  # taken back from this pod before it started
                            loop.call_soon_threadsafe(self._left, obj["metadata"]["name"])
                        if self.stopping.is_set():
                            return
            except ApiException as error:
                if error.status == 400:  # the CRD has no selectable status.pod: older than this agent
                    log.error(
                        "the API server refuses to select tasks by status.pod (%s): the SDTask CRD predates this "
                        "agent; apply the chart's crds/ (Kubernetes 1.31 or later); retrying",
                        error.reason,
                    )
                    self.stopping.wait(10)
                elif error.status != 410:  # 410: our resourceVersion expired; list again
                    log.warning("watching tasks failed: %s; retrying", error.reason)
                    self.stopping.wait(2)
            except Exception as error:
                log.warning("watching tasks failed: %s; retrying", error)
                self.stopping.wait(2)

    def _deleted_for_real(self, task: dict[str, Any]) -> bool:
        """`kubectl delete sdt` cancels a task. A watch by field also reports DELETED when a task merely leaves the
        selector (its status.pod changed on requeue); then the object it shows no longer names this pod."""
        return (task.get("status") or {}).get("pod") == self.settings.pod_name

    def _left(self, name: str) -> None:
        """On the loop: a queued task left this pod before it started."""
        self.latest.pop(name, None)
        self._drop_prepared(name)

    def _offer(self, loop: asyncio.AbstractEventLoop, task: dict[str, Any]) -> None:
        if is_mine(task, self.settings.pod_name):
            loop.call_soon_threadsafe(self._enqueue, task)
        elif task["metadata"].get("uid") != self.execution.current:  # taken back before it started
            loop.call_soon_threadsafe(self._drop_prepared, task["metadata"]["name"])
        elif self._left_running(task):
            # Ended or requeued by someone else (a deadline, the pod counted lost): stop its generation now, so the
            # pod is not busy with a task that is over; nothing of it is uploaded or reported.
            asyncio.run_coroutine_threadsafe(self.execution.cancel(task["metadata"]["uid"]), loop)

    def _enqueue(self, task: dict[str, Any]) -> None:
        """On the loop: a task queued once however many events show it, with the newest object."""
        name = task["metadata"]["name"]
        if self._seen(task):
            return  # our own Running/Succeeded patches coming back
        if name not in self.latest:
            self.ready.put(run_order(task), name)
        self.latest[name] = task
        self._prepare_next()

    def _left_running(self, task: dict[str, Any]) -> bool:
        status = task.get("status") or {}
        return status.get("phase") != Phase.RUNNING.value or status.get("pod") != self.settings.pod_name


async def run_agent(settings: AgentSettings) -> int:
    settings.validate()
    bind(namespace=settings.namespace, runtime=settings.runtime, pod=settings.pod_name)
    agent_metrics.serve(settings.metrics_port)
    kube = Kube(load_api_client(component="agent"), field_manager="sdtask-agent", instance=settings.pod_name)
    s3 = make_s3_client(S3Settings(endpoint_url=settings.s3_endpoint or None, region=settings.s3_region))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with (
        WebUIClient(
            settings.webui_url,
            switch_timeout=settings.model_switch_timeout_seconds,
            credentials=settings.webui_api_auth,
        ) as webui,
        LinkFetcher(
            policy=AddressPolicy(settings.allow_private_links, settings.allowed_link_hosts),
            s3_client_factory=lambda: s3,
            s3_prefixes=settings.s3_link_prefixes(),
            max_bytes=settings.max_download_bytes,
            observe=agent_metrics.link_fetched,
        ) as fetcher,
    ):
        execution = TaskExecution(settings, kube, webui, s3, fetcher)
        agent = Agent(settings, kube, execution)
        try:
            await agent.run(stop)
        finally:
            # Callbacks still queued get a bounded time; what is left stays Pending for the operator's redelivery.
            await execution.outbox.close(timeout=10.0)
    return 0
