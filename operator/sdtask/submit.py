"""Turn a request body (the API's new form, or the legacy flat form) into an SDTask manifest. Pure but for reading."""

from __future__ import annotations

import hashlib
import json
import re
import sys
from typing import Any

import yaml

from sdtask.constants import ANNOTATION_REQUEST_FORMAT, API_VERSION
from sdtask.request import is_legacy_body, legacy_to_task

_NAME_UNSAFE = re.compile(r"[^a-z0-9-]+")


def read_body(path: str) -> dict[str, Any]:
    text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()  # noqa: SIM115
    body = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
    if not isinstance(body, dict):
        raise ValueError("the request body must be a JSON/YAML object")
    return body


def task_name(task_id: str) -> str:
    """A DNS-1123 name for an arbitrary task id; a hash suffix keeps distinct ids distinct after cleaning."""
    cleaned = _NAME_UNSAFE.sub("-", task_id.lower()).strip("-")[:50] or "task"
    if cleaned == task_id:
        return cleaned
    return f"{cleaned}-{hashlib.sha256(task_id.encode()).hexdigest()[:8]}"


def manifest_from_body(
    body: dict[str, Any], *, name: str | None = None, namespace: str | None = None
) -> dict[str, Any]:
    """`{"task": {...}}` (the API's body), a bare task, or the legacy flat body -> SDTask."""
    annotations: dict[str, str] = {}
    if is_legacy_body(body):
        task = legacy_to_task(body)
        annotations[ANNOTATION_REQUEST_FORMAT] = "legacy"
    else:
        task = body.get("task", body)
    metadata: dict[str, Any] = {"name": name or task_name(str(task["metadata"]["id"]))}
    if namespace:
        metadata["namespace"] = namespace
    if annotations:
        metadata["annotations"] = annotations
    return {"apiVersion": API_VERSION, "kind": "SDTask", "metadata": metadata, "spec": {"task": task}}
