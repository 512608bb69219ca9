"""The Deployment and Service an SDRuntime owns. Pure: runtime spec + settings in, manifests out.

The pod is the Web UI container plus the agent sidecar (this project's image running `sdtask agent`). The env
variables set here are the whole contract between operator and agent (read by sdtask.config.AgentSettings).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sdtask.api.runtime import (
    DEFAULT_API_AUTH_KEY,
    DEFAULT_GPUS_PER_POD,
    DEFAULT_MAX_DOWNLOAD_BYTES,
    DEFAULT_MAX_LINKS,
    DEFAULT_MAX_TOTAL_DOWNLOAD_BYTES,
    DEFAULT_MODELS_MOUNT_PATH,
    DEFAULT_PORT,
    DEFAULT_QUEUE_NEXT_GENERATION,
    DEFAULT_REGION,
    DEFAULT_REQUEST_TIMEOUT_SECONDS,
)
from sdtask.config import OperatorSettings
from sdtask.constants import (
    AGENT_CONTAINER,
    API_VERSION,
    LABEL_COMPONENT,
    LABEL_MANAGED_BY,
    LABEL_RUNTIME,
    MANAGER,
    MODEL_FETCH_CONTAINER,
    WEBUI_CONTAINER,
)

GPU_RESOURCE = "nvidia.com/gpu"
STATE_DIR = "/var/run/sdtask"
AGENT_USER_ID = 10001
AGENT_METRICS_PORT = 9464  # the agent's /metrics, declared as the pod's `agent-metrics` port (the chart's PodMonitor)
# Beyond the request timeout: time to upload the result and patch the status after the last generation.
TERMINATION_MARGIN_SECONDS = 120


# The spec's defaults come from the models (sdtask.api.runtime); these read the fields that several manifests use.
def webui_port(spec: dict[str, Any]) -> int:
    return int(spec.get("port", DEFAULT_PORT))


def models_mount_path(spec: dict[str, Any]) -> str:
    return str((spec.get("models") or {}).get("mountPath", DEFAULT_MODELS_MOUNT_PATH))


def request_timeout_seconds(spec: dict[str, Any]) -> int:
    return int(spec.get("requestTimeoutSeconds", DEFAULT_REQUEST_TIMEOUT_SECONDS))


def runtime_labels(runtime_name: str) -> dict[str, str]:
    return {
        LABEL_RUNTIME: runtime_name,
        "app.kubernetes.io/name": "sdtask-runtime",
        "app.kubernetes.io/instance": runtime_name,
        LABEL_COMPONENT: "runtime",
        LABEL_MANAGED_BY: MANAGER,
    }


def selector_labels(runtime_name: str) -> dict[str, str]:
    return {LABEL_RUNTIME: runtime_name, LABEL_COMPONENT: "runtime"}


def owner_reference(runtime: dict[str, Any]) -> dict[str, Any]:
    meta = runtime["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": "SDRuntime",
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def owned_metadata(runtime: dict[str, Any]) -> dict[str, Any]:
    """Name, labels and owner reference of what the runtime owns: deleting the runtime deletes them too."""
    name = runtime["metadata"]["name"]
    return {
        "name": deployment_name(name),
        "namespace": runtime["metadata"]["namespace"],
        "labels": runtime_labels(name),
        "ownerReferences": [owner_reference(runtime)],
    }


def _env(name: str, value: str | int | bool) -> dict[str, Any]:
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return {"name": name, "value": text}


def _field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def _secret_env(name: str, secret: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": name}}}


def agent_env(runtime: dict[str, Any], settings: OperatorSettings | None = None) -> list[dict[str, Any]]:
    """`settings` gives the operator's callback policy: agents send callbacks under the same one."""
    operator = settings or OperatorSettings()
    spec = runtime.get("spec", {})
    output = spec.get("output", {})
    models = spec.get("models", {})
    agent = spec.get("agent", {})
    env = [
        _field_env("SDTASK_POD_NAME", "metadata.name"),
        _field_env("SDTASK_POD_UID", "metadata.uid"),
        _field_env("SDTASK_NAMESPACE", "metadata.namespace"),
        _env("SDTASK_RUNTIME", runtime["metadata"]["name"]),
        _env("SDTASK_WEBUI_URL", f"http://127.0.0.1:{webui_port(spec)}"),
        _env("SDTASK_DYNAMIC_MODEL", bool(spec.get("dynamicModel", False))),
        _env("SDTASK_CHECKPOINT", spec.get("checkpoint", "")),
        _env("SDTASK_MODELS_DIR", models_mount_path(spec)),
        _env("SDTASK_MODELS_S3_PREFIX", models.get("s3Prefix", "")),
        _env("SDTASK_OUTPUT_BUCKET", output.get("bucket", "")),
        _env("SDTASK_S3_ENDPOINT", output.get("endpoint", "")),
        _env("AWS_REGION", output.get("region", DEFAULT_REGION)),
        _env("SDTASK_REQUEST_TIMEOUT_SECONDS", request_timeout_seconds(spec)),
        _env("SDTASK_ALLOW_PRIVATE_LINKS", bool(agent.get("allowPrivateLinks", False))),
        _env("SDTASK_ALLOWED_LINK_HOSTS", ",".join(agent.get("allowedLinkHosts", []))),
        _env("SDTASK_MAX_DOWNLOAD_BYTES", agent.get("maxDownloadBytes", DEFAULT_MAX_DOWNLOAD_BYTES)),
        _env("SDTASK_MAX_LINKS", agent.get("maxLinks", DEFAULT_MAX_LINKS)),
        _env("SDTASK_MAX_TOTAL_DOWNLOAD_BYTES", agent.get("maxTotalDownloadBytes", DEFAULT_MAX_TOTAL_DOWNLOAD_BYTES)),
        _env("SDTASK_ALLOWED_S3_PREFIXES", ",".join(agent.get("allowedS3Prefixes") or [])),
        _env("SDTASK_QUEUE_NEXT_GENERATION", bool(agent.get("queueNextGeneration", DEFAULT_QUEUE_NEXT_GENERATION))),
        _env("SDTASK_ALLOW_PRIVATE_CALLBACKS", operator.allow_private_callbacks),
        _env("SDTASK_ALLOWED_CALLBACK_HOSTS", ",".join(sorted(operator.allowed_callback_hosts))),
        _env("SDTASK_STATE_DIR", STATE_DIR),
        _env("SDTASK_AGENT_METRICS_PORT", AGENT_METRICS_PORT),
    ]
    return env + _s3_credentials_env(output) + _api_auth_env(spec)


