"""Request translation (pure): task content -> Web UI call, legacy flat body -> task, response and callback shapes."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from sdtask.naming import validate_key_part

TASKTYPE_ENDPOINTS: dict[str, str] = {
    "image-to-image": "img2img",
    "text-to-image": "txt2img",
    "extra-single-image": "extra-single-image",
    "extra-batch-images": "extra-batch-images",
}
# Spellings the old queue agent accepted for a tasktype.
TASKTYPE_ALIASES: dict[str, str] = {"extra-batch-image": "extra-batch-images"}

CHECKPOINT_KEY = "sd_model_checkpoint"
VAE_KEY = "sd_vae"
# Keys of the legacy form that live in `alwayson_scripts` but are not Web UI scripts. The real server refuses every
# alwayson_scripts key that is no script title (422 "Script 'uid' not found", modules/api/api.py init_script_args), so
# they are stripped, as the old queue agent did (its ALWAYSON_SCRIPTS_EXCLUDE_KEYS); `sd_vae` moves to the settings.
ROUTING_KEYS: tuple[str, ...] = (
    "task",
    "id_task",
    "uid",
    CHECKPOINT_KEY,
    VAE_KEY,
    "save_dir",
    "image_link",
    "override_settings",
)
DEFAULT_PREFIX = "output"

# Legacy `task` values: the tasktypes themselves, plus the endpoint names some old clients sent.
_LEGACY_TASKS: dict[str, str] = {
    **{tasktype: tasktype for tasktype in TASKTYPE_ENDPOINTS},
    **{endpoint: tasktype for tasktype, endpoint in TASKTYPE_ENDPOINTS.items()},
    **TASKTYPE_ALIASES,
}
_EXTRAS_ENDPOINTS = frozenset({"extra-single-image", "extra-batch-images"})


@dataclass(frozen=True)
class PreparedCall:
    endpoint: str
    payload: dict[str, Any]
    checkpoint: str | None


def _dict_at(mapping: dict[str, Any], key: str) -> dict[str, Any]:
    value = mapping.get(key)
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str | None:
    """A non-empty stripped string, or None (a blank or non-string value counts as not given)."""
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def requested_checkpoint(content: dict[str, Any]) -> str | None:
    """The checkpoint a task asks for: alwayson_scripts.sd_model_checkpoint, else override_settings (top-level, then
    the legacy one inside alwayson_scripts)."""
    scripts = _dict_at(content, "alwayson_scripts")
    for candidate in (
        scripts.get(CHECKPOINT_KEY),
        _dict_at(content, "override_settings").get(CHECKPOINT_KEY),
        _dict_at(scripts, "override_settings").get(CHECKPOINT_KEY),
    ):
        text = _text(candidate)
        if text is not None:
            return text
    return None


def canonical_tasktype(tasktype: str) -> str:
    return TASKTYPE_ALIASES.get(tasktype, tasktype)


def makes_videos(payload: dict[str, Any]) -> bool:
    """True when the request enables AnimateDiff (script titles are matched case-insensitively by the Web UI)."""
    scripts = payload.get("alwayson_scripts")
    if not isinstance(scripts, dict):
        return False
    for title, script in scripts.items():
        if str(title).lower() != "animatediff" or not isinstance(script, dict):
            continue
        args = script.get("args")
        first = args[0] if isinstance(args, list) and args else None
        if isinstance(first, dict) and first.get("enable") is True:
            return True
    return False


def endpoint_for(tasktype: str) -> str:
    try:
        return TASKTYPE_ENDPOINTS[canonical_tasktype(tasktype)]
    except (KeyError, TypeError):
        known = ", ".join(TASKTYPE_ENDPOINTS)
        raise ValueError(f"unknown tasktype {tasktype!r}; expected one of: {known}") from None


def prepare_payload(tasktype: str, content: dict[str, Any]) -> PreparedCall:
    """The Web UI call for a task: routing keys stripped, overrides merged, legacy image_link mapped.

    The checkpoint is taken out of override_settings: the agent switches models explicitly before the call, after
    checking the model exists, instead of letting the Web UI unload the current one for a name it may not have.
    """
    endpoint = endpoint_for(tasktype)
    if not isinstance(content, dict):
        raise ValueError(f"task content must be an object, got {type(content).__name__}")
    checkpoint = requested_checkpoint(content)
    payload = copy.deepcopy(content)
    routing = _pop_routing_keys(payload)
    legacy_settings = _dict_or_empty(routing.get("override_settings"))
    vae = _text(routing.get(VAE_KEY))
    if vae is not None:
        legacy_settings = {VAE_KEY: vae, **legacy_settings}
    _merge_override_settings(payload, legacy_settings if (legacy_settings or "override_settings" in routing) else None)
    _map_image_link(endpoint, payload, routing.get("image_link"))
    _map_controlnet_image_links(payload)
    if endpoint in _EXTRAS_ENDPOINTS and payload.get("alwayson_scripts") == {}:
        del payload["alwayson_scripts"]  # the extras endpoints have no scripts
    return PreparedCall(endpoint=endpoint, payload=payload, checkpoint=checkpoint)


def _pop_routing_keys(payload: dict[str, Any]) -> dict[str, Any]:
    scripts = payload.get("alwayson_scripts")
    if not isinstance(scripts, dict):
        return {}
    return {key: scripts.pop(key) for key in ROUTING_KEYS if key in scripts}


def _dict_or_empty(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _merge_override_settings(payload: dict[str, Any], legacy: Any) -> None:
    """The legacy settings (alwayson_scripts.override_settings, sd_vae) win over the body's own, as in the old queue
    agent (it updated the body's override_settings with them)."""
    top = payload.get("override_settings")
    if not isinstance(top, dict) and not isinstance(legacy, dict):
        return
    merged = {**(top if isinstance(top, dict) else {}), **(legacy if isinstance(legacy, dict) else {})}
    merged.pop(CHECKPOINT_KEY, None)
    if merged or "override_settings" in payload:
        payload["override_settings"] = merged


def _map_image_link(endpoint: str, payload: dict[str, Any], image_link: Any) -> None:
    links = _image_links(image_link)
    if not links:
        return
    if endpoint == "img2img" and not payload.get("init_images"):
        payload["init_images"] = links
    elif endpoint == "extra-single-image" and not payload.get("image"):
        if len(links) > 1:
            raise ValueError("image_link holds several images but extra-single-image takes one")
        payload["image"] = links[0]


def _map_controlnet_image_links(payload: dict[str, Any]) -> None:
    """The old API named a ControlNet unit's input `image_link`; ControlNet reads `input_image` (the old agent
    downloaded the link into it). The link itself is fetched later, like every link in the content."""
    scripts = payload.get("alwayson_scripts")
    controlnet = scripts.get("controlnet") if isinstance(scripts, dict) else None
    units = controlnet.get("args") if isinstance(controlnet, dict) else None
    for unit in units if isinstance(units, list) else []:
        if isinstance(unit, dict) and "image_link" in unit:
            link = unit.pop("image_link")
            if isinstance(link, str) and link.strip() and not unit.get("input_image"):
                unit["input_image"] = link.strip()


def _image_links(image_link: Any) -> list[str]:
    """The old API took several init images as one comma-separated string (the old agent split it on ',')."""
    if isinstance(image_link, str):
        return [part.strip() for part in image_link.split(",") if part.strip()]
    if isinstance(image_link, list):
        return [item for item in image_link if isinstance(item, str) and item.strip()]
    return []


# --- legacy flat body -----------------------------------------------------------------------------------------------


def is_legacy_body(body: Any) -> bool:
    """True for the old API's flat body: an SD payload whose alwayson_scripts holds `task`/`id_task`."""
    if not isinstance(body, dict) or isinstance(body.get("task"), dict):
        return False
    scripts = body.get("alwayson_scripts")
    return isinstance(scripts, dict) and ("task" in scripts or "id_task" in scripts)


def legacy_to_task(body: dict[str, Any]) -> dict[str, Any]:
    """The task object of a legacy body. The runtime is left empty: such tasks are routed by checkpoint.

    The content is the body as given (copied): routing keys are stripped and image_link is mapped at call time by
    `prepare_payload`, so the record of what was asked stays complete.
    """
    if not isinstance(body, dict):
        raise ValueError(f"legacy body must be an object, got {type(body).__name__}")
    scripts = body.get("alwayson_scripts")
    if not isinstance(scripts, dict):
        raise ValueError("legacy body: alwayson_scripts is missing")
    task_id = _legacy_id(scripts.get("id_task"))
    tasktype = _legacy_tasktype(scripts.get("task"))
    if requested_checkpoint(body) is None:
        raise ValueError("legacy body: alwayson_scripts.sd_model_checkpoint is missing (needed to route the task)")
    prefix = validate_key_part(_text(scripts.get("save_dir")) or DEFAULT_PREFIX, "alwayson_scripts.save_dir")
    return {
        "metadata": {"id": task_id, "runtime": "", "tasktype": tasktype, "prefix": prefix, "context": ""},
        "content": copy.deepcopy(body),
    }


def _legacy_id(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    task_id = _text(value)
    if task_id is None:
        raise ValueError("legacy body: alwayson_scripts.id_task is missing")
    return validate_key_part(task_id, "alwayson_scripts.id_task", allow_slash=False)


def _legacy_tasktype(value: Any) -> str:
    task = _text(value)
    if task is None:
        raise ValueError("legacy body: alwayson_scripts.task is missing")
    try:
        return _LEGACY_TASKS[task]
    except KeyError:
        known = ", ".join(TASKTYPE_ENDPOINTS)
        raise ValueError(f"legacy body: alwayson_scripts.task {task!r} is unknown; expected one of: {known}") from None


# --- responses ------------------------------------------------------------------------------------------------------


def response_object(
    task_metadata: dict[str, Any], output_location: str, *, legacy: bool, checkpoint: str | None
) -> dict[str, Any]:
    """What users of the old API get back: `{id, runtime, output_location}`, legacy `{id_task, sd_model_checkpoint,
    output_location}`."""
    if legacy:
        return {
            "id_task": task_metadata.get("id", ""),
            "sd_model_checkpoint": checkpoint or "",
            "output_location": output_location,
        }
    return {
        "id": task_metadata.get("id", ""),
        "runtime": task_metadata.get("runtime", ""),
        "output_location": output_location,
    }


def callback_payload(
    task_metadata: dict[str, Any],
    *,
    output_location: str,
    image_urls: list[str],
    output_url: str,
    error: str = "",
    runtime: str | None = None,
) -> dict[str, Any]:
    """The callback body. `result` is true exactly when `error` is empty; `runtime` overrides the metadata's (a task
    routed by checkpoint has an empty runtime until the operator picks one); `context` is echoed as given."""
    return {
        "id": task_metadata.get("id", ""),
        "runtime": runtime if runtime is not None else task_metadata.get("runtime", ""),
        "result": not error,
        "output_location": output_location,
        "image_url": list(image_urls),
        "output_url": output_url,
        "context": task_metadata.get("context", ""),
        "error": error,
    }
