"""SDTask: one Stable Diffusion Web UI request (`spec.task`, the old API's request body unchanged) and its result."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, ConfigDict, Field, model_validator

from .common import (
    API_VERSION,
    CONDITIONS_LIST_MAP,
    DNS1123_LABEL_MAX_LENGTH,
    DNS1123_SUBDOMAIN_MAX_LENGTH,
    DNS1123_SUBDOMAIN_PATTERN,
    HTTP_URL_PATTERN,
    URL_MAX_LENGTH,
    Condition,
    CustomResource,
    FreeFormModel,
    PrinterColumn,
    RequestModel,
    ResourceDefinition,
    SpecModel,
    StatusModel,
    cel_rule,
    cel_rules,
)

# Callback delivery: ten attempts with a back-off of 1, 2, 4, ... 60 s span about four minutes, within the callback's
# deadline of five (clients/callback.py): a receiver down for a while still gets its callback.
DEFAULT_CALLBACK_ATTEMPTS = 10

# "extra-batch-image" is the old queue agent's spelling of extra-batch-images, accepted for compatibility.
TaskType = Literal["image-to-image", "text-to-image", "extra-single-image", "extra-batch-images", "extra-batch-image"]
TASK_TYPES: tuple[TaskType, ...] = (
    "image-to-image",
    "text-to-image",
    "extra-single-image",
    "extra-batch-images",
    "extra-batch-image",
)


class Phase(StrEnum):
    """A task's phase: the one enum of the code. Its members are strings, so they compare equal to the status values."""

    PENDING = "Pending"
    SCHEDULED = "Scheduled"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


# The schema's spelling of the same values (a Literal keeps the CRD's inline enum); a unit test keeps them equal.
TaskPhase = Literal["Pending", "Scheduled", "Running", "Succeeded", "Failed"]
TASK_PHASES: tuple[TaskPhase, ...] = ("Pending", "Scheduled", "Running", "Succeeded", "Failed")
FINISHED_PHASES = frozenset({Phase.SUCCEEDED, Phase.FAILED})
ACTIVE_PHASES = frozenset({Phase.SCHEDULED, Phase.RUNNING})

# Retries of attempts that failed for infrastructure reasons (spec.maxRetries).
DEFAULT_MAX_RETRIES = 2

# Condition types of an SDTask (kept open in the schema so new types need no CRD change).
CONDITION_SCHEDULED = "Scheduled"
CONDITION_RUNNING = "Running"
CONDITION_SUCCEEDED = "Succeeded"
CONDITION_FAILED = "Failed"
CONDITION_CALLBACK_DELIVERED = "CallbackDelivered"
TASK_CONDITION_TYPES = (
    CONDITION_SCHEDULED,
    CONDITION_RUNNING,
    CONDITION_SUCCEEDED,
    CONDITION_FAILED,
    CONDITION_CALLBACK_DELIVERED,
)

CallbackState = Literal["Pending", "Delivered", "Failed", "Disabled"]

# No image bytes in etcd. The hard outer bounds are the API server's 3 MiB request limit and etcd's 1.5 MiB object
# limit; the per-field caps below make the API server refuse an oversize image with the field named, and the operator
# additionally refuses a task whose serialized `content` exceeds MAX_CONTENT_BYTES (16 images at the per-field cap would
# pass the field checks but not this one). Larger inputs belong in S3 or behind an http(s) link.
MAX_CONTENT_BYTES = 512 * 1024
MAX_INLINE_IMAGE_CHARS = 256 * 1024
MAX_IMAGES = 16
MAX_PROMPT_CHARS = 20000
# Bounds the checkpoint names the CEL rules read, which keeps their cost estimate low.
MAX_CHECKPOINT_NAME_CHARS = 512

# Characters S3 documents as safe in object keys; "/" only after the first character (no absolute keys).
S3_KEY_PATTERN = r"^[A-Za-z0-9!_.*'()-][A-Za-z0-9!_.*'()/-]*$"
DNS1123_LABEL_OR_EMPTY_PATTERN = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$"

InlineImage = Annotated[str, Field(max_length=MAX_INLINE_IMAGE_CHARS)]
CheckpointName = Annotated[str, Field(max_length=MAX_CHECKPOINT_NAME_CHARS)]


def _refuse_parent_segments(value: str) -> str:
    # Mirrors the CEL rule next to the field: "a/../b" would step out of the task's own output folder.
    if ".." in value:
        raise ValueError("must not contain '..'")
    return value


NoParentSegments = AfterValidator(_refuse_parent_segments)


