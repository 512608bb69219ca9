from sdtask.constants import ANNOTATION_REQUEST_FORMAT
from sdtask.submit import manifest_from_body, task_name

TASK = {
    "metadata": {"id": "test-i2i", "runtime": "sdruntime", "tasktype": "image-to-image", "prefix": "output"},
    "content": {"prompt": "a cat", "init_images": ["https://example.com/cat.png"]},
}


def test_the_api_body_becomes_an_sdtask_unchanged() -> None:
    manifest = manifest_from_body({"task": TASK}, namespace="gen")
    assert manifest["kind"] == "SDTask" and manifest["apiVersion"] == "sdtask.io/v1alpha1"
    assert manifest["metadata"] == {"name": "test-i2i", "namespace": "gen"}
    assert manifest["spec"] == {"task": TASK}


def test_a_legacy_body_is_converted_and_marked_so_it_answers_in_its_shape() -> None:
    legacy = {
        "alwayson_scripts": {"task": "text-to-image", "id_task": "Job_42", "sd_model_checkpoint": "v1-5.safetensors"},
        "prompt": "a cat",
    }
    manifest = manifest_from_body(legacy)
    assert manifest["metadata"]["annotations"] == {ANNOTATION_REQUEST_FORMAT: "legacy"}
    assert manifest["spec"]["task"]["metadata"]["runtime"] == ""  # routed by checkpoint
    assert manifest["spec"]["task"]["metadata"]["id"] == "Job_42"


def test_task_ids_that_are_not_valid_names_still_give_distinct_valid_names() -> None:
    assert task_name("test-i2i") == "test-i2i"
    first, second = task_name("Job_42"), task_name("job-42")
    assert first != second and first.startswith("job-42-")
    assert all(c.isalnum() or c == "-" for c in first)
