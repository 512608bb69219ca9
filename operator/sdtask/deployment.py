"""The Deployment and Service an SDRuntime owns. Pure: runtime spec + settings in, manifests out.

The pod is the Web UI container plus the agent sidecar (this project's image running `sdtask agent`). The env
variables set here are the whole contract between operator and agent (read by sdtask.config.AgentSettings).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sdtask.config import OperatorSettings
from sdtask.constants import (
    AGENT_CONTAINER,
    API_VERSION,
    LABEL_COMPONENT,
    LABEL_MANAGED_BY,
    LABEL_RUNTIME,
    MANAGER,
    WEBUI_CONTAINER,
)

GPU_RESOURCE = "nvidia.com/gpu"
STATE_DIR = "/var/run/sdtask"
AGENT_USER_ID = 10001
# Beyond the request timeout: time to upload the result and patch the status after the last generation.
TERMINATION_MARGIN_SECONDS = 120


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


def agent_env(runtime: dict[str, Any]) -> list[dict[str, Any]]:
    spec = runtime.get("spec", {})
    output = spec.get("output", {})
    models = spec.get("models", {})
    agent = spec.get("agent", {})
    env = [
        _field_env("SDTASK_POD_NAME", "metadata.name"),
        _field_env("SDTASK_NAMESPACE", "metadata.namespace"),
        _env("SDTASK_RUNTIME", runtime["metadata"]["name"]),
        _env("SDTASK_WEBUI_URL", f"http://127.0.0.1:{spec.get('port', 7860)}"),
        _env("SDTASK_DYNAMIC_MODEL", bool(spec.get("dynamicModel", False))),
        _env("SDTASK_CHECKPOINT", spec.get("checkpoint", "")),
        _env("SDTASK_MODELS_DIR", models.get("mountPath", "/models")),
        _env("SDTASK_MODELS_S3_PREFIX", models.get("s3Prefix", "")),
        _env("SDTASK_OUTPUT_BUCKET", output.get("bucket", "")),
        _env("SDTASK_S3_ENDPOINT", output.get("endpoint", "")),
        _env("AWS_REGION", output.get("region", "us-east-1")),
        _env("SDTASK_REQUEST_TIMEOUT_SECONDS", spec.get("requestTimeoutSeconds", 600)),
        _env("SDTASK_ALLOW_PRIVATE_LINKS", bool(agent.get("allowPrivateLinks", False))),
        _env("SDTASK_ALLOWED_LINK_HOSTS", ",".join(agent.get("allowedLinkHosts", []))),
        _env("SDTASK_MAX_DOWNLOAD_BYTES", agent.get("maxDownloadBytes", 50 * 1024 * 1024)),
        _env("SDTASK_STATE_DIR", STATE_DIR),
    ]
    secret = output.get("credentialsSecret")
    if secret:  # otherwise the pod identity (IRSA, workload identity) provides credentials
        env += [_secret_env("AWS_ACCESS_KEY_ID", secret), _secret_env("AWS_SECRET_ACCESS_KEY", secret)]
    return env


def webui_args(spec: dict[str, Any]) -> list[str]:
    """The user's args; a static runtime also gets --ckpt so the Web UI starts with its one model loaded."""
    args = list(spec.get("args", []))
    checkpoint = spec.get("checkpoint")
    if not spec.get("dynamicModel", False) and checkpoint and "--ckpt" not in args:
        mount = spec.get("models", {}).get("mountPath", "/models")
        args += ["--ckpt", f"{mount.rstrip('/')}/{checkpoint}"]
    return args


def _gpu_resources(placement: dict[str, Any]) -> dict[str, Any]:
    resources = json.loads(json.dumps(placement.get("resources", {})))  # deep copy of plain JSON
    gpus = placement.get("gpusPerPod", 1)
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
    port = spec.get("port", 7860)
    mount_path = models.get("mountPath", "/models")
    volumes: list[dict[str, Any]] = [
        {"name": "models", **(models.get("volume") or {"emptyDir": {}})},
        {"name": "state", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
        {"name": "tmp", "emptyDir": {}},
    ]
    probe_get = {"httpGet": {"path": "/internal/ping", "port": port}}
    webui: dict[str, Any] = {
        "name": WEBUI_CONTAINER,
        "image": spec["image"],
        "args": webui_args(spec),
        "env": list(spec.get("env", [])),
        "ports": [{"name": "http", "containerPort": port}],
        "resources": _gpu_resources(placement),
        "volumeMounts": [
            {"name": "models", "mountPath": mount_path},
            {"name": "state", "mountPath": STATE_DIR, "readOnly": True},
        ],
        # Model loading can take minutes; the startup probe covers it so liveness doesn't kill a loading pod.
        "startupProbe": {**probe_get, "periodSeconds": 5, "failureThreshold": 120},
        "readinessProbe": {**probe_get, "periodSeconds": 5},
        # A pod being replaced finishes its task: the Web UI waits while the agent marks itself busy.
        "lifecycle": {
            "preStop": {"exec": {"command": ["/bin/sh", "-c", f"while [ -e {STATE_DIR}/busy ]; do sleep 1; done"]}}
        },
        "securityContext": {"allowPrivilegeEscalation": False},
    }
    if spec.get("command"):
        webui["command"] = list(spec["command"])
    sidecar: dict[str, Any] = {
        "name": AGENT_CONTAINER,
        "image": agent.get("image") or settings.agent_image,
        "args": ["agent"],
        "env": agent_env(runtime),
        "resources": agent.get("resources")
        or {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        "volumeMounts": [
            {"name": "models", "mountPath": mount_path},
            {"name": "state", "mountPath": STATE_DIR},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": AGENT_USER_ID,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    timeout = int(spec.get("requestTimeoutSeconds", 600))
    return {
        "metadata": {"labels": runtime_labels(name)},
        "spec": {
            "serviceAccountName": settings.agent_service_account,
            "automountServiceAccountToken": True,
            "nodeSelector": dict(placement.get("nodeSelector", {})),
            "tolerations": list(placement.get("tolerations", [])),
            "terminationGracePeriodSeconds": timeout + TERMINATION_MARGIN_SECONDS,
            "securityContext": {"fsGroup": AGENT_USER_ID, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [webui, sidecar],
            "volumes": volumes,
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
    port = runtime.get("spec", {}).get("port", 7860)
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


# What the agent may do, in its own namespace only: read and update the tasks given to its pod, annotate its pod with
# the loaded model, read a callback's signing Secret, and post Events. No wildcards.
AGENT_RULES: list[dict[str, Any]] = [
    {"apiGroups": ["sdtask.io"], "resources": ["sdtasks"], "verbs": ["get", "list", "watch", "patch"]},
    {"apiGroups": ["sdtask.io"], "resources": ["sdtasks/status"], "verbs": ["get", "patch"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
]


def build_agent_access(namespace: str, service_account: str) -> list[dict[str, Any]]:
    """ServiceAccount, Role and RoleBinding of the agents in one namespace (shared by its runtimes)."""
    labels = {LABEL_MANAGED_BY: MANAGER, LABEL_COMPONENT: "agent"}
    meta = {"name": service_account, "namespace": namespace, "labels": labels}
    return [
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
