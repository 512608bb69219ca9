"""Running one task inside a runtime pod: links -> model -> Web UI call -> S3 outputs -> status -> callback.

Every failure becomes an AttemptFailed with a reason, a human message and whether a retry could help; the runner turns
it into the task's status. Nothing here raises past `execute` for a task's bad input.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdtask.checkpoints import same_checkpoint
from sdtask.clients.kube import Kube
from sdtask.clients.s3 import describe_s3_error, put_json, put_object
from sdtask.clients.webui import (
    Checkpoint,
    WebUIClient,
    WebUIError,
    WebUIException,
    WebUITimeout,
    WebUIUnavailable,
    match_checkpoint,
)
from sdtask.completion import CallbackPolicy, Outcome, end_failed_attempt, finish_task
from sdtask.conditions import now_iso, parse_time, set_condition
from sdtask.config import AgentSettings
from sdtask.constants import ANNOTATION_MODEL, Phase
from sdtask.links import LinkError, LinkFetcher, replace_links
from sdtask.media import decode_image_payload, detect_format
from sdtask.naming import image_key, output_location, parse_s3_uri, record_key, s3_uri, validate_key_part
from sdtask.request import prepare_payload

log = logging.getLogger(__name__)
COMPONENT = "sdtask-agent"


class CancelledTask(Exception):
    """The task was deleted while it ran."""


class AttemptFailed(Exception):
    def __init__(self, reason: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retryable = retryable


@dataclass(frozen=True)
class StoredOutputs:
    location: str
    images: list[str]
    record: str


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


def response_images(response: dict[str, Any]) -> list[str]:
    """txt2img/img2img/extra-batch answer `images`, extra-single-image answers `image`."""
    images = response.get("images")
    if isinstance(images, list):
        return [i for i in images if isinstance(i, str) and i]
    single = response.get("image")
    return [single] if isinstance(single, str) and single else []


def parse_info(response: dict[str, Any]) -> Any:
    info = response.get("info")
    if isinstance(info, str):
        try:
            return json.loads(info)
        except ValueError:
            return info
    return info


class TaskExecution:
    def __init__(self, settings: AgentSettings, kube: Kube, webui: WebUIClient, s3: Any, fetcher: LinkFetcher) -> None:
        self.settings = settings
        self.kube = kube
        self.webui = webui
        self.s3 = s3
        self.fetcher = fetcher
        self.current = ""  # uid of the task being executed
        self.cancelled = ""
        self.callbacks = CallbackPolicy(
            allow_private=settings.allow_private_links,
            allowed_hosts=settings.allowed_link_hosts,
            attempts=settings.callback_attempts,
            base_delay=settings.callback_base_delay_seconds,
        )

    async def cancel(self, uid: str) -> None:
        """The task was deleted: stop its generation now, so the GPU is free for the next task."""
        if uid and uid == self.current:
            self.cancelled = uid
            await self.webui.interrupt()

    async def execute(self, task: dict[str, Any]) -> Phase | None:
        """Run one task to its end; None when it was cancelled (deleted) on the way."""
        self.current, self.cancelled = task["metadata"].get("uid", ""), ""
        try:
            return await self._execute(task)
        except CancelledTask:
            log.info("task %s was deleted: cancelled", task["metadata"]["name"])
            return None
        finally:
            self.current = ""

    def _check_not_cancelled(self) -> None:
        if self.cancelled and self.cancelled == self.current:
            raise CancelledTask()

    async def _execute(self, task: dict[str, Any]) -> Phase:
        started = dt.datetime.now(dt.UTC)
        task = await self._mark_running(task, started)
        metadata = task["spec"]["task"]["metadata"]
        try:
            prefix = validate_key_part(str(metadata.get("prefix", "")), "prefix")
            task_id = validate_key_part(str(metadata.get("id", "")), "id", allow_slash=False)
        except ValueError as error:
            return await self._fail(task, AttemptFailed("InvalidTask", str(error)))
        try:
            model, response = await self._generate(task, started)
            self._check_not_cancelled()  # a deleted task's partial images are not uploaded
            outputs = await self._store(task, prefix, task_id, response, model, started)
        except AttemptFailed as failure:
            self._check_not_cancelled()  # the failure came from the interruption: nothing to report on
            await self._store_error_record(task, prefix, task_id, failure, started)
            return await self._fail(task, failure)
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
        await finish_task(self.kube, task, outcome, COMPONENT, self.callbacks)
        return Phase.SUCCEEDED

    # --- steps --------------------------------------------------------------------------------------------------------
    async def _mark_running(self, task: dict[str, Any], now: dt.datetime) -> dict[str, Any]:
        meta, status = task["metadata"], task.get("status") or {}
        message = f"running on pod {self.settings.pod_name} (attempt {status.get('attempts', 1)})"
        conditions = set_condition(status.get("conditions"), "Running", True, "Started", message, now)
        patch = {
            "phase": Phase.RUNNING.value,
            "reason": "Started",
            "message": message,
            "startTime": now_iso(now),
            "conditions": conditions,
        }
        updated = await self.kube.patch_task_status(meta["namespace"], meta["name"], patch)
        await self.kube.post_event(task, "Normal", "Started", message, COMPONENT)
        return updated

    async def _generate(self, task: dict[str, Any], started: dt.datetime) -> tuple[str | None, dict[str, Any]]:
        request = task["spec"]["task"]
        try:
            call = prepare_payload(str(request["metadata"].get("tasktype", "")), dict(request.get("content") or {}))
        except ValueError as error:
            raise AttemptFailed("InvalidTask", str(error)) from None
        try:
            payload = await replace_links(call.payload, self.fetcher.fetch)
        except LinkError as error:
            raise AttemptFailed("LinkFailed", f"could not fetch input: {error}") from None
        wanted = (task.get("status") or {}).get("model") or call.checkpoint
        model = await self._ensure_model(wanted)
        timeout = attempt_timeout(task, self.settings.request_timeout_seconds, started)
        self._check_not_cancelled()  # deleted while links or the model loaded: don't start the generation
        try:
            response = await self.webui.generate(call.endpoint, payload, timeout)
        except WebUITimeout as error:
            interrupted = await self.webui.interrupt()
            note = "; generation interrupted" if interrupted else "; interrupt failed"
            raise AttemptFailed("Timeout", f"{error}{note}") from None
        except WebUIUnavailable as error:
            raise AttemptFailed("WebUIUnavailable", str(error), retryable=True) from None
        except WebUIError as error:
            raise AttemptFailed("WebUIError", str(error)) from None
        if not response_images(response):
            raise AttemptFailed("NoImages", f"the Web UI returned no images for {call.endpoint}")
        return model, response

    async def _ensure_model(self, wanted: str | None) -> str | None:
        """Static runtimes never switch. Dynamic ones check the model exists BEFORE unloading anything."""
        try:
            loaded = await self.webui.loaded_checkpoint()
            if not self.settings.dynamic_model or not wanted or same_checkpoint(loaded, wanted):
                return loaded or wanted
            target = await self._find_checkpoint(wanted)
            if target is None:
                where = f" (also looked in {self.settings.models_s3_prefix})" if self.settings.models_s3_prefix else ""
                raise AttemptFailed("ModelNotFound", f"model {wanted} not found{where}; {loaded} stays loaded")
            await self.webui.switch_checkpoint(target.title)
        except WebUIUnavailable as error:
            raise AttemptFailed("WebUIUnavailable", str(error), retryable=True) from None
        except WebUIException as error:
            raise AttemptFailed("ModelSwitchFailed", f"switching to {wanted} failed: {error}") from None
        await self.kube.annotate_pod(self.settings.namespace, self.settings.pod_name, {ANNOTATION_MODEL: target.title})
        return target.title

    async def _find_checkpoint(self, wanted: str) -> Checkpoint | None:
        found = match_checkpoint(wanted, await self.webui.list_checkpoints())
        if found is None:
            await self.webui.refresh_checkpoints()
            found = match_checkpoint(wanted, await self.webui.list_checkpoints())
        if found is None and self.settings.models_s3_prefix and await self._download_model(wanted):
            await self.webui.refresh_checkpoints()
            found = match_checkpoint(wanted, await self.webui.list_checkpoints())
        return found

    async def _download_model(self, wanted: str) -> bool:
        """Copy the checkpoint from the runtime's model prefix into the shared models folder."""
        bucket, prefix = parse_s3_uri(self.settings.models_s3_prefix.rstrip("/") + "/")
        name = wanted.split(" [", 1)[0].rsplit("/", 1)[-1]
        candidates = [name] if "." in name else [f"{name}.safetensors", f"{name}.ckpt"]
        for candidate in candidates:
            target = Path(self.settings.models_dir) / candidate
            try:
                await asyncio.to_thread(self.s3.download_file, bucket, f"{prefix}{candidate}", str(target))
                return True
            except Exception as error:  # missing object: try the next name
                log.info(
                    "model %s not at s3://%s/%s%s: %s", wanted, bucket, prefix, candidate, describe_s3_error(error)
                )
        return False

    async def _store(
        self,
        task: dict[str, Any],
        prefix: str,
        task_id: str,
        response: dict[str, Any],
        model: str | None,
        started: dt.datetime,
    ) -> StoredOutputs:
        bucket = self.settings.output_bucket
        uris = []
        try:
            for index, encoded in enumerate(response_images(response), start=1):
                try:
                    data = decode_image_payload(encoded)
                except ValueError as error:
                    raise AttemptFailed("BadOutput", f"image {index} from the Web UI is unreadable: {error}") from None
                media = detect_format(data)
                key = image_key(prefix, task_id, index, media.extension)
                await put_object(self.s3, bucket, key, data, media.content_type)
                uris.append(s3_uri(bucket, key))
            record = record_key(prefix, task_id)
            await put_json(self.s3, bucket, record, self._record(task, started, model, uris, response=response))
        except AttemptFailed:
            raise
        except Exception as error:  # S3 down or refusing: the generation may be retried
            raise AttemptFailed(
                "OutputUploadFailed",
                f"storing outputs in s3://{bucket} failed: {describe_s3_error(error)}",
                retryable=True,
            ) from None
        return StoredOutputs(output_location(bucket, prefix, task_id), uris, s3_uri(bucket, record))

    def _record(
        self,
        task: dict[str, Any],
        started: dt.datetime,
        model: str | None,
        images: list[str],
        *,
        response: dict[str, Any] | None = None,
        error: AttemptFailed | None = None,
    ) -> dict[str, Any]:
        """The `.out` record: what was asked, what came back (parameters, seeds via info) or the error."""
        metadata = task["spec"]["task"]["metadata"]
        info = parse_info(response) if response else None
        return {
            "id": metadata.get("id"),
            "runtime": self.settings.runtime,
            "tasktype": metadata.get("tasktype"),
            "pod": self.settings.pod_name,
            "attempt": (task.get("status") or {}).get("attempts"),
            "model": model,
            "started": now_iso(started),
            "finished": now_iso(),
            "images": images,
            "parameters": (response or {}).get("parameters"),
            "info": info,
            "seeds": info.get("all_seeds") if isinstance(info, dict) else None,
            "error": {"reason": error.reason, "message": error.message} if error else None,
        }

    async def _store_error_record(
        self, task: dict[str, Any], prefix: str, task_id: str, failure: AttemptFailed, started: dt.datetime
    ) -> None:
        try:
            record = self._record(task, started, None, [], error=failure)
            await put_json(self.s3, self.settings.output_bucket, record_key(prefix, task_id), record)
        except Exception as error:  # the record is a convenience; the status already carries the error
            log.warning("could not store the error record of %s: %s", task_id, describe_s3_error(error))

    async def _fail(self, task: dict[str, Any], failure: AttemptFailed) -> Phase:
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
        )
