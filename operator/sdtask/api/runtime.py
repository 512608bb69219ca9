"""SDRuntime: a Deployment of SD Web UI pods with the agent sidecar, on a GPU node pool, for one or many checkpoints."""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import ConfigDict, Field, model_validator
from pydantic.config import JsonDict

from .common import (
    API_VERSION,
    CONDITIONS_LIST_MAP,
    DNS1123_SUBDOMAIN_MAX_LENGTH,
    DNS1123_SUBDOMAIN_PATTERN,
    HTTP_URL_PATTERN,
    URL_MAX_LENGTH,
    Condition,
    CustomResource,
    FreeFormModel,
    PrinterColumn,
    ResourceDefinition,
    SpecModel,
    StatusModel,
    cel_rule,
    cel_rules,
)

RuntimeType = Literal["sdwebui"]

# Condition types of an SDRuntime.
CONDITION_READY = "Ready"
CONDITION_SCALING = "Scaling"
CONDITION_DEGRADED = "Degraded"
RUNTIME_CONDITION_TYPES = (CONDITION_READY, CONDITION_SCALING, CONDITION_DEGRADED)

DEFAULT_PORT = 7860
DEFAULT_MODELS_MOUNT_PATH = "/models"
DEFAULT_REQUEST_TIMEOUT_SECONDS = 600
DEFAULT_MAX_DOWNLOAD_BYTES = 50 * 1024 * 1024
DEFAULT_MAX_LINKS = 16
DEFAULT_QUEUE_NEXT_GENERATION = True
DEFAULT_MAX_TOTAL_DOWNLOAD_BYTES = 100 * 1024 * 1024
DEFAULT_REGION = "us-east-1"
DEFAULT_GPUS_PER_POD = 1
DEFAULT_API_AUTH_KEY = "api-auth"

S3_URI_PATTERN = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$"
S3_BUCKET_PATTERN = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"

# An optional object with `default: {}` in the CRD, so the API server fills in the defaults of its fields even when the
# user leaves the object out: `kubectl get -o yaml` then shows the settings the operator actually uses.
DEFAULTED_OBJECT: JsonDict = {"default": {}}

STATIC_NEEDS_CHECKPOINT_MESSAGE = (
    "checkpoint is required when dynamicModel is false: a static runtime serves one checkpoint"
)
MAX_NOT_BELOW_MIN_MESSAGE = "scaling.maxReplicas must be greater than or equal to scaling.minReplicas"


class EnvVar(FreeFormModel):
    """A Kubernetes EnvVar of the SD Web UI container (value or valueFrom, kept as given)."""

    name: str = Field(description="Name of the environment variable.", min_length=1)


class ModelStorageSpec(SpecModel):
    """Where the checkpoints come from."""

    s3_prefix: str | None = Field(
        default=None,
        description=(
            "s3://bucket/prefix/ holding the checkpoints. A static runtime's checkpoint is fetched into mountPath"
            " before the SD Web UI starts; a dynamic runtime fetches a missing checkpoint when a task asks for it."
        ),
        pattern=S3_URI_PATTERN,
    )
    volume: dict[str, Any] | None = Field(
        default=None,
        description="Kubernetes volume source of the checkpoints (e.g. persistentVolumeClaim), mounted at mountPath.",
    )
    mount_path: str = Field(
        default=DEFAULT_MODELS_MOUNT_PATH,
        description="Where the checkpoints appear in the SD Web UI container; passed as --ckpt-dir.",
        pattern=r"^/",
    )


class PlacementSpec(SpecModel):
    """Which nodes the runtime's pods run on and what they request."""

    node_selector: dict[str, str] | None = Field(
        default=None, description="Node labels the pods require, e.g. the GPU pool."
    )
    tolerations: list[dict[str, Any]] | None = Field(
        default=None, description="Kubernetes tolerations of the pods, e.g. for the nvidia.com/gpu taint."
    )
    gpus_per_pod: int = Field(
        default=DEFAULT_GPUS_PER_POD, description="nvidia.com/gpu requested by each pod.", ge=0, le=8
    )
    resources: dict[str, Any] | None = Field(
        default=None,
        description="Kubernetes ResourceRequirements of the SD Web UI container (GPUs come from gpusPerPod).",
    )


