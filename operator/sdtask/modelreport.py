"""Where a runtime pod tells the operator which checkpoint its Web UI has loaded: a Lease named after the pod. Pure.

Why a Lease, not the pod: writing to its own pod (an annotation) needs pod patch, and with it the agent, whose token
sits next to third-party code, could change far more than one annotation. A Lease is a small object of its own: the
agent's Role grants leases but no pod write at all, and the chart's admission policy narrows the agent to the Lease
named after its own pod (the pod name bound into its token), owned by that pod, labelled as ours. Owned by the pod,
the garbage collector removes it with the pod. Tasks carry the model they ran on in their status too (status.model).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sdtask.constants import ANNOTATION_MODEL, LABEL_COMPONENT, LABEL_MANAGED_BY, LABEL_RUNTIME, MANAGER

LEASE_GROUP, LEASE_VERSION, LEASE_PLURAL = "coordination.k8s.io", "v1", "leases"
# The operator watches only these (a server-side selector: a cluster's node heartbeats are Leases too).
LEASE_SELECTOR = f"{LABEL_RUNTIME},{LABEL_MANAGED_BY}={MANAGER}"


def model_lease(namespace: str, pod: str, pod_uid: str, runtime: str, model: str) -> dict[str, Any]:
    """The Lease an agent applies after its Web UI loaded `model` (before its first task, and after each switch)."""
    metadata: dict[str, Any] = {
        "name": pod,
        "namespace": namespace,
        "labels": {LABEL_RUNTIME: runtime, LABEL_MANAGED_BY: MANAGER, LABEL_COMPONENT: "agent"},
        "annotations": {ANNOTATION_MODEL: model},
    }
    if pod_uid:
        metadata["ownerReferences"] = [{"apiVersion": "v1", "kind": "Pod", "name": pod, "uid": pod_uid}]
    return {
        "apiVersion": f"{LEASE_GROUP}/{LEASE_VERSION}",
        "kind": "Lease",
        "metadata": metadata,
        "spec": {"holderIdentity": pod},
    }


def reported_model(lease: Mapping[str, Any]) -> tuple[str, str | None]:
    """(pod name, the model it reports) from one of those Leases."""
    meta = lease.get("metadata") or {}
    return str(meta.get("name", "")), (meta.get("annotations") or {}).get(ANNOTATION_MODEL) or None