class TaskMetadata(RequestModel):
    """Identity and routing of the request (the request's `task.metadata`)."""

    id: Annotated[
        str,
        Field(
            description="Task id, unique per prefix; the last part of the output location s3://<bucket>/<prefix>/<id>.",
            min_length=1,
            max_length=253,
            pattern=S3_KEY_PATTERN,
            json_schema_extra=cel_rules(cel_rule("!self.contains('..')", "metadata.id must not contain '..'")),
        ),
        NoParentSegments,
    ]
    runtime: str = Field(
        description=(
            "Name of the SDRuntime to run on; empty means route by the checkpoint the content asks for"
            " (alwayson_scripts.sd_model_checkpoint, alwayson_scripts.override_settings.sd_model_checkpoint"
            " or override_settings.sd_model_checkpoint)."
        ),
        max_length=DNS1123_LABEL_MAX_LENGTH,
        pattern=DNS1123_LABEL_OR_EMPTY_PATTERN,
    )
    tasktype: TaskType = Field(description="Which SD Web UI API to call.")
    prefix: Annotated[
        str,
        Field(
            description="Folder of the outputs inside the runtime's bucket.",
            min_length=1,
            max_length=512,
            pattern=S3_KEY_PATTERN,
            json_schema_extra=cel_rules(cel_rule("!self.contains('..')", "metadata.prefix must not contain '..'")),
        ),
        NoParentSegments,
    ]
    context: Any = Field(default=None, description="Any JSON value; returned unchanged in the callback.")


class OverrideSettings(FreeFormModel):
    """SD Web UI settings applied for this request only; undeclared settings are kept as given."""

    sd_model_checkpoint: CheckpointName | None = Field(default=None, description="Checkpoint to load for this request.")


class AlwaysonScripts(FreeFormModel):
    """Scripts run with every request (e.g. controlnet); may carry the checkpoint for dynamic model runtimes."""

    sd_model_checkpoint: CheckpointName | None = Field(default=None, description="Checkpoint the request needs.")
    override_settings: OverrideSettings | None = Field(
        default=None, description="Settings overridden for this request."
    )


class ImageListItem(FreeFormModel):
    """One input image of extra-batch-images."""

    data: InlineImage = Field(description="Image: an http(s) or s3:// link, or small inline base64 data.")
    name: str = Field(description="File name of the image.")


class TaskContent(FreeFormModel):
    """The SD Web UI API payload, passed on as given after links are converted to image data.

    Only fields that carry images, size or cost, or routing are declared (with caps); every other field is kept.
    """

    prompt: str | None = Field(default=None, description="Prompt.", max_length=MAX_PROMPT_CHARS)
    negative_prompt: str | None = Field(default=None, description="Negative prompt.", max_length=MAX_PROMPT_CHARS)
    init_images: Annotated[list[InlineImage], Field(max_length=MAX_IMAGES)] | None = Field(
        default=None, description="Input images of image-to-image: http(s) or s3:// links, or small inline base64 data."
    )
    mask: InlineImage | None = Field(default=None, description="Inpainting mask: a link or small inline base64 data.")
    image: InlineImage | None = Field(
        default=None, description="Input image of extra-single-image: a link or small inline base64 data."
    )
    # Not `alias`: type checkers would then want `imageList=` as the keyword argument.
    image_list: Annotated[list[ImageListItem], Field(max_length=MAX_IMAGES)] | None = Field(
        default=None,
        validation_alias="imageList",
        serialization_alias="imageList",
        description="Input images of extra-batch-images.",
    )
    batch_size: int | None = Field(default=None, description="Images per batch.", ge=1, le=16)
    n_iter: int | None = Field(default=None, description="Number of batches.", ge=1, le=16)
    steps: int | None = Field(default=None, description="Sampling steps.", ge=1, le=500)
    width: int | None = Field(default=None, description="Image width in pixels.", ge=64, le=4096)
    height: int | None = Field(default=None, description="Image height in pixels.", ge=64, le=4096)
    alwayson_scripts: AlwaysonScripts | None = Field(default=None, description="Always-on scripts and their arguments.")
    override_settings: OverrideSettings | None = Field(
        default=None, description="Settings overridden for this request."
    )

    def requested_checkpoint(self) -> str | None:
        """The checkpoint the request names, looked up where the CEL rule on the task looks; None when none does."""
        scripts = self.alwayson_scripts
        candidates = (
            scripts.sd_model_checkpoint if scripts else None,
            scripts.override_settings.sd_model_checkpoint if scripts and scripts.override_settings else None,
            self.override_settings.sd_model_checkpoint if self.override_settings else None,
        )
        return next((name for name in candidates if name), None)