class ScalingSpec(SpecModel):
    """How many pods run, driven by the runtime's queue."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            cel_rule(
                "(has(self.maxReplicas) ? self.maxReplicas : 1) >= (has(self.minReplicas) ? self.minReplicas : 0)",
                MAX_NOT_BELOW_MIN_MESSAGE,
                field_path=".maxReplicas",
            )
        )
    )

    min_replicas: int = Field(default=0, description="Pods kept when the queue is empty; 0 scales to zero.", ge=0)
    max_replicas: int = Field(default=1, description="Most pods run at once.", ge=1)
    tasks_per_replica: int = Field(default=1, description="Queued and running tasks per pod when scaling up.", ge=1)
    scale_down_delay_seconds: int = Field(
        default=300, description="How long the queue must stay short before pods are removed.", ge=0
    )
    external_scaler: bool = Field(
        default=False, description="Only publish the queue depth and leave the replica count to KEDA or an HPA."
    )

    @model_validator(mode="after")
    def _max_not_below_min(self) -> Self:
        if self.max_replicas < self.min_replicas:
            raise ValueError(MAX_NOT_BELOW_MIN_MESSAGE)
        return self


SchedulingPolicy = Literal["switch-aware", "fifo"]


class SchedulingSpec(SpecModel):
    """Which queued task goes to which pod (see sdtask.scheduling)."""

    policy: SchedulingPolicy = Field(
        default="switch-aware",
        description=(
            "switch-aware: a pod stays on its model while that model has queued work, and switches to the model with "
            "the most queued work per pod; fifo: strict priority-then-arrival order."
        ),
    )
    tasks_ahead: int = Field(
        default=1,
        description=(
            "Tasks assigned to a pod beyond the one it runs, so its agent starts the next one without waiting for the "
            "operator; 0 assigns only to idle pods. A higher-priority arrival waits behind at most this many."
        ),
        ge=0,
        le=8,
    )
    min_tasks_per_switch: int = Field(
        default=4,
        description=(
            "A pod loads a model other pods already serve only when that gives it at least this many queued tasks "
            "(a load costs about this many generations)."
        ),
        ge=1,
        le=1000,
    )


class OutputSpec(SpecModel):
    """The S3 bucket the outputs are written to."""

    bucket: str = Field(description="S3 bucket of the outputs.", pattern=S3_BUCKET_PATTERN)
    region: str = Field(default=DEFAULT_REGION, description="Region of the bucket.", min_length=1, max_length=64)
    endpoint: str | None = Field(
        default=None,
        description="S3 endpoint URL for S3-compatible stores; AWS when absent.",
        max_length=URL_MAX_LENGTH,
        pattern=HTTP_URL_PATTERN,
    )
    credentials_secret: str | None = Field(
        default=None,
        description="Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; the pod's identity is used when absent.",
        max_length=DNS1123_SUBDOMAIN_MAX_LENGTH,
        pattern=DNS1123_SUBDOMAIN_PATTERN,
    )


class ApiAuthSpec(SpecModel):
    """Credentials the SD Web UI API requires (its `--api-auth user:password` flag), read from a Secret."""

    secret_name: str = Field(
        description="Secret holding `user:password` (several pairs separated by commas; the agent uses the first).",
        max_length=DNS1123_SUBDOMAIN_MAX_LENGTH,
        pattern=DNS1123_SUBDOMAIN_PATTERN,
    )
    key: str = Field(
        default=DEFAULT_API_AUTH_KEY, description="Key of the Secret holding the credentials.", min_length=1
    )


class AgentSpec(SpecModel):
    """The agent sidecar that runs tasks in each pod."""

    image: str | None = Field(
        default=None, description="Agent image; the operator's own image when absent.", min_length=1
    )
    allow_private_links: bool = Field(
        default=False, description="Allow input links to private, loopback and link-local addresses."
    )
    allowed_link_hosts: list[str] | None = Field(
        default=None, description="Hosts input links may point to, even private ones; any public host when absent."
    )
    max_download_bytes: int = Field(
        default=DEFAULT_MAX_DOWNLOAD_BYTES, description="Largest input image the agent downloads.", ge=1
    )
    max_links: int = Field(
        default=DEFAULT_MAX_LINKS, description="Most distinct links one task may have downloaded.", ge=0, le=1000
    )
    max_total_download_bytes: int = Field(
        default=DEFAULT_MAX_TOTAL_DOWNLOAD_BYTES,
        description="Bytes all links of one task may bring in together (the agent holds them in memory).",
        ge=1,
    )
    allowed_s3_prefixes: list[str] | None = Field(
        default=None,
        description=(
            "s3://bucket/prefix locations s3:// links may read with the runtime's credentials; when empty, only the "
            "runtime's own output bucket and models.s3Prefix."
        ),
        json_schema_extra={"items": {"pattern": S3_URI_PATTERN}},
    )
    queue_next_generation: bool = Field(
        default=DEFAULT_QUEUE_NEXT_GENERATION,
        description=(
            "Send the next task's generation while the current one runs, to wait in the Web UI's own queue, so the GPU "
            "goes from one to the next without a round trip; off for a Web UI behind a proxy that refuses a second "
            "request at a time."
        ),
    )
    resources: dict[str, Any] | None = Field(
        default=None, description="Kubernetes ResourceRequirements of the agent container."
    )


class SDRuntimeSpec(SpecModel):
    """The SD Web UI pods: image, checkpoint(s), placement, scaling and output bucket."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            cel_rule(
                "(has(self.dynamicModel) && self.dynamicModel) || has(self.checkpoint)",
                STATIC_NEEDS_CHECKPOINT_MESSAGE,
                field_path=".checkpoint",
            )
        )
    )

    type: RuntimeType = Field(default="sdwebui", description="Kind of server in the pods: sdwebui (AUTOMATIC1111 API).")
    image: str = Field(description="SD Web UI container image.", min_length=1)
    command: list[str] | None = Field(
        default=None, description="Entrypoint of the SD Web UI container; the image's when absent."
    )
    args: list[str] | None = Field(
        default=None,
        description=(
            "Arguments of the SD Web UI container. The operator adds --api, --listen, --port, --ckpt-dir,"
            " --no-download-sd-model (and --ckpt for a static runtime, --api-auth with apiAuth)."
        ),
    )
    port: int = Field(
        default=DEFAULT_PORT,
        description="Port the SD Web UI API listens on; passed as --port (a --port in args is replaced).",
        ge=1,
        le=65535,
    )
    api_auth: ApiAuthSpec | None = Field(
        default=None, description="Start the SD Web UI with --api-auth from a Secret; the agent authenticates."
    )
    env: list[EnvVar] | None = Field(default=None, description="Environment of the SD Web UI container.")
    checkpoint: str | None = Field(
        default=None,
        description="The checkpoint a static runtime serves (required unless dynamicModel); a dynamic one's first.",
        min_length=1,
        max_length=512,
    )
    dynamic_model: bool = Field(
        default=False,
        description="Switch checkpoints per task (the task names one) instead of serving only `checkpoint`.",
    )
    models: ModelStorageSpec = Field(
        default_factory=ModelStorageSpec,
        description="Where the checkpoints come from.",
        json_schema_extra=DEFAULTED_OBJECT,
    )
    placement: PlacementSpec = Field(
        default_factory=PlacementSpec,
        description="Nodes and resources of the pods.",
        json_schema_extra=DEFAULTED_OBJECT,
    )
    scaling: ScalingSpec = Field(
        default_factory=ScalingSpec,
        description="Replica count driven by the queue.",
        json_schema_extra=DEFAULTED_OBJECT,
    )
    scheduling: SchedulingSpec = Field(
        default_factory=SchedulingSpec,
        description="How queued tasks are placed on pods.",
        json_schema_extra=DEFAULTED_OBJECT,
    )
    output: OutputSpec = Field(description="The S3 bucket the outputs are written to.")
    request_timeout_seconds: int = Field(
        default=DEFAULT_REQUEST_TIMEOUT_SECONDS,
        description="Time limit of one SD Web UI call; a task's timeoutSeconds overrides it.",
        ge=1,
        le=86400,
    )
    agent: AgentSpec = Field(
        default_factory=AgentSpec, description="The agent sidecar of each pod.", json_schema_extra=DEFAULTED_OBJECT
    )

    @model_validator(mode="after")
    def _static_needs_checkpoint(self) -> Self:
        if not self.dynamic_model and self.checkpoint is None:
            raise ValueError(STATIC_NEEDS_CHECKPOINT_MESSAGE)
        return self


