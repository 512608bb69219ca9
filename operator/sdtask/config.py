"""Typed configuration, read once from the environment: one object for the operator, one for the agent."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from sdtask.api.runtime import (
    DEFAULT_MAX_DOWNLOAD_BYTES,
    DEFAULT_MAX_LINKS,
    DEFAULT_MAX_TOTAL_DOWNLOAD_BYTES,
    DEFAULT_MODELS_MOUNT_PATH,
    DEFAULT_PORT,
    DEFAULT_QUEUE_NEXT_GENERATION,
    DEFAULT_REGION,
    DEFAULT_REQUEST_TIMEOUT_SECONDS,
)
from sdtask.api.task import DEFAULT_CALLBACK_ATTEMPTS
from sdtask.constants import DEFAULT_IMAGE

# Loading a checkpoint from network storage onto the GPU can take minutes.
DEFAULT_MODEL_SWITCH_TIMEOUT_SECONDS = 600.0


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def _env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() in {"1", "true", "yes", "on"}


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return default if not value else float(value)


def _hosts(name: str) -> frozenset[str]:
    return frozenset(h.lower() for h in _env(name).replace(",", " ").split())


@dataclass(frozen=True)
class OperatorSettings:
    agent_image: str = DEFAULT_IMAGE
    agent_service_account: str = "sdtask-agent"
    # Namespaces to watch; empty means the whole cluster.
    namespaces: tuple[str, ...] = ()
    affinity_window: int = 256  # queued tasks of a priority class the scheduler looks at per pass
    # Finished tasks without their own ttlSecondsAfterFinished are deleted this long after they end (their outputs
    # stay in S3); 0 keeps them.
    finished_ttl_seconds: float = 3600.0
    starvation_limit_seconds: float = 120.0
    retry_backoff_seconds: float = 10.0
    housekeeping_interval_seconds: float = 5.0
    metrics_port: int = 8080
    allow_private_callbacks: bool = False
    allowed_callback_hosts: frozenset[str] = frozenset()

    @classmethod
    def from_env(cls) -> OperatorSettings:
        namespaces = tuple(n for n in _env("SDTASK_NAMESPACES").replace(",", " ").split() if n)
        return cls(
            agent_image=_env("SDTASK_AGENT_IMAGE", cls.agent_image),
            agent_service_account=_env("SDTASK_AGENT_SERVICE_ACCOUNT", cls.agent_service_account),
            namespaces=namespaces,
            affinity_window=int(_env_float("SDTASK_AFFINITY_WINDOW", cls.affinity_window)),
            starvation_limit_seconds=_env_float("SDTASK_STARVATION_LIMIT_SECONDS", cls.starvation_limit_seconds),
            retry_backoff_seconds=_env_float("SDTASK_RETRY_BACKOFF_SECONDS", cls.retry_backoff_seconds),
            finished_ttl_seconds=_env_float("SDTASK_FINISHED_TTL_SECONDS", cls.finished_ttl_seconds),
            housekeeping_interval_seconds=_env_float("SDTASK_HOUSEKEEPING_SECONDS", cls.housekeeping_interval_seconds),
            metrics_port=int(_env_float("SDTASK_METRICS_PORT", cls.metrics_port)),
            allow_private_callbacks=_env_bool("SDTASK_ALLOW_PRIVATE_CALLBACKS"),
            allowed_callback_hosts=_hosts("SDTASK_ALLOWED_CALLBACK_HOSTS"),
        )


@dataclass(frozen=True)
class AgentSettings:
    """What the agent sidecar knows: set by the operator in the pod spec (see sdtask.deployment)."""

    pod_name: str
    namespace: str
    runtime: str
    pod_uid: str = ""  # owner of the pod's model Lease, so it goes with the pod
    webui_url: str = f"http://127.0.0.1:{DEFAULT_PORT}"
    webui_api_auth: str = field(default="", repr=False)  # the Web UI's --api-auth "user:password", from a Secret
    dynamic_model: bool = False
    checkpoint: str = ""
    models_dir: str = DEFAULT_MODELS_MOUNT_PATH
    models_s3_prefix: str = ""
    output_bucket: str = ""
    s3_endpoint: str = ""
    s3_region: str = DEFAULT_REGION
    request_timeout_seconds: float = DEFAULT_REQUEST_TIMEOUT_SECONDS
    allow_private_links: bool = False
    allowed_link_hosts: frozenset[str] = field(default_factory=frozenset)
    max_download_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES
    max_links: int = DEFAULT_MAX_LINKS
    max_total_download_bytes: int = DEFAULT_MAX_TOTAL_DOWNLOAD_BYTES
    # Where s3:// links may read; the runtime's output bucket and models prefix are always added (see s3_link_prefixes).
    allowed_s3_prefixes: tuple[str, ...] = ()
    # The operator's callback policy, handed over in the pod env: one policy for callbacks, whoever sends them.
    allow_private_callbacks: bool = False
    allowed_callback_hosts: frozenset[str] = field(default_factory=frozenset)
    max_model_bytes: int = 64 * 1024**3  # a checkpoint fetched from models.s3Prefix
    model_switch_timeout_seconds: float = DEFAULT_MODEL_SWITCH_TIMEOUT_SECONDS
    state_dir: str = "/var/run/sdtask"  # shared with the Web UI container: its preStop hook waits on `busy` here
    callback_attempts: int = DEFAULT_CALLBACK_ATTEMPTS  # the callback deadline (5 minutes) bounds them too
    callback_base_delay_seconds: float = 1.0
    retry_backoff_seconds: float = 10.0
    # Outputs that can't be stored because S3 is unreachable (or answers 5xx) are tried again for this long before the
    # attempt fails (and its generation would be redone); within the pod's termination margin (deployment.py).
    upload_retry_seconds: float = 90.0
    # At most one status.progress write per task this often (SDTASK_PROGRESS_INTERVAL_SECONDS).
    progress_interval_seconds: float = 5.0
    metrics_port: int = 0  # the agent's own /metrics (the pod spec sets it and declares the port); 0 = off
    # Send the next task's generation while the current one runs, to wait in the Web UI's own queue: the GPU goes
    # from one to the next without a round trip (agent/queueing.py). The runtime's agent.queueNextGeneration.
    queue_next_generation: bool = DEFAULT_QUEUE_NEXT_GENERATION

    @classmethod
    def from_env(cls) -> AgentSettings:
        return cls(
            pod_name=_env("SDTASK_POD_NAME"),
            pod_uid=_env("SDTASK_POD_UID"),
            namespace=_env("SDTASK_NAMESPACE", "default"),
            runtime=_env("SDTASK_RUNTIME"),
            webui_url=_env("SDTASK_WEBUI_URL", cls.webui_url),
            webui_api_auth=_env("SDTASK_WEBUI_API_AUTH"),
            dynamic_model=_env_bool("SDTASK_DYNAMIC_MODEL"),
            checkpoint=_env("SDTASK_CHECKPOINT"),
            models_dir=_env("SDTASK_MODELS_DIR", cls.models_dir),
            models_s3_prefix=_env("SDTASK_MODELS_S3_PREFIX"),
            output_bucket=_env("SDTASK_OUTPUT_BUCKET"),
            s3_endpoint=_env("SDTASK_S3_ENDPOINT"),
            s3_region=_env("AWS_REGION", _env("AWS_DEFAULT_REGION", cls.s3_region)),
            request_timeout_seconds=_env_float("SDTASK_REQUEST_TIMEOUT_SECONDS", cls.request_timeout_seconds),
            allow_private_links=_env_bool("SDTASK_ALLOW_PRIVATE_LINKS"),
            allowed_link_hosts=_hosts("SDTASK_ALLOWED_LINK_HOSTS"),
            max_download_bytes=int(_env_float("SDTASK_MAX_DOWNLOAD_BYTES", cls.max_download_bytes)),
            max_links=int(_env_float("SDTASK_MAX_LINKS", cls.max_links)),
            max_total_download_bytes=int(_env_float("SDTASK_MAX_TOTAL_DOWNLOAD_BYTES", cls.max_total_download_bytes)),
            allowed_s3_prefixes=tuple(p for p in _env("SDTASK_ALLOWED_S3_PREFIXES").replace(",", " ").split() if p),
            allow_private_callbacks=_env_bool("SDTASK_ALLOW_PRIVATE_CALLBACKS"),
            allowed_callback_hosts=_hosts("SDTASK_ALLOWED_CALLBACK_HOSTS"),
            max_model_bytes=int(_env_float("SDTASK_MAX_MODEL_BYTES", cls.max_model_bytes)),
            model_switch_timeout_seconds=_env_float(
                "SDTASK_MODEL_SWITCH_TIMEOUT_SECONDS", cls.model_switch_timeout_seconds
            ),
            state_dir=_env("SDTASK_STATE_DIR", cls.state_dir),
            callback_attempts=int(_env_float("SDTASK_CALLBACK_ATTEMPTS", cls.callback_attempts)),
            callback_base_delay_seconds=_env_float(
                "SDTASK_CALLBACK_BASE_DELAY_SECONDS", cls.callback_base_delay_seconds
            ),
            retry_backoff_seconds=_env_float("SDTASK_RETRY_BACKOFF_SECONDS", cls.retry_backoff_seconds),
            upload_retry_seconds=_env_float("SDTASK_UPLOAD_RETRY_SECONDS", cls.upload_retry_seconds),
            progress_interval_seconds=_env_float("SDTASK_PROGRESS_INTERVAL_SECONDS", cls.progress_interval_seconds),
            metrics_port=int(_env_float("SDTASK_AGENT_METRICS_PORT", cls.metrics_port)),
            queue_next_generation=_env_bool("SDTASK_QUEUE_NEXT_GENERATION", cls.queue_next_generation),
        )

    def s3_link_prefixes(self) -> tuple[str, ...]:
        """Where s3:// links may read: the allow-list, else the runtime's own output bucket and models prefix."""
        if self.allowed_s3_prefixes:
            return self.allowed_s3_prefixes
        own = [f"s3://{self.output_bucket}/"] if self.output_bucket else []
        return (*own, *([self.models_s3_prefix] if self.models_s3_prefix else []))

    def validate(self) -> None:
        missing = [
            name
            for name, value in (
                ("SDTASK_POD_NAME", self.pod_name),
                ("SDTASK_RUNTIME", self.runtime),
                ("SDTASK_OUTPUT_BUCKET", self.output_bucket),
            )
            if not value
        ]
        if missing:
            raise ValueError(f"agent settings missing: {', '.join(missing)}")