def _s3_credentials_env(output: dict[str, Any]) -> list[dict[str, Any]]:
    secret = output.get("credentialsSecret")
    if not secret:  # the pod identity (IRSA, workload identity) provides credentials
        return []
    return [_secret_env("AWS_ACCESS_KEY_ID", secret), _secret_env("AWS_SECRET_ACCESS_KEY", secret)]


def model_fetch_env(runtime: dict[str, Any]) -> list[dict[str, Any]]:
    """What the `fetch-model` init container reads: the checkpoint, where it comes from and goes, S3 access."""
    spec = runtime.get("spec", {})
    output = spec.get("output", {})
    models = spec.get("models", {})
    return [
        _env("SDTASK_CHECKPOINT", spec.get("checkpoint", "")),
        _env("SDTASK_MODELS_DIR", models_mount_path(spec)),
        _env("SDTASK_MODELS_S3_PREFIX", models.get("s3Prefix", "")),
        _env("SDTASK_S3_ENDPOINT", output.get("endpoint", "")),
        _env("AWS_REGION", output.get("region", DEFAULT_REGION)),
        *_s3_credentials_env(output),
    ]


def needs_model_fetch(spec: dict[str, Any]) -> bool:
    """A static runtime whose checkpoint comes from models.s3Prefix gets it before the Web UI starts."""
    return bool(
        not spec.get("dynamicModel", False) and spec.get("checkpoint") and (spec.get("models") or {}).get("s3Prefix")
    )


