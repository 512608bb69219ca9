"""The CRDs of crds/ on a real API server accept the compatible request and refuse bad input, naming the field.

Fixtures (from tests/conftest.py): `kube_api`, a kubernetes.client.ApiClient of an API server with the CRDs of crds/
installed, and `namespace`, a fresh namespace. Refused variants are sent with dryRun=All: the API server runs pruning,
defaulting, schema and CEL validation exactly as for a real create, and stores nothing.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from sdtask.api import GROUP, SDRUNTIME_RESOURCE, SDTASK_RESOURCE, VERSION, SDRuntime, SDTask
from sdtask.api.common import ResourceDefinition
from sdtask.api.task import RUNTIME_OR_CHECKPOINT_MESSAGE
from tests.api_cases import DELETE, INVALID_TASKS, SEED_CONTENT, SEED_METADATA
from tests.api_cases import changed as change

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
RESOURCES_BY_KIND = {"SDTask": SDTASK_RESOURCE, "SDRuntime": SDRUNTIME_RESOURCE}


def example(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text())
    return document


SEED_TASK = example("task-image-to-image.yaml")
STATIC_RUNTIME = example("runtime-static.yaml")


def changed(body: dict[str, Any], path: str, value: Any = DELETE) -> dict[str, Any]:
    """The shared `changed`, with a fresh name so objects created by several tests don't clash."""
    result = change(body, path, value)
    result["metadata"] = {"name": f"{body['metadata']['name']}-{uuid.uuid4().hex[:8]}"}
    return result


def create(kube_api: client.ApiClient, namespace: str, body: dict[str, Any], *, dry_run: bool) -> dict[str, Any]:
    resource = RESOURCES_BY_KIND[body["kind"]]
    options: dict[str, str] = {"field_validation": "Strict"}
    if dry_run:
        options["dry_run"] = "All"
    created: dict[str, Any] = client.CustomObjectsApi(kube_api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, resource.plural, body, **options
    )
    return created


def refusal(kube_api: client.ApiClient, namespace: str, body: dict[str, Any]) -> tuple[int, str, list[str]]:
    """HTTP status, message and the fields named in the causes of the API server's refusal of `body`."""
    with pytest.raises(ApiException) as caught:
        create(kube_api, namespace, body, dry_run=True)
    status = json.loads(caught.value.body)
    causes = status.get("details", {}).get("causes", [])
    return caught.value.status, status.get("message", ""), [cause.get("field", "") for cause in causes]


def assert_refused_naming(kube_api: client.ApiClient, namespace: str, body: dict[str, Any], field: str) -> str:
    code, message, fields = refusal(kube_api, namespace, body)
    assert code == 422, message
    assert field in message, f"{field} not named in: {message}"
    assert any(cause.startswith(field) for cause in fields), f"{field} not among the causes {fields}"
    return message


def test_seed_task_is_accepted_as_written(kube_api: client.ApiClient, namespace: str) -> None:
    create(kube_api, namespace, SEED_TASK, dry_run=False)

    stored = client.CustomObjectsApi(kube_api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, SDTASK_RESOURCE.plural, SEED_TASK["metadata"]["name"]
    )

    assert stored["spec"]["task"] == SEED_TASK["spec"]["task"]
    assert (stored["spec"]["priority"], stored["spec"]["maxRetries"]) == (0, 2)  # defaults filled in by the server
    assert SDTask.from_body(stored).spec.task.metadata.runtime == "sdruntime"


@pytest.mark.parametrize("name", sorted(path.name for path in EXAMPLES.glob("*.yaml")))
def test_example_is_accepted(kube_api: client.ApiClient, namespace: str, name: str) -> None:
    created = create(kube_api, namespace, example(name), dry_run=True)
    assert created["spec"]


def test_runtime_defaults_are_filled_in_by_the_server(kube_api: client.ApiClient, namespace: str) -> None:
    minimal = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "SDRuntime",
        "metadata": {"name": "minimal"},
        "spec": {
            "image": "registry.example.com/sd-webui:1",
            "checkpoint": "a.safetensors",
            "output": {"bucket": "b-1"},
        },
    }

    spec = create(kube_api, namespace, minimal, dry_run=True)["spec"]

    # The server's defaults are the models' defaults.
    assert spec == SDRuntime.from_body(minimal).to_api()["spec"]


TASK_METADATA, TASK_CONTENT = SEED_METADATA, SEED_CONTENT


@pytest.mark.parametrize(("path", "value", "field"), INVALID_TASKS)
def test_invalid_task_is_refused_naming_the_field(
    kube_api: client.ApiClient, namespace: str, path: str, value: Any, field: str
) -> None:
    assert_refused_naming(kube_api, namespace, changed(SEED_TASK, path, value), field)


def test_empty_runtime_without_checkpoint_is_refused_by_the_cel_rule(
    kube_api: client.ApiClient, namespace: str
) -> None:
    body = changed(SEED_TASK, f"{TASK_METADATA}.runtime", "")

    message = assert_refused_naming(kube_api, namespace, body, f"{TASK_METADATA}.runtime")

    assert RUNTIME_OR_CHECKPOINT_MESSAGE in message


