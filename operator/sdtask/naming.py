"""Output naming in S3 (pure).

Every output key of a task is a function of (prefix, id, index) only, so a retried task overwrites its own objects and
never leaves a second copy next to the first. Which task a `<prefix>/<id>` folder belongs to is recorded beside it,
outside the folder (see `owner_key` and sdtask/ownership.py), so the folder holds the task's outputs only, as before.
"""

from __future__ import annotations

import re
import unicodedata

MAX_KEY_PART_LENGTH = 256
_EXTENSION = re.compile(r"[a-z0-9]{1,10}")


def validate_key_part(value: str, field: str, *, allow_slash: bool = True) -> str:
    """Return `value` fit for use inside an S3 key, or raise ValueError naming `field`.

    Refuses empty values, `.`/`..` segments, a leading `/`, empty segments (`a//b`), backslashes, control characters
    and more than 256 characters. Inner `/` are allowed unless `allow_slash` is false (a task id is one segment);
    trailing `/` are trimmed so `output/` and `output` name the same place.
    """
    if not isinstance(value, str):
        raise ValueError(f"{field} must be a string, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{field} must not be empty")
    if len(value) > MAX_KEY_PART_LENGTH:
        raise ValueError(f"{field} is {len(value)} characters long, the limit is {MAX_KEY_PART_LENGTH}")
    if any(unicodedata.category(char) == "Cc" for char in value):
        raise ValueError(f"{field} must not contain control characters")
    if "\\" in value:
        raise ValueError(f"{field} must not contain backslashes: {value!r}")
    if value.startswith("/"):
        raise ValueError(f"{field} must not start with '/': {value!r}")
    trimmed = value.rstrip("/")
    if not trimmed:
        raise ValueError(f"{field} must not be only slashes")
    segments = trimmed.split("/")
    if len(segments) > 1 and not allow_slash:
        raise ValueError(f"{field} must not contain '/': {value!r}")
    for segment in segments:
        if segment in ("", ".", ".."):
            raise ValueError(f"{field} must not contain empty, '.' or '..' path segments: {value!r}")
    return trimmed


def validate_bucket(bucket: str) -> str:
    """A light check of a bucket name (it comes from operator configuration, not from users)."""
    if not isinstance(bucket, str) or not bucket:
        raise ValueError("bucket must be a non-empty string")
    if "/" in bucket or any(char.isspace() or unicodedata.category(char) == "Cc" for char in bucket):
        raise ValueError(f"bucket name {bucket!r} must not contain '/', whitespace or control characters")
    return bucket


def task_folder(prefix: str, task_id: str) -> str:
    """`<prefix>/<id>`: the folder holding every output of one task."""
    return f"{validate_key_part(prefix, 'prefix')}/{validate_key_part(task_id, 'id', allow_slash=False)}"


def output_location(bucket: str, prefix: str, task_id: str) -> str:
    return s3_uri(bucket, task_folder(prefix, task_id))


def image_key(prefix: str, task_id: str, index: int, extension: str) -> str:
    """Key of the `index`-th image (1-based) of a task."""
    if isinstance(index, bool) or not isinstance(index, int) or index < 1:
        raise ValueError(f"image index must be an integer >= 1, got {index!r}")
    if not isinstance(extension, str) or not _EXTENSION.fullmatch(extension):
        raise ValueError(f"image extension must be 1-10 lowercase letters or digits, got {extension!r}")
    return f"{task_folder(prefix, task_id)}/image-{index}.{extension}"


def record_key(prefix: str, task_id: str) -> str:
    """Key of the `.out` record of a task."""
    folder = task_folder(prefix, task_id)
    return f"{folder}/{task_id}.out"


OWNERS_FOLDER = ".sdtask-owners"


def owner_key(prefix: str, task_id: str) -> str:
    """Key of the marker naming the task that owns `<prefix>/<id>`: `.sdtask-owners/<prefix>/<id>.json`.

    Outside the task's folder, so listings of the folder are unchanged; and no output key ends in `.json` (images
    end in their format's extension, the record in `.out`), so no task's outputs can overwrite a marker."""
    return f"{OWNERS_FOLDER}/{task_folder(prefix, task_id)}.json"


def s3_uri(bucket: str, key: str) -> str:
    validate_bucket(bucket)
    if not isinstance(key, str) or not key:
        raise ValueError("S3 key must be a non-empty string")
    if key.startswith("/"):
        raise ValueError(f"S3 key must not start with '/': {key!r}")
    return f"s3://{bucket}/{key}"


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/key` -> (bucket, key). The key is taken literally (no percent-decoding), as the AWS CLI does."""
    if not isinstance(uri, str):
        raise ValueError(f"S3 URI must be a string, got {type(uri).__name__}")
    scheme, sep, rest = uri.strip().partition("://")
    if not sep or scheme.lower() != "s3":
        raise ValueError(f"not an S3 URI (expected s3://bucket/key): {uri!r}")
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"S3 URI has no bucket: {uri!r}")
    if not key:
        raise ValueError(f"S3 URI has no object key (expected s3://{bucket}/<key>): {uri!r}")
    validate_bucket(bucket)
    return bucket, key
