"""Request variants that the models and the API server (whose CRD the models generate) must both refuse.

One table for both layers: tests/unit checks the pydantic models with it, tests/integration the real API server.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from sdtask.api.task import MAX_INLINE_IMAGE_CHARS

DELETE = object()
SEED_CONTENT = "spec.task.content"
SEED_METADATA = "spec.task.metadata"


def changed(body: dict[str, Any], path: str, value: Any = DELETE) -> dict[str, Any]:
    """A deep copy of `body` with the dotted `path` set to `value`, or removed."""
    result = copy.deepcopy(body)
    *parents, last = path.split(".")
    node = result
    for key in parents:
        node = node.setdefault(key, {})
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return result


# (dotted path, new value or DELETE, the field the refusal must name)
INVALID_TASKS = [
    pytest.param(f"{SEED_METADATA}.id", DELETE, f"{SEED_METADATA}.id", id="missing-id"),
    pytest.param(f"{SEED_METADATA}.runtime", DELETE, f"{SEED_METADATA}.runtime", id="missing-runtime"),
    pytest.param(f"{SEED_METADATA}.tasktype", DELETE, f"{SEED_METADATA}.tasktype", id="missing-tasktype"),
    pytest.param(f"{SEED_METADATA}.prefix", DELETE, f"{SEED_METADATA}.prefix", id="missing-prefix"),
    pytest.param("spec.task.content", DELETE, "spec.task.content", id="missing-content"),
    pytest.param(f"{SEED_METADATA}.tasktype", "image-to-video", f"{SEED_METADATA}.tasktype", id="unknown-tasktype"),
    pytest.param(f"{SEED_METADATA}.id", "", f"{SEED_METADATA}.id", id="empty-id"),
    pytest.param(f"{SEED_METADATA}.id", "/abs", f"{SEED_METADATA}.id", id="id-leading-slash"),
    pytest.param(f"{SEED_METADATA}.id", "a/../b", f"{SEED_METADATA}.id", id="id-parent-segment"),
    pytest.param(f"{SEED_METADATA}.id", "x" * 254, f"{SEED_METADATA}.id", id="id-too-long"),
    pytest.param(f"{SEED_METADATA}.prefix", "/output", f"{SEED_METADATA}.prefix", id="prefix-leading-slash"),
    pytest.param(f"{SEED_METADATA}.prefix", "out/..", f"{SEED_METADATA}.prefix", id="prefix-parent-segment"),
    pytest.param(f"{SEED_METADATA}.runtime", "Bad_Name", f"{SEED_METADATA}.runtime", id="runtime-not-dns"),
    pytest.param(f"{SEED_METADATA}.runtime", "", f"{SEED_METADATA}.runtime", id="empty-runtime-no-checkpoint"),
    pytest.param(
        f"{SEED_CONTENT}.init_images",
        ["A" * (MAX_INLINE_IMAGE_CHARS + 1)],
        f"{SEED_CONTENT}.init_images",
        id="oversize-init-image",
    ),
    pytest.param(
        f"{SEED_CONTENT}.init_images",
        ["https://a.example/x.png"] * 17,
        f"{SEED_CONTENT}.init_images",
        id="too-many-init-images",
    ),
    pytest.param(
        f"{SEED_CONTENT}.init_images",
        "https://a.example/x.png",
        f"{SEED_CONTENT}.init_images",
        id="init-images-not-a-list",
    ),
    pytest.param(
        f"{SEED_CONTENT}.mask", "A" * (MAX_INLINE_IMAGE_CHARS + 1), f"{SEED_CONTENT}.mask", id="oversize-mask"
    ),
    pytest.param(
        f"{SEED_CONTENT}.imageList",
        [{"data": "A" * (MAX_INLINE_IMAGE_CHARS + 1), "name": "a.png"}],
        f"{SEED_CONTENT}.imageList",
        id="oversize-image-list-item",
    ),
    pytest.param(f"{SEED_CONTENT}.steps", "16", f"{SEED_CONTENT}.steps", id="steps-string"),
    pytest.param(f"{SEED_CONTENT}.steps", True, f"{SEED_CONTENT}.steps", id="steps-bool"),
    pytest.param(f"{SEED_CONTENT}.steps", 501, f"{SEED_CONTENT}.steps", id="steps-too-many"),
    pytest.param(f"{SEED_CONTENT}.width", 8192, f"{SEED_CONTENT}.width", id="width-too-large"),
    pytest.param(f"{SEED_CONTENT}.batch_size", 17, f"{SEED_CONTENT}.batch_size", id="batch-size-too-large"),
    pytest.param(f"{SEED_CONTENT}.prompt", 5, f"{SEED_CONTENT}.prompt", id="prompt-not-a-string"),
    pytest.param(f"{SEED_CONTENT}.prompt", "x" * 20001, f"{SEED_CONTENT}.prompt", id="prompt-too-long"),
    pytest.param(f"{SEED_CONTENT}.alwayson_scripts", [], f"{SEED_CONTENT}.alwayson_scripts", id="scripts-not-object"),
    pytest.param("spec.priority", 1001, "spec.priority", id="priority-too-high"),
    pytest.param("spec.maxRetries", 11, "spec.maxRetries", id="max-retries-too-high"),
    pytest.param("spec.timeoutSeconds", 0, "spec.timeoutSeconds", id="timeout-zero"),
    pytest.param("spec.activeDeadlineSeconds", 604801, "spec.activeDeadlineSeconds", id="deadline-too-long"),
    pytest.param("spec.ttlSecondsAfterFinished", -1, "spec.ttlSecondsAfterFinished", id="ttl-negative"),
    pytest.param("spec.callback", {"url": "ftp://hooks.example.com"}, "spec.callback.url", id="callback-not-http"),
    pytest.param("spec.callback", {"secretRef": {"name": "s", "key": "k"}}, "spec.callback.url", id="callback-no-url"),
]
