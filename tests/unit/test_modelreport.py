"""The loaded model's report: the agent's Lease (no pod write) and how the operator's pod views take it."""

from __future__ import annotations

from typing import Any

from sdtask.controller.views import pod_view, with_models
from sdtask.modelreport import LEASE_SELECTOR, model_lease, reported_model

POD: dict[str, Any] = {
    "metadata": {
        "name": "sdruntime-abc",
        "namespace": "gen",
        "labels": {"sdtask.io/runtime": "sdruntime", "app.kubernetes.io/managed-by": "sdtask-operator"},
        # what agents wrote before: no longer believed (any pod writer could set it)
        "annotations": {"sdtask.io/model": "forged.safetensors"},
    },
    "spec": {"nodeName": "gpu-1"},
    "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
}


def test_the_lease_is_named_after_the_pod_owned_by_it_and_labelled_for_the_operators_watch() -> None:
    lease = model_lease("gen", "sdruntime-abc", "uid-1", "sdruntime", "v1-5.safetensors [6ce0161689]")
    meta = lease["metadata"]
    assert (lease["kind"], meta["name"], meta["namespace"]) == ("Lease", "sdruntime-abc", "gen")
    assert meta["ownerReferences"] == [{"apiVersion": "v1", "kind": "Pod", "name": "sdruntime-abc", "uid": "uid-1"}]
    assert meta["annotations"] == {"sdtask.io/model": "v1-5.safetensors [6ce0161689]"}
    selected = [part.partition("=") for part in LEASE_SELECTOR.split(",")]
    assert all(key in meta["labels"] and (not value or meta["labels"][key] == value) for key, _, value in selected)
    assert reported_model(lease) == ("sdruntime-abc", "v1-5.safetensors [6ce0161689]")


def test_pods_take_their_model_from_their_lease_only() -> None:
    view = pod_view(POD)
    assert view.model is None  # the pod's own annotation is not a report
    other = pod_view({**POD, "metadata": {**POD["metadata"], "name": "sdruntime-def"}})
    reported = with_models([view, other], dict([reported_model(model_lease("gen", "sdruntime-abc", "u", "r", "m"))]))
    assert [(p.name, p.model) for p in reported] == [("sdruntime-abc", "m"), ("sdruntime-def", None)]