@pytest.mark.parametrize(
    ("path", "value"),
    [
        pytest.param(f"{TASK_CONTENT}.alwayson_scripts", {"sd_model_checkpoint": "a.safetensors"}, id="scripts"),
        pytest.param(
            f"{TASK_CONTENT}.alwayson_scripts",
            {"override_settings": {"sd_model_checkpoint": "a.safetensors"}},
            id="scripts-override-settings",
        ),
        pytest.param(
            f"{TASK_CONTENT}.override_settings", {"sd_model_checkpoint": "a.safetensors"}, id="override-settings"
        ),
    ],
)
def test_empty_runtime_with_checkpoint_is_accepted(
    kube_api: client.ApiClient, namespace: str, path: str, value: Any
) -> None:
    body = changed(changed(SEED_TASK, f"{TASK_METADATA}.runtime", ""), path, value)

    created = create(kube_api, namespace, body, dry_run=True)

    assert created["spec"]["task"]["content"] == body["spec"]["task"]["content"]


def test_unknown_spec_field_is_refused_under_strict_field_validation(
    kube_api: client.ApiClient, namespace: str
) -> None:
    code, message, _ = refusal(kube_api, namespace, changed(SEED_TASK, "spec.timeoutSecond", 30))

    assert code == 400, message
    assert 'unknown field "spec.timeoutSecond"' in message


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        pytest.param("spec.checkpoint", DELETE, "spec.checkpoint", id="static-without-checkpoint"),
        pytest.param(
            "spec.scaling", {"minReplicas": 3, "maxReplicas": 2}, "spec.scaling.maxReplicas", id="max-below-min"
        ),
        pytest.param("spec.output", {"region": "eu-west-1"}, "spec.output.bucket", id="missing-bucket"),
        pytest.param("spec.type", "comfyui", "spec.type", id="unknown-type"),
    ],
)
def test_invalid_runtime_is_refused_naming_the_field(
    kube_api: client.ApiClient, namespace: str, path: str, value: Any, field: str
) -> None:
    assert_refused_naming(kube_api, namespace, changed(STATIC_RUNTIME, path, value), field)


@pytest.mark.parametrize("resource", [SDTASK_RESOURCE, SDRUNTIME_RESOURCE], ids=lambda resource: resource.kind)
def test_printer_columns_and_names_are_served(kube_api: client.ApiClient, resource: ResourceDefinition) -> None:
    crd = client.ApiextensionsV1Api(kube_api).read_custom_resource_definition(resource.crd_name)

    (version,) = crd.spec.versions
    served_columns = [(column.name, column.json_path, column.type) for column in version.additional_printer_columns]
    assert served_columns == [(column.name, column.json_path, column.type) for column in resource.printer_columns]
    assert crd.spec.names.short_names == list(resource.short_names)
    assert crd.spec.names.categories == ["sdtask"]
    assert version.subresources.status is not None


def test_status_conditions_and_columns_show_a_finished_task(kube_api: client.ApiClient, namespace: str) -> None:
    body = changed(SEED_TASK, f"{TASK_METADATA}.id", "status-check")
    name = body["metadata"]["name"]
    create(kube_api, namespace, body, dry_run=False)
    status = {
        "phase": "Succeeded",
        "reason": "Completed",
        "runtime": "sdruntime",
        "model": "v1-5-pruned-emaonly.safetensors",
        "pod": "sdruntime-0",
        "attempts": 1,
        "conditions": [
            {"type": "Succeeded", "status": "True", "reason": "Completed", "lastTransitionTime": "2025-01-01T00:00:00Z"}
        ],
        "output_location": "s3://sdtask-outputs/output/status-check",
        "response": {"id": "status-check", "runtime": "sdruntime"},
    }
    objects = client.CustomObjectsApi(kube_api)

    objects.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, SDTASK_RESOURCE.plural, name, {"status": status}
    )

    stored = objects.get_namespaced_custom_object(GROUP, VERSION, namespace, SDTASK_RESOURCE.plural, name)
    # What `kubectl wait --for=condition=Succeeded` reads.
    assert [(c["type"], c["status"]) for c in stored["status"]["conditions"]] == [("Succeeded", "True")]
    assert SDTask.from_body(stored).status is not None
    table = table_of(kube_api, namespace, name)
    columns = [column["name"] for column in table["columnDefinitions"]]
    cells = dict(zip(columns, table["rows"][0]["cells"], strict=True))
    assert cells["Phase"] == "Succeeded"
    assert cells["Attempts"] == 1
    assert cells["Output"] == "s3://sdtask-outputs/output/status-check"


def table_of(kube_api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    """The server-side table `kubectl get sdt NAME` prints."""
    response = kube_api.call_api(
        f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{SDTASK_RESOURCE.plural}/{name}",
        "GET",
        header_params={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
        auth_settings=["BearerToken"],
        _preload_content=False,
        _return_http_data_only=True,
    )
    table: dict[str, Any] = json.loads(response.data)
    return table
