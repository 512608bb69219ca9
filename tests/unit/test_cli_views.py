"""What the CLI shows, from plain API objects: queue positions, state lines, rows, input errors naming the field."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from sdtask.cli.tasks import load_request
from sdtask.cli.views import (
    InputError,
    QueuePlace,
    age,
    api_rejection,
    exit_code,
    queue_places,
    result_object,
    state_line,
    task_row,
)

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


def task(name: str, phase: str | None, *, created: int = 0, priority: int = 0, **status: Any) -> dict[str, Any]:
    stamp = (NOW - dt.timedelta(seconds=100 - created)).strftime("%Y-%m-%dT%H:%M:%SZ")
    body: dict[str, Any] = {
        "metadata": {"name": name, "namespace": "ns", "creationTimestamp": stamp},
        "spec": {"priority": priority, "task": {"metadata": {"id": name}}},
        "status": {"runtime": "rt", **status},
    }
    if phase:
        body["status"]["phase"] = phase
    return body


def test_queue_places_follow_the_operators_order_and_skip_tasks_that_left_the_queue() -> None:
    tasks = [
        task("a", "Pending", created=1),
        task("b", "Running", created=0),
        task("c", "Pending", created=2, priority=5),
        task("d", "Pending", created=3),
    ]
    places = queue_places(tasks)
    assert places[("ns", "c")] == QueuePlace(1, 3, "rt")
    assert places[("ns", "a")] == QueuePlace(2, 3, "rt")
    assert places[("ns", "d")] == QueuePlace(3, 3, "rt")
    assert ("ns", "b") not in places


def test_state_lines_tell_queue_position_progress_and_failure_reason() -> None:
    assert state_line(task("a", "Pending"), QueuePlace(2, 5, "rt")) == "queued: position 2 of 5 on rt"
    running = task("a", "Running", pod="p-1", attempts=2, progress={"step": 7, "steps": 16, "job": 1, "jobs": 1})
    assert state_line(running, None) == "on p-1, attempt 2, step 7/16"
    failed = task("a", "Failed", reason="ModelNotFound", message="no checkpoint x")
    assert state_line(failed, None) == "ModelNotFound: no checkpoint x"


def test_row_shows_progress_only_while_running_and_position_while_queued() -> None:
    running = task("a", "Running", progress={"summary": "45% step 7/16 ETA 3s"}, attempts=1)
    assert task_row(running, None, NOW)["PROGRESS"] == "45% step 7/16 ETA 3s"
    done = task("a", "Succeeded", progress={"summary": "99%"}, output_location="s3://b/o/a")
    row = task_row(done, None, NOW)
    assert (row["PROGRESS"], row["OUTPUT"], row["AGE"]) == ("-", "s3://b/o/a", "100s")
    assert task_row(task("a", "Pending"), QueuePlace(3, 4, "rt"), NOW)["PROGRESS"] == "#3 of 4 in queue"


def test_ages_read_like_kubectl() -> None:
    seconds = (5, 119, 303, 600, 7199, 11000, 200000)
    assert [age(NOW - dt.timedelta(seconds=s), NOW) for s in seconds] == [
        "5s",
        "119s",
        "5m3s",
        "10m",
        "119m",
        "3h",
        "2d",
    ]


def test_failed_result_carries_the_reason_and_exit_code_is_one() -> None:
    failed = task("a", "Failed", reason="Timeout", message="after 600s")
    assert result_object(failed) == {"id": "a", "error": "Timeout: after 600s"}
    ok = task("b", "Succeeded", response={"id": "b", "runtime": "rt", "output_location": "s3://x/o/b"})
    assert result_object(ok) == {"id": "b", "runtime": "rt", "output_location": "s3://x/o/b"}
    assert exit_code([ok]) == 0 and exit_code([ok, failed]) == 1


def write(tmp_path: Path, body: Any, name: str = "body.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(body) if name.endswith(".json") else body)
    return str(path)


ENVELOPE = {
    "task": {
        "metadata": {"id": "t-1", "runtime": "sdruntime", "tasktype": "text-to-image", "prefix": "output"},
        "content": {"prompt": "a cat", "steps": 16},
    }
}


def test_envelope_and_yaml_bodies_become_sdtasks(tmp_path: Path) -> None:
    manifest = load_request(write(tmp_path, ENVELOPE), None)
    assert manifest["metadata"]["name"] == "t-1" and manifest["spec"]["task"] == ENVELOPE["task"]
    yaml_body = "task:\n  metadata: {id: t-2, runtime: sdruntime, tasktype: text-to-image, prefix: o}\n  content: {}\n"
    assert load_request(write(tmp_path, yaml_body, "b.yaml"), "given")["metadata"]["name"] == "given"


def test_bad_envelope_names_the_field(tmp_path: Path) -> None:
    body = json.loads(json.dumps(ENVELOPE))
    body["task"]["content"]["steps"] = 0
    with pytest.raises(InputError) as caught:
        load_request(write(tmp_path, body), None)
    assert caught.value.field == "task.content.steps"
    body["task"]["metadata"]["tasktype"] = "paint"
    with pytest.raises(InputError, match=r"task\.metadata\.tasktype"):
        load_request(write(tmp_path, body), None)


def test_legacy_body_errors_name_the_legacy_field(tmp_path: Path) -> None:
    scripts = {"task": "text-to-image", "id_task": "l-1", "sd_model_checkpoint": "v1-5.safetensors"}
    legacy: dict[str, Any] = {"prompt": "x", "steps": 900, "alwayson_scripts": scripts}
    with pytest.raises(InputError) as caught:
        load_request(write(tmp_path, legacy), None)
    assert caught.value.field == "steps"
    del legacy["alwayson_scripts"]["sd_model_checkpoint"]
    with pytest.raises(InputError, match="sd_model_checkpoint is missing"):
        load_request(write(tmp_path, legacy), None)


def test_unreadable_input_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        load_request(str(tmp_path / "missing.json"), None)
    with pytest.raises(InputError, match="not a JSON or YAML object"):
        load_request(write(tmp_path, "[1, 2", "broken.yaml"), None)


def test_api_server_rejection_names_the_field() -> None:
    body = json.dumps(
        {
            "kind": "Status",
            "message": 'SDTask.sdtask.io "x" is invalid',
            "details": {"causes": [{"field": "spec.task.metadata.runtime", "message": "must be set"}]},
        }
    )
    assert str(api_rejection("b.json", body)) == "b.json: task.metadata.runtime: must be set"


def test_a_body_from_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(ENVELOPE)))
    assert load_request("-", None)["spec"]["task"]["metadata"]["id"] == "t-1"
