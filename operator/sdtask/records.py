"""What the Web UI answered, and the `.out` record stored next to a task's images. Pure.

Two record layouts:
- ours (the default): `{id, runtime, tasktype, pod, attempt, model, started, finished, images, parameters, info,
  seeds, error}`; `images` are the S3 URIs, `error` is `{reason, message}` or null.
- the old queue agent's, for tasks sent in the legacy flat form (annotation `sdtask.io/request-format: legacy`), so
  readers written for it keep working: success `{images, parameters: {...the Web UI's parameters..., id_task,
  image_seed: "s1,s2", error_msg: ""}, info: ""}` (extras: `parameters: {html_info, id_task, error_msg}`), failure
  `{images: [""], parameters: {id_task, status: 0, image_seed: [], error_msg, reason: <the Web UI's error body>},
  info: ""}`. The old agent wrote `images: [""]` on success too; ours lists the image URIs there (still strings).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


def parse_info(response: dict[str, Any]) -> Any:
    """`info` is a JSON *string* in the real API (modules/api/models.py TextToImageResponse)."""
    info = response.get("info")
    if isinstance(info, str):
        try:
            return json.loads(info)
        except ValueError:
            return info
    return info


def _all_images(response: dict[str, Any]) -> list[str]:
    images = response.get("images")
    if isinstance(images, list):
        return [i for i in images if isinstance(i, str) and i]
    single = response.get("image")  # extra-single-image answers one `image`
    return [single] if isinstance(single, str) and single else []


def result_images(response: dict[str, Any], *, videos: bool = False) -> list[str]:
    """The images of a response, without the grid. With a grid (batch > 1 and opts.return_grid), the real server puts
    it first and says so in `info.index_of_first_image` (modules/processing.py, Processed.js()): skipping it keeps
    image N matching seed N. AnimateDiff (`videos`) replaces the images by one video per format but leaves that index
    as it was, so nothing is skipped then."""
    images = _all_images(response)
    if videos:
        return images
    info = parse_info(response)
    first = info.get("index_of_first_image") if isinstance(info, dict) else None
    if isinstance(first, int) and not isinstance(first, bool) and 0 < first < len(images):
        return images[first:]
    return images


def seeds(response: dict[str, Any]) -> list[Any] | None:
    info = parse_info(response)
    found = info.get("all_seeds") if isinstance(info, dict) else None
    return list(found) if isinstance(found, list) else None


@dataclass(frozen=True)
class RecordContext:
    """Who ran what: the parts of a record that don't come from the Web UI."""

    task_id: str
    runtime: str
    tasktype: str
    pod: str
    attempt: int | None
    model: str | None
    started: str
    finished: str


def success_record(
    context: RecordContext, images: list[str], response: dict[str, Any], *, legacy: bool
) -> dict[str, Any]:
    if legacy:
        return _legacy_success(context, images, response)
    info = parse_info(response)
    return {
        **_our_header(context),
        "images": images,
        "parameters": response.get("parameters"),
        "info": info,
        "seeds": seeds(response),
        "error": None,
    }


def failure_record(
    context: RecordContext, reason: str, message: str, webui_error: Any = None, *, legacy: bool
) -> dict[str, Any]:
    if legacy:
        return {
            "images": [""],
            "parameters": {
                "id_task": context.task_id,
                "status": 0,
                "image_seed": [],
                "error_msg": f"{reason}: {message}",
                "reason": webui_error,
            },
            "info": "",
        }
    return {
        **_our_header(context),
        "images": [],
        "parameters": None,
        "info": None,
        "seeds": None,
        "error": {"reason": reason, "message": message},
    }


def _our_header(context: RecordContext) -> dict[str, Any]:
    return {
        "id": context.task_id,
        "runtime": context.runtime,
        "tasktype": context.tasktype,
        "pod": context.pod,
        "attempt": context.attempt,
        "model": context.model,
        "started": context.started,
        "finished": context.finished,
    }


def _legacy_success(context: RecordContext, images: list[str], response: dict[str, Any]) -> dict[str, Any]:
    if "html_info" in response:  # the extras endpoints
        parameters: dict[str, Any] = {"html_info": response.get("html_info"), "id_task": context.task_id}
    else:
        given = response.get("parameters")
        parameters = dict(given) if isinstance(given, dict) else {}
        parameters["id_task"] = context.task_id
        parameters["image_seed"] = ",".join(str(seed) for seed in seeds(response) or [])
    parameters["error_msg"] = ""
    return {"images": images, "parameters": parameters, "info": ""}


def is_success_record(record: Any) -> bool:
    """Whether a stored `.out` record (either layout) tells of a success: a later failure must not replace it."""
    if not isinstance(record, dict):
        return False
    if "error" in record or "id" in record:  # ours
        return record.get("error") is None and bool(record.get("images"))
    parameters = record.get("parameters")  # the legacy layout: a failure has status 0 and an error_msg
    return isinstance(parameters, dict) and "status" not in parameters and not parameters.get("error_msg")
