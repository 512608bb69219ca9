"""A task's outputs in S3: its claim on `<prefix>/<id>` (see sdtask/ownership.py), its images and `.out` record, and
the error record of a failed attempt (which never replaces a success). S3 outages are waited out within bounds."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from sdtask.agent.failures import AttemptFailed
from sdtask.clients.kube import Kube, is_not_found
from sdtask.clients.s3 import (
    S3Client,
    claim_json,
    describe_s3_error,
    get_json,
    put_json,
    put_object,
    replace_json_if,
    retry_transient,
)
from sdtask.completion import is_legacy
from sdtask.conditions import now_iso
from sdtask.config import AgentSettings
from sdtask.links import restore_links
from sdtask.media import decode_image_payload, detect_format
from sdtask.naming import image_key, output_location, owner_key, record_key, s3_uri
from sdtask.ownership import Claim, Owner, claimed_message, decide, owner_exists, owner_of, stored_owner
from sdtask.records import RecordContext, failure_record, is_success_record, success_record

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredOutputs:
    location: str
    images: list[str]
    record: str


class TaskOutputs:
    def __init__(self, settings: AgentSettings, kube: Kube, s3: S3Client) -> None:
        self.settings = settings
        self.kube = kube
        self.s3 = s3

    async def claim(self, task: dict[str, Any], prefix: str, task_id: str, tries: int = 3) -> None:
        """Make `<prefix>/<id>` this task's (see sdtask/ownership.py), or raise OutputClaimed (not retried: the
        other task keeps it until it is deleted)."""
        bucket, me = self.settings.output_bucket, owner_of(task)
        key, location = owner_key(prefix, task_id), output_location(self.settings.output_bucket, prefix, task_id)

        async def claim() -> None:
            stored, etag = await claim_json(self.s3, bucket, key, me.marker())
            for _ in range(tries):
                owner = stored_owner(stored)
                decision = decide(owner, me)
                if decision == Claim.OURS:
                    return
                if decision == Claim.REFUSED and owner is not None:
                    raise AttemptFailed("OutputClaimed", claimed_message(location, owner, checked=False))
                if decision == Claim.CHECK_OWNER and owner is not None and await self._owner_exists(owner):
                    raise AttemptFailed("OutputClaimed", claimed_message(location, owner))
                # The owner is gone: take over, unless another task did so since our read (then look again).
                if await replace_json_if(self.s3, bucket, key, me.marker(), etag):
                    log.info("task %s: %s taken over from %s, which is gone", task_id, location, owner)
                    return
                stored, etag = await claim_json(self.s3, bucket, key, me.marker())
            raise AttemptFailed("OutputUploadFailed", f"{location}: its owner keeps changing", retryable=True)

        try:
            # S3 unreachable for a while: wait for it, as the uploads do (a task failed now would only come back).
            await retry_transient(claim, within=self.settings.upload_retry_seconds)
        except AttemptFailed:
            raise
        except Exception as error:  # S3 down for longer, or refusing, as for the uploads
            raise AttemptFailed(
                "OutputUploadFailed",
                f"storing outputs in s3://{bucket} failed: {describe_s3_error(error)}",
                retryable=True,
            ) from None

    async def _owner_exists(self, owner: Owner) -> bool:
        try:
            found = await self.kube.get_task(owner.namespace, owner.name)
        except Exception as error:
            if is_not_found(error):
                return False
            raise
        return owner_exists(owner, found)

    async def store(
        self,
        task: dict[str, Any],
        prefix: str,
        task_id: str,
        response: dict[str, Any],
        images: list[str],
        model: str | None,
        started: dt.datetime,
        inlined: dict[str, str],
    ) -> StoredOutputs:
        """Images and the `.out` record (`inlined`: base64 -> link of the task's inputs, kept out of the record)."""
        bucket = self.settings.output_bucket
        uris = []
        objects: list[tuple[str, bytes, str]] = []
        try:
            for index, encoded in enumerate(images, start=1):
                try:
                    data = decode_image_payload(encoded)
                except ValueError as error:
                    raise AttemptFailed("BadOutput", f"image {index} from the Web UI is unreadable: {error}") from None
                media = detect_format(data)
                key = image_key(prefix, task_id, index, media.extension)
                objects.append((key, data, media.content_type))
                uris.append(s3_uri(bucket, key))
            record = record_key(prefix, task_id)
            stored = {**response, "parameters": restore_links(response.get("parameters"), inlined)}
            if "info" in stored:
                stored["info"] = restore_links(stored["info"], inlined)
            body = success_record(self.context(task, started, model), uris, stored, legacy=is_legacy(task))

            async def upload() -> None:
                # The keys are known before any upload: images and record go up at once (the status, written after,
                # is what tells a user they are complete). All end before a retry: the same keys, written again.
                puts = [put_object(self.s3, bucket, key, data, kind) for key, data, kind in objects]
                results = await asyncio.gather(*puts, put_json(self.s3, bucket, record, body), return_exceptions=True)
                for result in results:
                    if isinstance(result, BaseException):
                        raise result

            # S3 unreachable for a while: the images wait here rather than being generated again.
            await retry_transient(upload, within=self.settings.upload_retry_seconds)
        except AttemptFailed:
            raise
        except Exception as error:  # S3 down for longer, or refusing: the generation may be retried
            raise AttemptFailed(
                "OutputUploadFailed",
                f"storing outputs in s3://{bucket} failed: {describe_s3_error(error)}",
                retryable=True,
            ) from None
        return StoredOutputs(output_location(bucket, prefix, task_id), uris, s3_uri(bucket, record))

    def context(self, task: dict[str, Any], started: dt.datetime, model: str | None) -> RecordContext:
        metadata = task["spec"]["task"]["metadata"]
        return RecordContext(
            task_id=str(metadata.get("id", "")),
            runtime=self.settings.runtime,
            tasktype=str(metadata.get("tasktype", "")),
            pod=self.settings.pod_name,
            attempt=(task.get("status") or {}).get("attempts"),
            model=model,
            started=now_iso(started),
            finished=now_iso(),
        )

    async def store_error_record(
        self, task: dict[str, Any], prefix: str, task_id: str, failure: AttemptFailed, started: dt.datetime
    ) -> None:
        try:
            key = record_key(prefix, task_id)
            if is_success_record(await get_json(self.s3, self.settings.output_bucket, key)):
                log.info("task %s: an earlier success record stays; this failure is in the status", task_id)
                return  # a failed re-run never erases a result that was delivered
            record = failure_record(
                self.context(task, started, None),
                failure.reason,
                failure.message,
                failure.webui_error,
                legacy=is_legacy(task),
            )
            await put_json(self.s3, self.settings.output_bucket, key, record)
        except Exception as error:  # the record is a convenience; the status already carries the error
            log.warning("could not store the error record of %s: %s", task_id, describe_s3_error(error))