# Flags the system needs and therefore owns: a user's value for them is replaced, never duplicated.
_OWNED_VALUE_FLAGS = ("--port", "--ckpt-dir")
_OWNED_SWITCHES = ("--api", "--listen", "--no-download-sd-model")
WEBUI_API_AUTH_ENV = "SDTASK_WEBUI_API_AUTH"
PROBE_PATH = "/sdapi/v1/memory"  # registered by modules/api/api.py in UI and API-only (--nowebui) mode alike


def _without_flags(args: list[str], value_flags: tuple[str, ...], switches: tuple[str, ...]) -> list[str]:
    """`args` less the given flags, in both `--flag value` and `--flag=value` forms."""
    kept: list[str] = []
    skip_value = False
    for arg in args:
        if skip_value:
            skip_value = False
            continue
        name = arg.split("=", 1)[0]
        if arg in value_flags:
            skip_value = True
        elif name in value_flags or arg in switches:
            continue
        else:
            kept.append(arg)
    return kept


def _has_flag(args: list[str], flag: str) -> bool:
    return any(arg == flag or arg.startswith(f"{flag}=") for arg in args)


def webui_args(spec: dict[str, Any]) -> list[str]:
    """The user's args plus what the system needs from the real Web UI:
    - `--api` (the API is off without it in UI mode), `--listen` (the kubelet probes the pod IP, not 127.0.0.1) and
      the runtime's `--port` (API-only mode would otherwise pick 7861 while the probes and the agent use `port`);
    - `--ckpt-dir <models mountPath>`: the Web UI lists checkpoints only from models/Stable-diffusion and --ckpt-dir
      (modules/sd_models.py), so without it nothing delivered into the volume is ever seen;
    - `--no-download-sd-model`: models come from the image, the volume or models.s3Prefix, never from the internet
      (a missing --ckpt would otherwise make the Web UI fetch SD 1.5 or fall back to any model it finds);
    - a static runtime's `--ckpt <mountPath>/<checkpoint>` (unless the user names one), so it starts with its model;
    - `--api-auth $(SDTASK_WEBUI_API_AUTH)` when the runtime has apiAuth (the kubelet expands it from the Secret).
    """
    mount = models_mount_path(spec).rstrip("/") or "/"
    args = _without_flags(list(spec.get("args") or []), _OWNED_VALUE_FLAGS, _OWNED_SWITCHES)
    args += ["--api", "--listen", "--port", str(webui_port(spec)), "--ckpt-dir", mount, "--no-download-sd-model"]
    checkpoint = spec.get("checkpoint")
    if not spec.get("dynamicModel", False) and checkpoint and not _has_flag(args, "--ckpt"):
        args += ["--ckpt", f"{mount.rstrip('/')}/{checkpoint}"]
    if spec.get("apiAuth") and not _has_flag(args, "--api-auth"):
        args += ["--api-auth", f"$({WEBUI_API_AUTH_ENV})"]
    return args


def _api_auth_env(spec: dict[str, Any]) -> list[dict[str, Any]]:
    auth = spec.get("apiAuth")
    if not auth:
        return []
    ref = {"name": auth["secretName"], "key": auth.get("key", DEFAULT_API_AUTH_KEY)}
    return [{"name": WEBUI_API_AUTH_ENV, "valueFrom": {"secretKeyRef": ref}}]


