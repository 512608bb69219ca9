"""Checkpoint delivery from the runtime's `models.s3Prefix` into the folder the Web UI scans (`--ckpt-dir`).

One path for both kinds of runtime: the `fetch-model` init container of a static runtime (before the Web UI starts,
so it never starts without its checkpoint) and the agent of a dynamic runtime (on demand, before a switch).

- A file already there with the object's size is not downloaded again (a persistent volume keeps it across pods).
- The object's size is checked against a cap and the free space first, and the download goes to a hidden partial
  file renamed into place once complete, so the Web UI never lists a half-written checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from sdtask.checkpoints import basename, split_hash
from sdtask.clients.s3 import S3Client, S3Settings, describe_s3_error, make_s3_client
from sdtask.config import AgentSettings
from sdtask.naming import parse_s3_uri

log = logging.getLogger(__name__)

CHECKPOINT_EXTENSIONS = (".safetensors", ".ckpt")


class ModelFetchError(Exception):
    """The checkpoint can't be delivered: the message names the object and why."""


@dataclass(frozen=True)
class FetchedModel:
    path: Path
    size: int
    downloaded: bool  # False when the file was already in place


def candidate_files(wanted: str) -> list[str]:
    """File names a requested checkpoint may have in the bucket: as named, or its stem with a model extension."""
    name = basename(split_hash(wanted)[0])
    if name.lower().endswith(CHECKPOINT_EXTENSIONS):
        return [name]
    return [f"{name}{extension}" for extension in CHECKPOINT_EXTENSIONS]


def fetch_checkpoint(client: S3Client, s3_prefix: str, wanted: str, dest: Path, max_bytes: int) -> FetchedModel:
    """Bring `wanted` from `s3_prefix` into `dest` (synchronous: run it in a thread from async code)."""
    bucket, prefix = parse_s3_uri(s3_prefix.rstrip("/") + "/")
    missing: list[str] = []
    for name in candidate_files(wanted):
        key = f"{prefix}{name}"
        try:
            head = client.head_object(Bucket=bucket, Key=key)
        except Exception as error:
            reason = describe_s3_error(error)
            if reason not in ("not found", "no such key"):
                raise ModelFetchError(f"checkpoint s3://{bucket}/{key}: {reason}") from None
            missing.append(f"s3://{bucket}/{key}")
            continue
        return _download(client, bucket, key, int(head.get("ContentLength") or 0), dest / name, max_bytes)
    raise ModelFetchError(f"checkpoint {wanted} not found ({', '.join(missing)})")


def _download(client: S3Client, bucket: str, key: str, size: int, target: Path, max_bytes: int) -> FetchedModel:
    where = f"s3://{bucket}/{key}"
    if target.is_file() and target.stat().st_size == size:
        log.info("checkpoint %s already in %s (%d bytes)", where, target, size)
        return FetchedModel(target, size, downloaded=False)
    if size > max_bytes:
        raise ModelFetchError(f"checkpoint {where} is {size} bytes, over the {max_bytes}-byte limit")
    target.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(target.parent).free
    if size > free:
        raise ModelFetchError(f"checkpoint {where} is {size} bytes but {target.parent} has {free} bytes free")
    partial = target.with_name(f".{target.name}.partial")
    try:
        client.download_file(bucket, key, str(partial))
        got = partial.stat().st_size
        if got != size:
            raise ModelFetchError(f"checkpoint {where}: downloaded {got} bytes, expected {size}")
        os.replace(partial, target)
    except ModelFetchError:
        raise
    except Exception as error:
        raise ModelFetchError(f"checkpoint {where}: download failed: {describe_s3_error(error)}") from None
    finally:
        partial.unlink(missing_ok=True)
    log.info("checkpoint %s fetched into %s (%d bytes)", where, target, size)
    return FetchedModel(target, size, downloaded=True)


def run_fetch_model(settings: AgentSettings, termination_log: Path = Path("/dev/termination-log")) -> int:
    """The `fetch-model` init container: the static runtime's checkpoint into the models volume, or exit 1 with the
    reason (which object, why) in the container's termination message, which the runtime's status reports."""
    if not settings.models_s3_prefix or not settings.checkpoint:
        print("fetch-model: nothing to fetch (no SDTASK_MODELS_S3_PREFIX or SDTASK_CHECKPOINT)")
        return 0
    client = make_s3_client(S3Settings(endpoint_url=settings.s3_endpoint or None, region=settings.s3_region))
    try:
        fetched = fetch_checkpoint(
            client, settings.models_s3_prefix, settings.checkpoint, Path(settings.models_dir), settings.max_model_bytes
        )
    except ModelFetchError as error:
        message = f"ModelMissing: {error}"
        print(message, file=sys.stderr)
        with contextlib.suppress(OSError):  # only inside a container
            termination_log.write_text(message)
        return 1
    verb = "fetched" if fetched.downloaded else "already present"
    print(f"fetch-model: {fetched.path} {verb} ({fetched.size} bytes)")
    return 0
