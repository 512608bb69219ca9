"""The one module that talks to the Kubernetes API for our own code (kopf has its own client for watching).

The official client is synchronous, so every call runs in a worker thread: the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import importlib.metadata
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import kubernetes
from kubernetes.client import (
    ApiClient,
    AppsV1Api,
    CoordinationV1Api,
    CoreV1Api,
    CustomObjectsApi,
    NetworkingV1Api,
    RbacAuthorizationV1Api,
)
from kubernetes.client.exceptions import ApiException

from sdtask.conditions import now_iso
from sdtask.constants import GROUP, MANAGER, OPERATOR_NAME, RUNTIME_PLURAL, TASK_PLURAL, VERSION

# Worker threads for the blocking client; the connection pool matches, so no thread waits for (or discards) a
# connection. The operator sets its event loop's default executor to this size (see sdtask.controller.main).
THREADS = 32


class RawWatch(kubernetes.watch.Watch):  # type: ignore[misc]  # the client has no type hints
    """kubernetes' Watch, handing over each event's object as the dict the JSON line decodes to.

    For a custom object the stock Watch encodes that dict again and decodes it a second time (it has no model to
    build), three JSON passes over every event where one is needed (two thirds of the 4% of an agent's CPU that
    decoding events took in its profile).
    ERROR events still raise ApiException (a 410 included), as with the stock Watch."""

    def get_return_type(self, func: Callable[..., Any]) -> None:
        return None


def user_agent(component: str, product: str = OPERATOR_NAME) -> str:
    """`<product>/<version> (<component>)`: what the API server's audit log shows of our requests, and the field
    manager of our writes (the API server takes it from the user agent up to the first "/"). The operator and its
    agents share one product name: a second manager would add a managedFields entry to every task."""
    try:
        version = importlib.metadata.version(OPERATOR_NAME)
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        version = "unknown"
    return f"{product}/{version} ({component})"


def identify(client: ApiClient, component: str, product: str = OPERATOR_NAME) -> ApiClient:
    """Name us in the client's requests (the official client says only "OpenAPI-Generator/<v>/python")."""
    client.user_agent = user_agent(component, product)
    return client


def load_api_client(kubeconfig: str | None = None, component: str = "operator") -> ApiClient:
    """In a pod: the service account. Elsewhere: the kubeconfig (KUBECONFIG or ~/.kube/config)."""
    configuration = kubernetes.client.Configuration()
    if kubeconfig:
        kubernetes.config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    else:
        try:
            kubernetes.config.load_incluster_config(client_configuration=configuration)
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config(client_configuration=configuration)
    configuration.connection_pool_maxsize = THREADS
    return identify(ApiClient(configuration), component)


def is_conflict(error: BaseException) -> bool:
    return isinstance(error, ApiException) and error.status == 409


def is_not_found(error: BaseException) -> bool:
    return isinstance(error, ApiException) and error.status == 404


def is_api_error(error: BaseException) -> bool:
    return isinstance(error, ApiException)


def describe_error(error: BaseException) -> str:
    """One short line for a status or a log: an API error's code and reason, never its headers or body."""
    if isinstance(error, ApiException):
        return f"Kubernetes API {error.status} {error.reason}"
    return f"{type(error).__name__}: {str(error)[:200]}"


def _status_patch(status: dict[str, Any], resource_version: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"status": status}
    if resource_version:
        body["metadata"] = {"resourceVersion": resource_version}
    return body


def _unread(call: Callable[..., Any], *args: Any) -> None:
    """Make the request without decoding the answer (the connection goes back to the pool); errors still raise."""
    response = call(*args, _preload_content=False)
    response.drain_conn()
    response.release_conn()