class RuntimePodStatus(StatusModel):
    """One pod of the runtime as the operator sees it."""

    name: str = Field(description="Pod name.")
    ready: bool | None = Field(default=None, description="The SD Web UI answers and the agent runs.")
    busy: bool | None = Field(default=None, description="A task runs on the pod.")
    task: str | None = Field(default=None, description="SDTask running on the pod.")
    model: str | None = Field(default=None, description="Checkpoint loaded in the pod.")
    node: str | None = Field(default=None, description="Node of the pod.")
    phase: str | None = Field(default=None, description="Kubernetes phase of the pod.")


class QueuedModel(StatusModel):
    """Queued tasks of the runtime that ask for one checkpoint."""

    model: str = Field(description="Checkpoint the tasks ask for; empty: any loaded one.")
    tasks: int = Field(description="Tasks queued for it.", ge=0)


QUEUE_HEAD_LENGTH = 10


class QueueSummary(StatusModel):
    """The runtime's queue, written only when it changes (no write per queued task)."""

    head: list[str] = Field(
        default_factory=list,
        description=f"Names of the first {QUEUE_HEAD_LENGTH} queued tasks in dispatch order (priority, then age).",
    )
    by_model: list[QueuedModel] = Field(
        default_factory=list,
        description="Queued tasks per checkpoint.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["model"]},
    )


