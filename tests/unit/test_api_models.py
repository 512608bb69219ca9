"""The pydantic models accept the compatible request format and refuse what the CRD refuses, naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from sdtask.api import (
    MAX_CONTENT_BYTES,
    SDRUNTIME_RESOURCE,
    SDTASK_RESOURCE,
    SDRuntime,
    SDRuntimeSpec,
    SDTask,
    SDTaskSpec,
    SDTaskStatus,
)
from sdtask.api.crdgen import openapi_schema
from sdtask.api.runtime import STATIC_NEEDS_CHECKPOINT_MESSAGE
from sdtask.api.task import RUNTIME_OR_CHECKPOINT_MESSAGE, RUNTIME_OR_CHECKPOINT_RULE
from tests.api_cases import DELETE, INVALID_TASKS, SEED_CONTENT, SEED_METADATA, changed

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# The seed task of ARCHITECTURE.md ("Request format"), with a concrete link.
SEED_TASK: dict[str, Any] = {
    "apiVersion": "sdtask.io/v1alpha1",
    "kind": "SDTask",
    "metadata": {"name": "test-i2i"},
    "spec": {
        "task": {
            "metadata": {
                "id": "test-i2i",
                "runtime": "sdruntime",
                "tasktype": "image-to-image",
                "prefix": "output",
                "context": "",
            },
            "content": {
                "alwayson_scripts": {},
                "prompt": "cat wizard, gandalf, ...",
                "steps": 16,
                "width": 512,
                "height": 512,
                "init_images": ["https://assets.example.com/sdtask/samples/cat.png"],
            },
        }
    },
}

STATIC_RUNTIME: dict[str, Any] = {
    "apiVersion": "sdtask.io/v1alpha1",
    "kind": "SDRuntime",
    "metadata": {"name": "sdruntime"},
    "spec": {
        "image": "registry.example.com/sdtask/sd-webui:v1.10.1",
        "checkpoint": "v1-5-pruned-emaonly.safetensors",
        "output": {"bucket": "sdtask-outputs"},
    },
}


def names_field(error: ErrorDetails, dotted_field: str) -> bool:
    """The error is located at the field (or inside it), or at its parent with a message naming the rest of the path."""
    location = ".".join(str(part) for part in error["loc"])
    if location == dotted_field or location.startswith(dotted_field + "."):
        return True
    return dotted_field.startswith(location + ".") and dotted_field[len(location) + 1 :] in error["msg"]


def assert_refused(body: dict[str, Any], dotted_field: str, model: type[SDTask] | type[SDRuntime] = SDTask) -> None:
    with pytest.raises(ValidationError) as caught:
        model.from_body(body, tolerate_unknown_fields=False)
    errors = caught.value.errors()
    assert any(names_field(error, dotted_field) for error in errors), f"no error names {dotted_field}: {errors}"


def test_example_is_the_seed_task() -> None:
    assert yaml.safe_load((EXAMPLES / "task-image-to-image.yaml").read_text()) == SEED_TASK


def test_seed_task_is_accepted_and_dumps_unchanged() -> None:
    task = SDTask.from_body(SEED_TASK, tolerate_unknown_fields=False)

    assert task.spec.task.metadata.tasktype == "image-to-image"
    assert task.spec.task.content.init_images == ["https://assets.example.com/sdtask/samples/cat.png"]
    dumped = task.to_api()
    assert dumped["spec"]["task"] == SEED_TASK["spec"]["task"]
    assert dumped["spec"]["priority"] == 0
    assert dumped["spec"]["maxRetries"] == 2
    assert "status" not in dumped


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        *INVALID_TASKS,
        # Only the models judge these: the server prunes or rejects them before validation (see the integration test).
        pytest.param("spec.timeoutSecond", 30, "spec.timeoutSecond", id="unknown-spec-field"),
        pytest.param("kind", "SDRuntime", "kind", id="wrong-kind"),
    ],
)
def test_invalid_task_is_refused_naming_the_field(path: str, value: Any, field: str) -> None:
    assert_refused(changed(SEED_TASK, path, value), field)


def test_empty_runtime_message_names_the_checkpoint_fields() -> None:
    with pytest.raises(ValidationError) as caught:
        SDTask.from_body(changed(SEED_TASK, f"{SEED_METADATA}.runtime", ""))
    assert RUNTIME_OR_CHECKPOINT_MESSAGE in str(caught.value)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        pytest.param(f"{SEED_CONTENT}.alwayson_scripts", {"sd_model_checkpoint": "a.safetensors"}, id="scripts"),
        pytest.param(
            f"{SEED_CONTENT}.alwayson_scripts",
            {"override_settings": {"sd_model_checkpoint": "a.safetensors"}},
            id="scripts-override-settings",
        ),
        pytest.param(
            f"{SEED_CONTENT}.override_settings", {"sd_model_checkpoint": "a.safetensors"}, id="override-settings"
        ),
    ],
)
def test_empty_runtime_is_accepted_when_the_content_names_a_checkpoint(path: str, value: Any) -> None:
    body = changed(changed(SEED_TASK, f"{SEED_METADATA}.runtime", ""), path, value)

    task = SDTask.from_body(body, tolerate_unknown_fields=False)

    assert task.spec.task.content.requested_checkpoint() == "a.safetensors"


def test_empty_checkpoint_name_does_not_route() -> None:
    body = changed(
        changed(SEED_TASK, f"{SEED_METADATA}.runtime", ""),
        f"{SEED_CONTENT}.alwayson_scripts",
        {"sd_model_checkpoint": ""},
    )
    assert_refused(body, f"{SEED_METADATA}.runtime")


def test_content_keeps_undeclared_fields_as_given() -> None:
    controlnet = {"controlnet": {"args": [{"enabled": True, "module": "canny", "weight": 0.8}]}}
    content = {
        "prompt": "p",
        "sampler_name": "Euler a",
        "cfg_scale": 7.5,
        "seed": -1,
        "alwayson_scripts": {**controlnet, "sd_model_checkpoint": "a.safetensors"},
        "override_settings": {"sd_model_checkpoint": "a.safetensors", "CLIP_stop_at_last_layers": 2},
        "imageList": [{"data": "https://a.example/x.png", "name": "x.png", "extra": 1}],
        "context_free": {"nested": [1, "two", None]},
    }
    task = SDTask.from_body(changed(SEED_TASK, SEED_CONTENT, content), tolerate_unknown_fields=False)

    assert task.to_api()["spec"]["task"]["content"] == content


@pytest.mark.parametrize("context", ["", None, {"user": "alice", "tags": [1, 2]}, ["a"], 42, True])
def test_context_takes_any_json_value(context: Any) -> None:
    task = SDTask.from_body(changed(SEED_TASK, f"{SEED_METADATA}.context", context), tolerate_unknown_fields=False)
    assert task.spec.task.metadata.context == context


def test_objects_read_back_tolerate_unknown_fields() -> None:
    body = changed(SEED_TASK, "spec.futureField", {"a": 1})
    body = changed(body, f"{SEED_METADATA}.futureField", "x")
    body["status"] = {"phase": "Running", "futureStatusField": 1, "conditions": [{"type": "Running", "status": "True"}]}

    task = SDTask.from_body(body)

    assert task.status is not None and task.status.phase == "Running"
    assert "futureField" not in task.to_api()["spec"]


def test_spec_accepts_python_names_and_dumps_api_names() -> None:
    base = SDTaskSpec.model_validate(SEED_TASK["spec"])

    spec = SDTaskSpec(task=base.task, timeout_seconds=30, max_retries=0, ttl_seconds_after_finished=60)

    dumped = spec.to_api()
    assert dumped["timeoutSeconds"] == 30
    assert dumped["maxRetries"] == 0
    assert dumped["ttlSecondsAfterFinished"] == 60


def test_policy_and_callback_are_accepted() -> None:
    body = changed(SEED_TASK, "spec.priority", -5)
    body = changed(
        body, "spec.callback", {"url": "https://hooks.example.com/x", "secretRef": {"name": "s", "key": "k"}}
    )

    spec = SDTask.from_body(body, tolerate_unknown_fields=False).spec

    assert spec.priority == -5
    assert spec.callback is not None and spec.callback.secret_ref is not None
    assert spec.callback.secret_ref.key == "k"


def test_status_round_trips_with_compatible_names() -> None:
    status_body = {
        "phase": "Succeeded",
        "reason": "Completed",
        "conditions": [
            {"type": "Succeeded", "status": "True", "reason": "Completed", "lastTransitionTime": "2025-01-02T03:04:05Z"}
        ],
        "attempts": 1,
        "notBefore": "2025-01-02T03:00:00Z",
        "output_location": "s3://sdtask-outputs/output/test-i2i",
        "images": ["s3://sdtask-outputs/output/test-i2i/1.png"],
        "output_url": "s3://sdtask-outputs/output/test-i2i.out",
        "response": {
            "id": "test-i2i",
            "runtime": "sdruntime",
            "output_location": "s3://sdtask-outputs/output/test-i2i",
        },
        "callback": {"state": "Delivered", "attempts": 1},
    }

    status = SDTaskStatus.model_validate(status_body)

    condition = status.condition("Succeeded")
    assert condition is not None and condition.status == "True"
    assert status.output_location == "s3://sdtask-outputs/output/test-i2i"
    assert status.to_api() == status_body


def test_status_patch_holds_only_the_fields_set() -> None:
    patch = SDTaskStatus(phase="Failed", reason="ModelNotFound", attempts=1).to_patch()
    assert patch == {"phase": "Failed", "reason": "ModelNotFound", "attempts": 1}


def test_max_content_bytes_is_exported() -> None:
    assert MAX_CONTENT_BYTES == 512 * 1024


def test_static_runtime_example_is_accepted_with_defaults() -> None:
    runtime = SDRuntime.from_body(STATIC_RUNTIME, tolerate_unknown_fields=False)

    spec = runtime.spec
    assert (spec.type, spec.port, spec.dynamic_model, spec.request_timeout_seconds) == ("sdwebui", 7860, False, 600)
    assert (spec.scaling.min_replicas, spec.scaling.max_replicas, spec.scaling.tasks_per_replica) == (0, 1, 1)
    assert spec.scaling.scale_down_delay_seconds == 300 and spec.scaling.external_scaler is False
    assert spec.models.mount_path == "/models" and spec.placement.gpus_per_pod == 1
    assert spec.output.region == "us-east-1" and spec.output.credentials_secret is None
    assert spec.agent.allow_private_links is False and spec.agent.max_download_bytes == 52428800


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        pytest.param("spec.checkpoint", DELETE, "spec.checkpoint", id="static-without-checkpoint"),
        pytest.param("spec.image", DELETE, "spec.image", id="missing-image"),
        pytest.param("spec.output", DELETE, "spec.output", id="missing-output"),
        pytest.param("spec.output", {"region": "eu-west-1"}, "spec.output.bucket", id="missing-bucket"),
        pytest.param("spec.type", "comfyui", "spec.type", id="unknown-type"),
        pytest.param(
            "spec.scaling", {"minReplicas": 3, "maxReplicas": 2}, "spec.scaling.maxReplicas", id="max-below-min"
        ),
        pytest.param("spec.scaling", {"minReplicas": 2}, "spec.scaling.maxReplicas", id="min-above-default-max"),
        pytest.param("spec.scaling", {"maxReplicas": 0}, "spec.scaling.maxReplicas", id="max-zero"),
        pytest.param("spec.placement", {"gpusPerPod": 9}, "spec.placement.gpusPerPod", id="too-many-gpus"),
        pytest.param("spec.placement", {"nodeSelector": {"pool": 1}}, "spec.placement.nodeSelector", id="selector-int"),
        pytest.param("spec.models", {"s3Prefix": "https://bucket/x"}, "spec.models.s3Prefix", id="models-not-s3"),
        pytest.param("spec.requestTimeoutSeconds", 0, "spec.requestTimeoutSeconds", id="timeout-zero"),
        pytest.param("spec.dynamicModel", "yes", "spec.dynamicModel", id="dynamic-not-bool"),
        pytest.param("spec.env", [{"value": "x"}], "spec.env", id="env-without-name"),
    ],
)
def test_invalid_runtime_is_refused_naming_the_field(path: str, value: Any, field: str) -> None:
    assert_refused(changed(STATIC_RUNTIME, path, value), field, model=SDRuntime)


def test_dynamic_runtime_needs_no_checkpoint() -> None:
    body = changed(changed(STATIC_RUNTIME, "spec.checkpoint"), "spec.dynamicModel", True)
    assert SDRuntime.from_body(body, tolerate_unknown_fields=False).spec.checkpoint is None


def test_free_form_kubernetes_objects_are_kept() -> None:
    placement = {
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "resources": {"requests": {"cpu": "2", "memory": "12Gi"}},
    }
    body = changed(STATIC_RUNTIME, "spec.placement", placement)
    body = changed(body, "spec.env", [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}])
    body = changed(body, "spec.models", {"volume": {"persistentVolumeClaim": {"claimName": "models"}}})

    dumped = SDRuntime.from_body(body, tolerate_unknown_fields=False).to_api()["spec"]

    assert dumped["placement"]["tolerations"] == placement["tolerations"]
    assert dumped["placement"]["resources"] == placement["resources"]
    assert dumped["env"][0]["valueFrom"] == {"secretKeyRef": {"name": "s", "key": "k"}}
    assert dumped["models"]["volume"] == {"persistentVolumeClaim": {"claimName": "models"}}


def test_runtime_spec_model_validate_mirrors_static_rule() -> None:
    with pytest.raises(ValidationError, match="checkpoint is required"):
        SDRuntimeSpec.model_validate({"image": "i", "output": {"bucket": "sdtask-outputs"}})


def test_cel_rule_for_empty_runtime_is_in_the_crd() -> None:
    task_schema = openapi_schema(SDTASK_RESOURCE)["properties"]["spec"]["properties"]["task"]
    rules = task_schema["x-kubernetes-validations"]
    assert rules == [
        {"rule": RUNTIME_OR_CHECKPOINT_RULE, "message": RUNTIME_OR_CHECKPOINT_MESSAGE, "fieldPath": ".metadata.runtime"}
    ]
    assert "metadata.runtime" in rules[0]["message"]


def test_cel_rule_for_static_runtime_is_in_the_crd() -> None:
    spec_schema = openapi_schema(SDRUNTIME_RESOURCE)["properties"]["spec"]
    rules = spec_schema["x-kubernetes-validations"]
    assert [rule["message"] for rule in rules] == [STATIC_NEEDS_CHECKPOINT_MESSAGE]
    assert "has(self.checkpoint)" in rules[0]["rule"] and "self.dynamicModel" in rules[0]["rule"]
    scaling_rules = spec_schema["properties"]["scaling"]["x-kubernetes-validations"]
    assert "maxReplicas" in scaling_rules[0]["message"]


def test_the_phase_enum_and_the_schemas_phases_are_the_same_values() -> None:
    from typing import get_args

    from sdtask.api.task import ACTIVE_PHASES, FINISHED_PHASES, TASK_PHASES, Phase, TaskPhase

    assert get_args(TaskPhase) == TASK_PHASES == tuple(Phase)
    assert "Succeeded" in FINISHED_PHASES and "Failed" in FINISHED_PHASES and "Running" not in FINISHED_PHASES
    assert FINISHED_PHASES.isdisjoint(ACTIVE_PHASES) and Phase.PENDING not in FINISHED_PHASES | ACTIVE_PHASES