def webui_probes(spec: dict[str, Any]) -> dict[str, Any]:
    """Startup covers a cold node (image pull done, model loading onto the GPU) for up to 30 minutes, so liveness
    never kills a loading pod. With --api-auth every API route answers 401 without credentials, which an httpGet
    probe can't send without putting them in the pod spec: the probe is then a TCP connect, and the agent, which
    has the credentials, waits for the API to answer before it takes a task."""
    port = webui_port(spec)
    check: dict[str, Any] = (
        {"tcpSocket": {"port": port}} if spec.get("apiAuth") else {"httpGet": {"path": PROBE_PATH, "port": port}}
    )
    return {
        "startupProbe": {**check, "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 180},
        "readinessProbe": {**check, "periodSeconds": 5, "timeoutSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {**check, "periodSeconds": 20, "timeoutSeconds": 10, "failureThreshold": 6},
    }


def _gpu_resources(placement: dict[str, Any]) -> dict[str, Any]:
    resources: dict[str, Any] = json.loads(json.dumps(placement.get("resources", {})))  # deep copy of plain JSON
    gpus = placement.get("gpusPerPod", DEFAULT_GPUS_PER_POD)
    if gpus:
        for kind in ("limits", "requests"):
            resources.setdefault(kind, {})[GPU_RESOURCE] = str(gpus)
    return resources


def pod_template(runtime: dict[str, Any], settings: OperatorSettings) -> dict[str, Any]:
    name = runtime["metadata"]["name"]
    spec = runtime.get("spec", {})
    placement = spec.get("placement", {})
    models = spec.get("models", {})
    agent = spec.get("agent", {})
    port = webui_port(spec)
    mount_path = models_mount_path(spec)
    volumes: list[dict[str, Any]] = [
        {"name": "models", **(models.get("volume") or {"emptyDir": {}})},
        {"name": "state", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
        {"name": "tmp", "emptyDir": {}},
        agent_token_volume(),
    ]
    webui: dict[str, Any] = {
        "name": WEBUI_CONTAINER,
        "image": spec["image"],
        "args": webui_args(spec),
        "env": list(spec.get("env") or []) + _api_auth_env(spec),
        "ports": [{"name": "http", "containerPort": port}],
        "resources": _gpu_resources(placement),
        "volumeMounts": [
            {"name": "models", "mountPath": mount_path},
            {"name": "state", "mountPath": STATE_DIR, "readOnly": True},
        ],
        **webui_probes(spec),
        # A pod being replaced finishes its task: the Web UI waits while the agent marks itself busy.
        "lifecycle": {
            "preStop": {"exec": {"command": ["/bin/sh", "-c", f"while [ -e {STATE_DIR}/busy ]; do sleep 1; done"]}}
        },
        # Real Web UI images write into their install folder (config.json, cache.json, models/, outputs/,
        # repositories/) and often run as root: a read-only root filesystem and runAsNonRoot would break them, so
        # they are left to the image (see README). What any image tolerates is set: no capabilities, no escalation.
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    if spec.get("command"):
        webui["command"] = list(spec["command"])
    sidecar: dict[str, Any] = {
        "name": AGENT_CONTAINER,
        "image": agent.get("image") or settings.agent_image,
        "args": ["agent"],
        "env": agent_env(runtime, settings),
        "ports": [{"name": "agent-metrics", "containerPort": AGENT_METRICS_PORT}],
        "resources": agent.get("resources")
        or {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        "volumeMounts": [
            {"name": "models", "mountPath": mount_path},
            {"name": "state", "mountPath": STATE_DIR},
            {"name": "tmp", "mountPath": "/tmp"},
            # The API token: in the agent only, never in the Web UI container (third-party code and extensions).
            {"name": AGENT_TOKEN_VOLUME, "mountPath": SERVICE_ACCOUNT_DIR, "readOnly": True},
        ],
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": AGENT_USER_ID,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    timeout = request_timeout_seconds(spec)
    init_containers = []
    if needs_model_fetch(spec):
        init_containers.append(
            {
                "name": MODEL_FETCH_CONTAINER,
                "image": sidecar["image"],
                "args": ["fetch-model"],
                "env": model_fetch_env(runtime),
                "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
                "volumeMounts": [{"name": "models", "mountPath": mount_path}, {"name": "tmp", "mountPath": "/tmp"}],
                "securityContext": sidecar["securityContext"],
                # The reason (which object is missing) reaches the pod status and so the runtime's Degraded.
                "terminationMessagePolicy": "FallbackToLogsOnError",
            }
        )
    return {
        "metadata": {"labels": runtime_labels(name)},
        "spec": {
            "serviceAccountName": settings.agent_service_account,
            "automountServiceAccountToken": False,  # mounted into the agent container alone (agent_token_volume)
            "nodeSelector": dict(placement.get("nodeSelector", {})),
            "tolerations": list(placement.get("tolerations", [])),
            "terminationGracePeriodSeconds": timeout + TERMINATION_MARGIN_SECONDS,
            "securityContext": {"fsGroup": AGENT_USER_ID, "seccompProfile": {"type": "RuntimeDefault"}},
            "initContainers": init_containers,
            "containers": [webui, sidecar],
            "volumes": volumes,
        },
    }


AGENT_TOKEN_VOLUME = "agent-token"
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"  # where the Kubernetes client looks
TOKEN_EXPIRATION_SECONDS = 3607  # what the kubelet gives automounted tokens; it rotates them before expiry


def agent_token_volume() -> dict[str, Any]:
    """What automountServiceAccountToken would mount (token, CA, namespace), as a volume only the agent mounts."""
    return {
        "name": AGENT_TOKEN_VOLUME,
        "projected": {
            "defaultMode": 0o444,
            "sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": TOKEN_EXPIRATION_SECONDS}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
            ],
        },
    }


def build_deployment(runtime: dict[str, Any], replicas: int, settings: OperatorSettings) -> dict[str, Any]:
    name = runtime["metadata"]["name"]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": owned_metadata(runtime),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector_labels(name)},
            # No surge: GPU pools are usually full, and a surge pod would wait Pending for a GPU that never frees.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}},
            "template": pod_template(runtime, settings),
        },
    }


def build_service(runtime: dict[str, Any]) -> dict[str, Any]:
    name = runtime["metadata"]["name"]
    port = webui_port(runtime.get("spec", {}))
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": owned_metadata(runtime),
        "spec": {
            "selector": selector_labels(name),
            "ports": [{"name": "http", "port": port, "targetPort": "http"}],
        },
    }


def deployment_name(runtime_name: str) -> str:
    """Names the Deployment and the Service; a Service name is a DNS-1035 label of at most 63 characters."""
    name = f"sdruntime-{runtime_name}"
    if len(name) <= 63:
        return name
    return f"{name[:54]}-{hashlib.sha256(runtime_name.encode()).hexdigest()[:8]}"


def manifest_hash(manifest: dict[str, Any]) -> str:
    """Stable digest of what we apply, so an unchanged runtime costs no API call."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]


# What the agent may do, in its own namespace only: read the tasks given to its pod and write their status (never
# the tasks themselves), report the loaded model in its pod's Lease (server-side apply: create and patch; the chart's
# admission policy narrows it to the Lease of its own pod), read a callback's signing Secret, and post Events. No
# wildcards, and no pod write at all.
AGENT_RULES: list[dict[str, Any]] = [
    {"apiGroups": ["sdtask.io"], "resources": ["sdtasks"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["sdtask.io"], "resources": ["sdtasks/status"], "verbs": ["get", "patch"]},
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create", "patch"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
]


RUNTIME_NETWORK_POLICY = "sdtask-runtime-pods"


def build_runtime_network_policy(namespace: str) -> dict[str, Any]:
    """No ingress to any runtime pod of the namespace. The agent reaches its Web UI over localhost, so nothing needs
    the pods' ports; anything else in the cluster reaching the Web UI would bypass admission and the link policy.
    (kubelet probes come from the node, which NetworkPolicy implementations let through.)"""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": RUNTIME_NETWORK_POLICY,
            "namespace": namespace,
            "labels": {LABEL_MANAGED_BY: MANAGER, LABEL_COMPONENT: "runtime"},
        },
        "spec": {
            "podSelector": {"matchLabels": {LABEL_COMPONENT: "runtime", LABEL_MANAGED_BY: MANAGER}},
            "policyTypes": ["Ingress"],
            "ingress": [],
        },
    }


def build_agent_access(namespace: str, service_account: str) -> list[dict[str, Any]]:
    """ServiceAccount, Role and RoleBinding of the agents in one namespace (shared by its runtimes), and the
    NetworkPolicy that keeps the runtime pods' Web UI port closed to the cluster."""
    labels = {LABEL_MANAGED_BY: MANAGER, LABEL_COMPONENT: "agent"}
    meta = {"name": service_account, "namespace": namespace, "labels": labels}
    return [
        build_runtime_network_policy(namespace),
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta, "rules": AGENT_RULES},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": service_account},
            "subjects": [{"kind": "ServiceAccount", "name": service_account, "namespace": namespace}],
        },
    ]