RUNTIME_OR_CHECKPOINT_MESSAGE = (
    "metadata.runtime may be empty only when the content names a checkpoint in"
    " alwayson_scripts.sd_model_checkpoint, alwayson_scripts.override_settings.sd_model_checkpoint"
    " or override_settings.sd_model_checkpoint"
)
# has() before each access: the content fields are optional; every string read is bounded (cheap cost estimate).
RUNTIME_OR_CHECKPOINT_RULE = " || ".join(
    (
        "self.metadata.runtime != ''",
        "(has(self.content.alwayson_scripts) && has(self.content.alwayson_scripts.sd_model_checkpoint)"
        " && self.content.alwayson_scripts.sd_model_checkpoint != '')",
        "(has(self.content.alwayson_scripts) && has(self.content.alwayson_scripts.override_settings)"
        " && has(self.content.alwayson_scripts.override_settings.sd_model_checkpoint)"
        " && self.content.alwayson_scripts.override_settings.sd_model_checkpoint != '')",
        "(has(self.content.override_settings) && has(self.content.override_settings.sd_model_checkpoint)"
        " && self.content.override_settings.sd_model_checkpoint != '')",
    )
)


class TaskRequest(RequestModel):
    """The `task` object of the image generation API's request body, unchanged."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            cel_rule(RUNTIME_OR_CHECKPOINT_RULE, RUNTIME_OR_CHECKPOINT_MESSAGE, field_path=".metadata.runtime")
        )
    )

    metadata: TaskMetadata = Field(description="Identity and routing of the request.")
    content: TaskContent = Field(description="The SD Web UI API payload, kept as given.")

    @model_validator(mode="after")
    def _runtime_or_checkpoint(self) -> Self:
        if self.metadata.runtime == "" and self.content.requested_checkpoint() is None:
            raise ValueError(RUNTIME_OR_CHECKPOINT_MESSAGE)
        return self


class SecretKeySelector(SpecModel):
    """A key of a Secret in the task's namespace."""

    name: str = Field(
        description="Name of the Secret.",
        min_length=1,
        max_length=DNS1123_SUBDOMAIN_MAX_LENGTH,
        pattern=DNS1123_SUBDOMAIN_PATTERN,
    )
    key: str = Field(description="Key in the Secret.", min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")


class CallbackSpec(SpecModel):
    """Where the result is POSTed when the task finishes."""

    url: str = Field(
        description="http(s) URL the result is POSTed to.", max_length=URL_MAX_LENGTH, pattern=HTTP_URL_PATTERN
    )
    secret_ref: SecretKeySelector | None = Field(
        default=None, description="Secret key whose value signs the callback body; unsigned when absent."
    )
    on_start: bool = Field(
        default=False,
        description=(
            "Also POST when the task starts running: {id, runtime, result: null, status: Running, pod, attempt,"
            " context} (best effort, one delivery per attempt)."
        ),
    )


class SDTaskSpec(SpecModel):
    """The request (`task`) and how to run it."""

    task: TaskRequest = Field(description="The `task` object of the image generation API's request body, unchanged.")
    priority: int = Field(
        default=0, description="Higher runs first among queued tasks of one runtime.", ge=-1000, le=1000
    )
    timeout_seconds: int | None = Field(
        default=None,
        description="Time limit of one attempt; overrides the runtime's requestTimeoutSeconds.",
        ge=1,
        le=86400,
    )
    active_deadline_seconds: int | None = Field(
        default=None,
        description="Time limit of the whole task from creation, queueing and retries included.",
        ge=1,
        le=604800,
    )
    max_retries: int = Field(
        default=DEFAULT_MAX_RETRIES,
        description="Retries of attempts that failed for infrastructure reasons (pod lost, timeout).",
        ge=0,
        le=10,
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None,
        description="Delete the SDTask this long after it succeeded or failed; kept when absent.",
        ge=0,
        le=31536000,
    )
    callback: CallbackSpec | None = Field(default=None, description="HTTP callback with the result.")


class CallbackStatus(StatusModel):
    """Delivery of the result callback."""

    state: CallbackState | None = Field(
        default=None, description="Pending, Delivered, Failed or Disabled (no callback)."
    )
    attempts: int | None = Field(default=None, description="Delivery attempts so far.", ge=0)
    last_error: str | None = Field(default=None, description="Error of the last failed attempt.")
    last_attempt_time: datetime | None = Field(default=None, description="Time of the last attempt.")
    started_attempt: int | None = Field(
        default=None, description="Attempt whose start was announced by the onStart callback.", ge=0
    )


class TaskProgress(StatusModel):
    """The Web UI's progress of the running generation, written by the agent at a bounded rate."""

    fraction: float | None = Field(default=None, description="Share of the generation done, 0 to 1.", ge=0, le=1)
    eta_seconds: float | None = Field(default=None, description="The Web UI's estimate of the time left.", ge=0)
    step: int | None = Field(default=None, description="Sampling step of the current image.", ge=0)
    steps: int | None = Field(default=None, description="Sampling steps per image.", ge=0)
    job: int | None = Field(default=None, description="Current job (batch) of this generation, from 1.", ge=0)
    jobs: int | None = Field(default=None, description="Jobs (batches) of this generation.", ge=0)
    summary: str | None = Field(default=None, description="Short text of the above, e.g. '45% step 7/16 ETA 3s'.")
    update_time: datetime | None = Field(default=None, description="When the agent read this progress.")


class SDTaskStatus(StatusModel):
    """Progress and result, written by the operator and the agent."""

    phase: TaskPhase | None = Field(default=None, description="Pending, Scheduled, Running, Succeeded or Failed.")
    reason: str | None = Field(default=None, description="CamelCase machine-readable reason of the last transition.")
    message: str | None = Field(default=None, description="Human-readable details of the last transition.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Scheduled, Running, Succeeded, Failed and CallbackDelivered conditions.",
        json_schema_extra=CONDITIONS_LIST_MAP,
    )
    runtime: str | None = Field(default=None, description="SDRuntime the task was routed to.")
    pod: str | None = Field(default=None, description="Runtime pod of the current or last attempt.")
    model: str | None = Field(default=None, description="Checkpoint the task runs with.")
    attempts: int | None = Field(default=None, description="Attempts started so far.", ge=0)
    not_before: datetime | None = Field(
        default=None, description="Earliest start of the next attempt while backing off."
    )
    queued_time: datetime | None = Field(default=None, description="When the task entered its runtime's queue.")
    start_time: datetime | None = Field(default=None, description="When the current or last attempt started.")
    completion_time: datetime | None = Field(default=None, description="When the task succeeded or failed.")
    output_location: str | None = Field(
        default=None, alias="output_location", description="s3://<bucket>/<prefix>/<id>: where the outputs are."
    )
    images: list[str] = Field(default_factory=list, description="s3:// URIs of the output images.")
    output_url: str | None = Field(default=None, alias="output_url", description="s3:// URI of the .out record.")
    response: dict[str, Any] | None = Field(
        default=None, description="The response object of the image generation API: {id, runtime, output_location}."
    )
    callback: CallbackStatus | None = Field(default=None, description="Delivery of the result callback.")
    progress: TaskProgress | None = Field(
        default=None, description="Progress of the running generation (the Web UI's /sdapi/v1/progress)."
    )

    def condition(self, condition_type: str) -> Condition | None:
        return next((item for item in self.conditions if item.type == condition_type), None)


class SDTask(CustomResource):
    """A Stable Diffusion Web UI request run by the sdtask operator; the result is in status.output_location."""

    api_version: Literal["sdtask.io/v1alpha1"] = API_VERSION
    kind: Literal["SDTask"] = "SDTask"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: SDTaskSpec
    status: SDTaskStatus | None = None


SDTASK_RESOURCE = ResourceDefinition(
    kind="SDTask",
    plural="sdtasks",
    short_names=("sdt",),
    description=SDTask.__doc__ or "",
    spec_model=SDTaskSpec,
    status_model=SDTaskStatus,
    printer_columns=(
        PrinterColumn("Phase", ".status.phase", "string", "Pending, Scheduled, Running, Succeeded or Failed."),
        PrinterColumn("Runtime", ".status.runtime", "string", "SDRuntime the task was routed to."),
        PrinterColumn("Model", ".status.model", "string", "Checkpoint the task runs with."),
        PrinterColumn("Pod", ".status.pod", "string", "Runtime pod of the current or last attempt."),
        PrinterColumn("Attempts", ".status.attempts", "integer", "Attempts started so far."),
        PrinterColumn("Progress", ".status.progress.summary", "string", "Progress of the running generation."),
        PrinterColumn("Age", ".metadata.creationTimestamp", "date", "Time since the task was created."),
        PrinterColumn("Output", ".status.output_location", "string", "Where the outputs are."),
    ),
    # status.pod is what a runtime pod's agent watches (`--field-selector status.pod=<pod>`); the runtime and the
    # phase let users and tools list a runtime's tasks, or the failed ones, without fetching them all.
    selectable_fields=(".status.pod", ".status.runtime", ".status.phase"),
)