class SDRuntimeStatus(StatusModel):
    """Replicas, queue and pods, written by the operator."""

    observed_generation: int | None = Field(default=None, description="metadata.generation this status is for.", ge=0)
    desired_replicas: int | None = Field(default=None, description="Pods the queue asks for.", ge=0)
    replicas: int | None = Field(default=None, description="Pods that exist.", ge=0)
    ready_replicas: int | None = Field(default=None, description="Pods ready to take a task.", ge=0)
    queued: int | None = Field(default=None, description="Tasks waiting for a pod.", ge=0)
    running: int | None = Field(default=None, description="Tasks running.", ge=0)
    queue: QueueSummary | None = Field(default=None, description="Order and models of the queued tasks.")
    pods: list[RuntimePodStatus] = Field(
        default_factory=list,
        description="The runtime's pods.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready, Scaling and Degraded conditions.",
        json_schema_extra=CONDITIONS_LIST_MAP,
    )

    def condition(self, condition_type: str) -> Condition | None:
        return next((item for item in self.conditions if item.type == condition_type), None)


class SDRuntime(CustomResource):
    """A pool of Stable Diffusion Web UI pods that SDTasks run on."""

    api_version: Literal["sdtask.io/v1alpha1"] = API_VERSION
    kind: Literal["SDRuntime"] = "SDRuntime"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: SDRuntimeSpec
    status: SDRuntimeStatus | None = None


SDRUNTIME_RESOURCE = ResourceDefinition(
    kind="SDRuntime",
    plural="sdruntimes",
    short_names=("sdr",),
    description=SDRuntime.__doc__ or "",
    spec_model=SDRuntimeSpec,
    status_model=SDRuntimeStatus,
    printer_columns=(
        PrinterColumn("Model", ".spec.checkpoint", "string", "The checkpoint a static runtime serves."),
        PrinterColumn("Dynamic", ".spec.dynamicModel", "boolean", "Checkpoints switched per task."),
        PrinterColumn("Desired", ".status.desiredReplicas", "integer", "Pods the queue asks for."),
        PrinterColumn("Ready", ".status.readyReplicas", "integer", "Pods ready to take a task."),
        PrinterColumn("Queued", ".status.queued", "integer", "Tasks waiting for a pod."),
        PrinterColumn("Running", ".status.running", "integer", "Tasks running."),
        PrinterColumn("Age", ".metadata.creationTimestamp", "date", "Time since the runtime was created."),
    ),
)
