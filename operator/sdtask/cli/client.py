"""The CLI's one door to the cluster and to S3: the current kube context (or the pod's service account), synchronous.

The operator's `clients/kube.py` is async and shaped by the operator's needs; a command line waits anyway, so this
small client stays synchronous and only has the calls the commands make.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes
from kubernetes.client import ApiClient, CoreV1Api, CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from sdtask.api.runtime import DEFAULT_REGION
from sdtask.clients.kube import identify
from sdtask.clients.s3 import S3Client, S3Settings, make_s3_client
from sdtask.constants import GROUP, LABEL_RUNTIME, RUNTIME_PLURAL, TASK_PLURAL, VERSION
from sdtask.naming import parse_s3_uri

# The field manager of the tasks the CLI creates: the user's writes, told apart from the operator's status writes.
CLI_NAME = "sdtask"

FIELD_MANAGER = "sdtask-cli"
IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

__all__ = ["ApiException", "Cluster", "ClusterError", "download_outputs"]


class ClusterError(Exception):
    """No usable kubeconfig or in-cluster identity."""


def _context_namespace(kubeconfig: str | None, context: str | None) -> str | None:
    try:
        contexts, active = kubernetes.config.list_kube_config_contexts(config_file=kubeconfig)
    except (kubernetes.config.ConfigException, FileNotFoundError):
        return None
    chosen = next((c for c in contexts if c["name"] == context), None) if context else active
    namespace: str | None = ((chosen or {}).get("context") or {}).get("namespace")
    return namespace


def connect(kubeconfig: str | None, context: str | None) -> tuple[ApiClient, str]:
    """An API client and the namespace the context names (`default` when it names none), as kubectl picks them."""
    if not kubeconfig and not context and os.environ.get("KUBERNETES_SERVICE_HOST"):
        kubernetes.config.load_incluster_config()
        namespace = IN_CLUSTER_NAMESPACE.read_text().strip() if IN_CLUSTER_NAMESPACE.exists() else "default"
        return identify(ApiClient(), "cli", CLI_NAME), namespace
    try:
        client = kubernetes.config.new_client_from_config(config_file=kubeconfig, context=context)
    except (kubernetes.config.ConfigException, FileNotFoundError) as error:
        raise ClusterError(f"no usable kubeconfig ({error}); set KUBECONFIG or pass --kubeconfig") from error
    return identify(client, "cli", CLI_NAME), _context_namespace(kubeconfig, context) or "default"


@dataclass
class Cluster:
    client: ApiClient
    namespace: str

    def __post_init__(self) -> None:
        self.core = CoreV1Api(self.client)
        self.custom = CustomObjectsApi(self.client)

    # --- tasks --------------------------------------------------------------------------------------------------------
    def create_task(self, manifest: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, TASK_PLURAL, manifest
        )
        return result

    def get_task(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, TASK_PLURAL, name
        )
        return result

    def list_tasks(
        self, label_selector: str | None = None, all_namespaces: bool = False, field_selector: str | None = None
    ) -> list[dict[str, Any]]:
        """`field_selector`: on the CRD's selectable fields (status.runtime, status.phase, status.pod)."""
        selectors = {"label_selector": label_selector or "", "field_selector": field_selector or ""}
        if all_namespaces:
            listing = self.custom.list_cluster_custom_object(GROUP, VERSION, TASK_PLURAL, **selectors)
        else:
            namespace = self.namespace
            listing = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, TASK_PLURAL, **selectors)
        return list(listing.get("items", []))

    def delete_task(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, TASK_PLURAL, name)

    def events(self, name: str, uid: str | None = None) -> list[Any]:
        selector = f"involvedObject.name={name}" + (f",involvedObject.uid={uid}" if uid else "")
        items = self.core.list_namespaced_event(self.namespace, field_selector=selector).items
        return sorted(items, key=lambda e: (e.event_time or e.last_timestamp or e.first_timestamp, e.metadata.name))

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply of an SDTask or SDRuntime (what `kubectl apply --server-side` does)."""
        plural = {"SDTask": TASK_PLURAL, "SDRuntime": RUNTIME_PLURAL}[manifest["kind"]]
        namespace = (manifest.get("metadata") or {}).get("namespace") or self.namespace
        result: dict[str, Any] = self.custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            plural,
            manifest["metadata"]["name"],
            manifest,
            field_manager=FIELD_MANAGER,
            force=True,
            _content_type="application/apply-patch+yaml",
        )
        return result

    # --- runtimes -----------------------------------------------------------------------------------------------------
    def list_runtimes(self) -> list[dict[str, Any]]:
        listing = self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, RUNTIME_PLURAL)
        return list(listing.get("items", []))

    def get_runtime(self, name: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, RUNTIME_PLURAL, name
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return result

    def runtime_pods(self, runtime: str) -> list[Any]:
        return list(self.core.list_namespaced_pod(self.namespace, label_selector=f"{LABEL_RUNTIME}={runtime}").items)


def s3_client_for(endpoint: str | None) -> S3Client:
    """Credentials from the usual AWS chain (environment, profile, pod identity); the endpoint for S3-compatible
    stores from --s3-endpoint, SDTASK_S3_ENDPOINT, or the runtime's spec.output.endpoint."""
    return make_s3_client(
        S3Settings(endpoint_url=endpoint, region=os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION)
    )


def download_outputs(s3: S3Client, uris: list[str], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    saved = []
    for uri in uris:
        bucket, key = parse_s3_uri(uri)
        target = folder / Path(key).name
        s3.download_file(bucket, key, str(target))
        saved.append(target)
    return saved
