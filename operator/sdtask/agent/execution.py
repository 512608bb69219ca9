"""Running one task inside a runtime pod: links -> model -> Web UI call -> S3 outputs -> status -> callback.

Every failure becomes an AttemptFailed (agent/failures.py); the runner turns it into the task's status. Nothing here
raises past `execute` for a task's bad input. The model switch lives in agent/switching.py, the S3 side (claim, images,
records) in agent/outputs.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sdtask.agent import metrics as agent_metrics
from sdtask.agent.failures import AttemptFailed, CancelledTask
from sdtask.agent.outputs import TaskOutputs
from sdtask.agent.progress import ProgressReporter
from sdtask.agent.queueing import QueuedCall, WebUIQueue
from sdtask.agent.starting import AttemptStart, StartRefused
from sdtask.agent.switching import ModelSwitcher
from sdtask.api.task import CONDITION_RUNNING
from sdtask.callbacks import CallbackOutbox
from sdtask.clients.fetcher import LinkFetcher, inline_links
from sdtask.clients.kube import Kube, is_conflict
from sdtask.clients.s3 import (
    S3Client,
)
from sdtask.clients.webui import (
    Checkpoint,
    WebUIClient,
    WebUIError,
    WebUITimeout,
    WebUIUnavailable,
    answered_checkpoint,
)
from sdtask.completion import (
    CallbackPolicy,
    Outcome,
    announce_start,
    end_failed_attempt,
    finish_task,
    running_on,
)
from sdtask.conditions import parse_time, set_condition
from sdtask.config import AgentSettings
from sdtask.constants import Phase
from sdtask.links import Inlined, LinkError, LinkLimits
from sdtask.logs import log_context
from sdtask.naming import validate_key_part
from sdtask.records import result_images
from sdtask.request import PreparedCall, makes_videos, prepare_payload
from sdtask.retry import max_retries

log = logging.getLogger(__name__)
COMPONENT = "sdtask-agent"


# What a generation gives: the model it ran on, the Web UI's answer, its images, the inlined inputs (base64 -> link).
Generation = tuple[str | None, dict[str, Any], list[str], dict[str, str]]


@dataclass(frozen=True)
class PreparedInput:
    call: PreparedCall
    inlined: Inlined
    wanted: str | None  # the checkpoint the task asks for (dynamic runtimes)
    target: Checkpoint | None  # that checkpoint as the Web UI lists it, if it was found ahead


def attempt_timeout(task: dict[str, Any], default: float, now: dt.datetime) -> float:
    """The task's own timeout (else the runtime's), never past its active deadline. Pure."""
    spec = task.get("spec") or {}
    timeout = float(spec.get("timeoutSeconds") or default)
    deadline = spec.get("activeDeadlineSeconds")
    created = parse_time(task["metadata"].get("creationTimestamp"))
    if deadline and created:
        remaining = (created + dt.timedelta(seconds=int(deadline)) - now).total_seconds()
        timeout = min(timeout, max(remaining, 1.0))
    return timeout


class TaskExecution:
    def __init__(
        self, settings: AgentSettings, kube: Kube, webui: WebUIClient, s3: S3Client, fetcher: LinkFetcher
    ) -> None:
        self.settings = settings
        self.kube = kube
        self.webui = webui
        self.queue = WebUIQueue(webui)
        self.s3 = s3
        self.fetcher = fetcher
        self.models = ModelSwitcher(settings, kube, webui, s3)
        self.outputs = TaskOutputs(settings, kube, s3)
        self.current = ""  # uid of the task being executed
        self._free: asyncio.Event | None = None  # set when the Web UI is done with the current task
        self._background: set[asyncio.Task[bool]] = set()  # start callbacks in flight
        self.cancelled = ""
        # The operator's callback policy (from the pod env), not the runtime's link policy.
        self.callbacks = CallbackPolicy(
            allow_private=settings.allow_private_callbacks,
            allowed_hosts=settings.allowed_callback_hosts,
            attempts=settings.callback_attempts,
            base_delay=settings.callback_base_delay_seconds,
        )
        self.outbox = CallbackOutbox(kube, self.callbacks, COMPONENT)
        self.generating = False
        self.finishing = False
        # Told of each call the current task has the Web UI run (the runner then sends the next one ahead).
        self.on_call: Callable[[QueuedCall], None] | None = None

    async def cancel(self, uid: str) -> None:
        """The task was deleted or ended elsewhere: stop its generation now, so the GPU is free for the next task.

        Not once this agent is writing the task's end itself (its own write is what the watch reports), and the Web
        UI is interrupted only while it generates (an idle Web UI has nothing to stop)."""
        if uid and uid == self.current and not self.finishing:
            self.cancelled = uid
            if self.generating:
                await self.queue.interrupt()

    async def execute(
        self,
        task: dict[str, Any],
        webui_free: asyncio.Event | None = None,
        prepared: asyncio.Future[PreparedInput] | None = None,
        ahead: QueuedCall | None = None,
    ) -> Phase | None:
        """Run one task to its end; None when it was cancelled (deleted) on the way.

        `webui_free` is set as soon as the Web UI is done with this task (its outputs are then stored and reported):
        the runner starts the next task's generation meanwhile. `prepared`: this task's `prepare`, started ahead.
        `ahead`: this task's call, sent to wait in the Web UI's queue while the task before it generated (see
        agent/queueing.py); an attempt that ends without using it discards it.
        """
        uid = task["metadata"].get("uid", "")
        self.current, self.cancelled = uid, ""
        self._free = webui_free
        self.generating, self.finishing = False, False
        meta = task["metadata"]
        agent_metrics.BUSY.set(1)
        try:
            with log_context(namespace=meta.get("namespace"), task=meta.get("name"), runtime=self.settings.runtime):
                log.info("task %s started", meta.get("name"))
                phase = await self._execute(task, prepared, ahead)
                ended = phase.value if phase else "not written (the task left Running)"
                log.info("task %s ended: %s", meta.get("name"), ended)
                return phase
        except CancelledTask:
            log.info("task %s was deleted: cancelled", task["metadata"]["name"])
            return None
        except Exception as error:
            if is_conflict(error):
                # The Running write was refused (the task changed since the watch showed it): its generation has
                # ended, but the runner decides what comes next (it may run the task again) before another task
                # takes the Web UI, so it sets `webui_free` itself.
                webui_free = None
            raise
        finally:
            if ahead is not None:
                self.queue.discard(ahead)  # nothing if it was answered
            self._release(uid, webui_free)

    def _release(self, uid: str, webui_free: asyncio.Event | None) -> None:
        """The generation is over: cancelling this task can no longer stop anything."""
        if self.current == uid:
            self.current = ""
            agent_metrics.BUSY.set(0)
        if webui_free is not None:
            webui_free.set()

    def _check_not_cancelled(self) -> None:
        if self.cancelled and self.cancelled == self.current:
            raise CancelledTask()

    async def _execute(
        self,
        task: dict[str, Any],
        prepared: asyncio.Future[PreparedInput] | None = None,
        ahead: QueuedCall | None = None,
    ) -> Phase | None:
        started = dt.datetime.now(dt.UTC)
        retaken = (task.get("status") or {}).get("phase") == Phase.RUNNING.value
        if retaken:
            # Taken again after an agent restart: that counts as an attempt, known before anything else is done.
            task = await self._mark_running(task, started, retaken)
            if self._retries_exhausted(task):
                attempts = task["status"]["attempts"]
                return await self._fail(
                    task,
                    AttemptFailed(
                        "AgentRestarted",
                        f"the agent restarted during the task {attempts - 1} time(s); no retries left",
                    ),
                )
        metadata = task["spec"]["task"]["metadata"]
        try:
            prefix = validate_key_part(str(metadata.get("prefix", "")), "prefix")
            task_id = validate_key_part(str(metadata.get("id", "")), "id", allow_slash=False)
        except ValueError as error:
            running = task if retaken else await self._mark_running(task, started, retaken)
            return await self._fail(running, AttemptFailed("InvalidTask", str(error)))
        # A dispatched task: the Running write and the output claim go beside the preparation, the model switch
        # and the generation (see agent/starting.py), not before them. Taken again: Running is written already, and
        # the claim still comes before the Web UI works for it, as it always did.
        start = AttemptStart(
            task if retaken else self._mark_running(task, started, retaken),
            self.outputs.claim(task, prefix, task_id),
        )
        try:
            if retaken:
                await asyncio.wait({start.claim})
            return await self._run(task, start, prefix, task_id, started, prepared, ahead)
        except (CancelledTask, asyncio.CancelledError):
            raise
        except Exception as error:  # a bug or hostile input must end the attempt, never leave the pod busy for good
            # Not Running here (409/404): that error, not this one, is what the runner acts on; nothing is written.
            task = await start.running
            log.exception("task %s: unexpected error", task["metadata"]["name"])
            text = f"the agent failed: {type(error).__name__}: {error}"[:1000]
            failure = AttemptFailed("InternalError", text, retryable=True)
            return await self._fail(task, failure)
        finally:
            await start.settle()

    def _retries_exhausted(self, task: dict[str, Any]) -> bool:
        spec, status = task.get("spec") or {}, task.get("status") or {}
        return int(status.get("attempts") or 1) > max_retries(spec) + 1

    async def _run(
        self,
        task: dict[str, Any],
        start: AttemptStart,
        prefix: str,
        task_id: str,
        started: dt.datetime,
        prepared: asyncio.Future[PreparedInput] | None = None,
        ahead: QueuedCall | None = None,
    ) -> Phase | None:
        uid, free = task["metadata"].get("uid", ""), self._free
        generation: Generation | None = None
        failure: AttemptFailed | None = None
        try:
            generation = await self._generate(task, started, start, prepared, ahead)
        except StartRefused:
            pass  # the write that failed says what to do, below
        except AttemptFailed as error:
            failure = error
        # Nothing is written before the task is Running here: a 409 (taken back) or 404 (deleted) raises, for the
        # runner to decide on, with nothing uploaded or reported.
        task = await start.running
        try:
            await start.claim  # and nothing goes to the folder before it is this task's (its error record included)
        except AttemptFailed as refused:
            self._release(uid, free)
            return await self._fail(task, refused)
        # A deleted task's partial images are not uploaded; a failure that came from the interruption is not
        # reported.
        self._check_not_cancelled()
        self._release(uid, free)  # from here on the next task may use the Web UI
        try:
            if failure is not None:
                raise failure
            assert generation is not None  # not refused: both start writes succeeded
            model, response, images, inlined = generation
            outputs = await self.outputs.store(task, prefix, task_id, response, images, model, started, inlined)
        except AttemptFailed as failed:
            await self.outputs.store_error_record(task, prefix, task_id, failed, started)
            return await self._fail(task, failed)
        count = len(outputs.images)
        outcome = Outcome(
            Phase.SUCCEEDED,
            "Completed",
            f"{count} image(s) stored under {outputs.location}",
            outputs.location,
            outputs.images,
            outputs.record,
            model,
        )
        # Only while the task is still Running here: a deadline failure written meanwhile is never overwritten.
        self.generating, self.finishing = False, True
        written = await finish_task(
            self.kube, task, outcome, COMPONENT, self.callbacks, self.outbox, running_on(self.settings.pod_name)
        )
        if written is None:
            return None
        return Phase.SUCCEEDED

    # --- steps --------------------------------------------------------------------------------------------------------
    async def _mark_running(self, task: dict[str, Any], now: dt.datetime, retaken: bool) -> dict[str, Any]:
        """Running on this pod. A task this pod's agent takes while it is already Running here was cut by an agent
        restart: that counts as a new attempt, so a task that kills its agent runs at most maxRetries + 1 times."""
        meta, status = task["metadata"], task.get("status") or {}
        attempts = int(status.get("attempts") or 1) + (1 if retaken else 0)
        message = f"running on pod {self.settings.pod_name} (attempt {attempts})"
        if retaken:
            message += " after an agent restart"
        conditions = set_condition(status.get("conditions"), CONDITION_RUNNING, True, "Started", message, now)
        patch = {
            "phase": Phase.RUNNING.value,
            "reason": "Started",
            "message": message,
            # Microseconds: tasks started within one second still order (whole seconds elsewhere, as Kubernetes).
            "startTime": now.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "attempts": attempts,
            "conditions": conditions,
        }
        # Only while the task is still ours (Scheduled or Running on this pod), with the version that was checked:
        # a task the operator took back meanwhile (409) is not run. No Event: the Running condition says it.
        updated = await self.kube.patch_task_status(meta["namespace"], meta["name"], patch, meta.get("resourceVersion"))
        attempt = int(status.get("attempts") or 1)
        # The opt-in start callback goes in the background: it never delays the generation.
        announcing = asyncio.create_task(
            announce_start(self.kube, updated, self.settings.pod_name, attempt, self.callbacks)
        )
        self._background.add(announcing)
        announcing.add_done_callback(self._background.discard)
        return updated

    async def prepare(self, task: dict[str, Any], started: dt.datetime | None = None) -> PreparedInput:
        """What can be done for a task before the Web UI is free: the call built, its links fetched, the checkpoint it
        needs looked up (and fetched into the models folder if missing). The runner does this for the next queued
        task while the current one generates, so the next generation starts as soon as the Web UI returns. Raises
        AttemptFailed for bad input (reported once the task is run, as without preparation)."""
        started = started or dt.datetime.now(dt.UTC)
        request = task["spec"]["task"]
        try:
            call = prepare_payload(str(request["metadata"].get("tasktype", "")), dict(request.get("content") or {}))
        except ValueError as error:
            raise AttemptFailed("InvalidTask", str(error)) from None
        limits = LinkLimits(
            max_links=self.settings.max_links,
            max_total_bytes=self.settings.max_total_download_bytes,
            # The links live within the attempt's time, like everything else.
            seconds=attempt_timeout(task, self.settings.request_timeout_seconds, started),
        )
        try:
            inlined = await inline_links(call.payload, self.fetcher.fetch, limits=limits)
        except LinkError as error:
            raise AttemptFailed("LinkFailed", f"could not fetch input: {error}") from None
        wanted = (task.get("status") or {}).get("model") or call.checkpoint
        target = None
        if self.settings.dynamic_model and wanted:
            # Only a look-up: the switch itself waits for the Web UI. A failure here is found again, and reported,
            # when the task runs.
            with contextlib.suppress(Exception):
                target = await self.models.find(wanted)
        return PreparedInput(call, inlined, wanted, target)

    async def _generate(
        self,
        task: dict[str, Any],
        started: dt.datetime,
        start: AttemptStart,
        prepared: asyncio.Future[PreparedInput] | None = None,
        ahead: QueuedCall | None = None,
    ) -> Generation:
        """The model it ran on, the Web UI's answer, its images (base64, the grid left out) and the inlined inputs
        (base64 -> link: kept out of the record). StartRefused once the Running write or the claim failed: the
        Web UI is then not asked to generate (a model switch already begun may end: the model report stays true).

        With `ahead` (the call already queued in the Web UI, on the model the task before it ran on) the model is
        not checked again; a call that waited while an interrupt went out is not trusted and is made again."""
        start.check()
        ready = await self._prepared(task, started, prepared)
        call = ready.call
        timeout = attempt_timeout(task, self.settings.request_timeout_seconds, started)
        payload = ready.inlined.content
        start.check()
        if ahead is not None and ahead.tainted:
            log.info("the call queued ahead may have been hit by an interrupt meant for the task before: sent again")
            self.queue.discard(ahead)
            ahead = None
        model = ahead.model if ahead is not None else await self.models.ensure(ready.wanted, ready.target)
        timeout = max(1.0, timeout - (dt.datetime.now(dt.UTC) - started).total_seconds())
        self._check_not_cancelled()  # deleted while links or the model loaded: don't start the generation
        start.check()
        meta = task["metadata"]

        async def write_progress(patch: dict[str, Any]) -> None:
            await start.running  # no progress before Running is written (a failed start skips the write)
            await self.kube.patch_task_status(meta["namespace"], meta["name"], patch)

        self.generating, returned, ran_on = True, False, None
        try:
            async with (
                start.interrupting(self.queue.interrupt),
                ProgressReporter(self.webui.progress, write_progress, interval=self.settings.progress_interval_seconds),
            ):
                queued = ahead if ahead is not None else await self.queue.send(call.endpoint, payload, timeout, model)
                if self.on_call is not None:
                    self.on_call(queued)
                response = await self.queue.answer(queued, timeout)
            returned, ran_on = True, answered_checkpoint(response)
        except WebUITimeout as error:
            interrupted = await self.queue.interrupt()
            note = "; generation interrupted" if interrupted else "; interrupt failed"
            raise AttemptFailed("Timeout", f"{error}{note}") from None
        except WebUIUnavailable as error:
            raise AttemptFailed("WebUIUnavailable", str(error), retryable=True) from None
        except WebUIError as error:
            raise AttemptFailed("WebUIError", str(error), webui_error=error.body) from None
        finally:
            self.generating = False
            self.models.generation_ended(returned, next_queued=self.queue.head() is not None, ran_on=ran_on)
        images = result_images(response, videos=makes_videos(payload))
        if not images:
            raise AttemptFailed("NoImages", f"the Web UI returned no images for {call.endpoint}")
        return model, response, images, ready.inlined.sources

    async def _prepared(
        self, task: dict[str, Any], started: dt.datetime, prepared: asyncio.Future[PreparedInput] | None
    ) -> PreparedInput:
        """The preparation done ahead (its AttemptFailed raised here, as if done now), else done now."""
        if prepared is not None and not prepared.cancelled():
            try:
                return await prepared
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # this execution itself is being cancelled
        return await self.prepare(task, started)

    async def report_model(self, model: str | None) -> None:
        await self.models.report(model)

    async def _fail(self, task: dict[str, Any], failure: AttemptFailed) -> Phase | None:
        self.generating, self.finishing = False, True
        log.info("task %s failed: %s: %s", task["metadata"]["name"], failure.reason, failure.message)
        return await end_failed_attempt(
            self.kube,
            task,
            failure.reason,
            failure.message,
            retryable=failure.retryable,
            backoff_seconds=self.settings.retry_backoff_seconds,
            component=COMPONENT,
            policy=self.callbacks,
            outbox=self.outbox,
            expect=running_on(self.settings.pod_name),
        )