class Kube:
    def __init__(self, client: ApiClient, field_manager: str = MANAGER, instance: str = "") -> None:
        self.client = client
        self.instance = instance
        self.core = CoreV1Api(client)
        self.apps = AppsV1Api(client)
        self.custom = CustomObjectsApi(client)
        self.rbac = RbacAuthorizationV1Api(client)
        self.networking = NetworkingV1Api(client)
        self.coordination = CoordinationV1Api(client)
        self.field_manager = field_manager

    # --- SDTask ---------------------------------------------------------------------------------------------------
    async def get_task(self, namespace: str, name: str) -> dict[str, Any]:
        result: dict[str, Any] = await asyncio.to_thread(
            self.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, TASK_PLURAL, name
        )
        return result

    async def patch_task_status(
        self, namespace: str, name: str, status: dict[str, Any], resource_version: str | None = None
    ) -> dict[str, Any]:
        """Merge-patch the status; with a resourceVersion the patch fails with 409 if the task changed meanwhile."""
        result: dict[str, Any] = await asyncio.to_thread(
            self.custom.patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            namespace,
            TASK_PLURAL,
            name,
            _status_patch(status, resource_version),
        )
        return result

    async def write_task_status(
        self, namespace: str, name: str, status: dict[str, Any], resource_version: str | None = None
    ) -> None:
        """`patch_task_status` for a caller that needs no answer (the watch brings it): the object the API server
        returns is not decoded, which is most of what a write costs the operator's CPU besides the request."""
        body = _status_patch(status, resource_version)
        patch = self.custom.patch_namespaced_custom_object_status
        await asyncio.to_thread(_unread, patch, GROUP, VERSION, namespace, TASK_PLURAL, name, body)

    async def delete_task(self, namespace: str, name: str, uid: str = "") -> None:
        """With a uid, only that task: a new one created under the same name meanwhile stays (409)."""
        body = {"preconditions": {"uid": uid}} if uid else None
        try:
            await asyncio.to_thread(
                self.custom.delete_namespaced_custom_object, GROUP, VERSION, namespace, TASK_PLURAL, name, body=body
            )
        except ApiException as error:
            if error.status not in (404, 409):
                raise

    def watch_tasks(
        self, namespace: str, field_selector: str, resource_version: str, timeout: int
    ) -> Iterator[dict[str, Any]]:
        """A blocking generator of watch events (run it in a thread): {"type": ..., "object": the task's dict}."""
        events: Iterator[dict[str, Any]] = RawWatch().stream(
            self.custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            TASK_PLURAL,
            field_selector=field_selector,
            resource_version=resource_version,
            timeout_seconds=timeout,
            allow_watch_bookmarks=True,
        )
        return events

    def list_tasks(self, namespace: str, field_selector: str) -> dict[str, Any]:
        """Blocking, like `watch_tasks`: for the agent's watch thread."""
        result: dict[str, Any] = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, namespace, TASK_PLURAL, field_selector=field_selector
        )
        return result

    # --- SDRuntime ------------------------------------------------------------------------------------------------
    async def patch_runtime_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        await asyncio.to_thread(
            self.custom.patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            namespace,
            RUNTIME_PLURAL,
            name,
            {"status": status},
        )

    # --- workloads ------------------------------------------------------------------------------------------------
    async def apply(self, manifest: dict[str, Any], field_manager: str | None = None) -> dict[str, Any]:
        """Server-side apply with force: the SDRuntime is the source of truth, manual edits of our fields go back."""
        kind = manifest["kind"]
        namespace = manifest["metadata"]["namespace"]
        name = manifest["metadata"]["name"]
        method = {
            "Deployment": self.apps.patch_namespaced_deployment,
            "Service": self.core.patch_namespaced_service,
            "ServiceAccount": self.core.patch_namespaced_service_account,
            "Role": self.rbac.patch_namespaced_role,
            "RoleBinding": self.rbac.patch_namespaced_role_binding,
            "NetworkPolicy": self.networking.patch_namespaced_network_policy,
            "Lease": self.coordination.patch_namespaced_lease,  # an agent's model report (sdtask/modelreport.py)
        }[kind]
        result = await asyncio.to_thread(
            method,
            name,
            namespace,
            manifest,
            field_manager=field_manager or self.field_manager,
            force=True,
            _content_type="application/apply-patch+yaml",
        )
        serialized: dict[str, Any] = self.client.sanitize_for_serialization(result)
        return serialized

    async def delete_workloads(self, namespace: str, name: str) -> None:
        """Delete a runtime's Deployment and Service (its pods follow through the ReplicaSet)."""
        for method in (self.apps.delete_namespaced_deployment, self.core.delete_namespaced_service):
            try:
                await asyncio.to_thread(method, name, namespace, propagation_policy="Background")
            except ApiException as error:
                if error.status != 404:
                    raise

    async def annotate_pod(self, namespace: str, name: str, annotations: dict[str, str | None]) -> None:
        try:
            await asyncio.to_thread(
                self.core.patch_namespaced_pod, name, namespace, {"metadata": {"annotations": annotations}}
            )
        except ApiException as error:
            if error.status != 404:  # a pod that just went away needs no annotation
                raise

    async def read_secret_value(
        self, namespace: str, name: str, key: str, required_label: str | None = None
    ) -> str | None:
        """The key's value; None when the Secret or key is missing, or lacks `required_label` = "true" (one answer
        for all three, so a task can't probe which Secrets exist)."""
        try:
            secret = await asyncio.to_thread(self.core.read_namespaced_secret, name, namespace)
        except ApiException as error:
            if error.status in (403, 404):
                return None
            raise
        if required_label and ((secret.metadata.labels or {}).get(required_label) or "").lower() != "true":
            return None
        data = (secret.data or {}).get(key)
        return base64.b64decode(data).decode() if data is not None else None

    # --- events ---------------------------------------------------------------------------------------------------
    async def post_event(
        self,
        involved: dict[str, Any],
        event_type: str,
        reason: str,
        message: str,
        component: str,
        when: dt.datetime | None = None,
    ) -> None:
        """Events are best-effort: losing one must never fail a task. `when` is the time of what the event tells,
        when it was posted only after the change that may already have led others to post theirs."""
        meta = involved["metadata"]
        now = when or dt.datetime.now(dt.UTC)
        event = {
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:12]}", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion"),
                "kind": involved.get("kind"),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
            "type": event_type,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": component},
            "firstTimestamp": now_iso(now),
            "lastTimestamp": now_iso(now),
            "count": 1,
            # eventTime has microseconds: several transitions in one second still list in order in `describe`.
            "eventTime": now.isoformat(timespec="microseconds"),
            "action": reason,
            "reportingComponent": component,
            "reportingInstance": self.instance or component,
        }
        with contextlib.suppress(Exception):  # see docstring
            # The answer is not read into a V1Event: nothing uses it, and the client's model building costs more CPU
            # than the request itself (an Event per finished task).
            await asyncio.to_thread(_unread, self.core.create_namespaced_event, meta["namespace"], event)
