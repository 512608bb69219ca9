"""Crashes lose no task and leave no duplicate outputs; queues honour priority."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest

from sdtask.devcluster.waiting import wait_for

from .conftest import Cluster, Files, sample_png

MODEL = "v1-5-pruned-emaonly.safetensors"


@pytest.fixture(scope="module", autouse=True)
def runtime(cluster: Cluster) -> Iterator[None]:
    cluster.models("solo", MODEL)
    cluster.runtime("solo", "pool-b", checkpoint=MODEL, scaling={"minReplicas": 1, "maxReplicas": 1})
    yield


def slow_task(task_id: str, rounds: int) -> dict[str, Any]:
    return {
        "metadata": {"id": task_id, "runtime": "solo", "tasktype": "text-to-image", "prefix": "res"},
        "content": {"prompt": task_id, "steps": 4, "width": 64, "height": 64, "batch_size": 8, "n_iter": rounds},
    }


def test_an_operator_crash_cuts_no_generation_and_loses_no_queued_task(cluster: Cluster) -> None:
    cluster.submit(slow_task("in-flight", rounds=6))
    wait_for(lambda: cluster.status("in-flight").get("phase") == "Running", 30, "the task to run")

    cluster.system.operator.kill()  # the operator dies mid-generation...
    cluster.submit(slow_task("while-down", rounds=1))  # ...and a task arrives while it is down
    cluster.system.restart_operator()

    first, second = cluster.wait_finished("in-flight"), cluster.wait_finished("while-down")
    assert (first["status"]["phase"], first["status"]["attempts"]) == ("Succeeded", 1)  # never interrupted
    assert second["status"]["phase"] == "Succeeded"


def test_an_agent_crash_reruns_the_task_without_duplicate_outputs(cluster: Cluster) -> None:
    cluster.submit(slow_task("crashed", rounds=4))
    running = wait_for(lambda: (s := cluster.status("crashed")).get("phase") == "Running" and s, 30, "the task to run")

    cluster.system.sidecars.crash_agent(cluster.namespace, running["pod"])

    done = cluster.wait_finished("crashed")["status"]
    assert (done["phase"], done["attempts"]) == ("Succeeded", 2)  # the re-take after the restart is an attempt
    keys = cluster.s3_keys("res/crashed/")
    assert len(keys) == 4 * 8 + 1 and keys.count("res/crashed/crashed.out") == 1  # 32 images, each once


def test_a_task_that_keeps_killing_its_agent_fails_once_its_retries_are_spent(cluster: Cluster) -> None:
    """Each restart that re-takes the task counts: maxRetries bounds it, the pod is free again afterwards."""
    cluster.submit(slow_task("killer", rounds=4), maxRetries=0)
    running = wait_for(lambda: (s := cluster.status("killer")).get("phase") == "Running" and s, 30, "the task to run")
    cluster.system.sidecars.crash_agent(cluster.namespace, running["pod"])
    done = cluster.wait_finished("killer")["status"]
    assert (done["phase"], done["reason"], done["attempts"]) == ("Failed", "AgentRestarted", 2)
    cluster.submit(slow_task("after-killer", rounds=1))
    assert cluster.wait_finished("after-killer")["status"]["phase"] == "Succeeded"


def test_higher_priority_tasks_run_first(cluster: Cluster) -> None:
    cluster.submit(slow_task("blocker", rounds=4))
    wait_for(lambda: cluster.status("blocker").get("phase") == "Running", 30, "the blocker to run")
    cluster.submit(slow_task("low", rounds=1), priority=-5)
    cluster.submit(slow_task("normal", rounds=1))
    cluster.submit(slow_task("urgent", rounds=1), priority=100)

    for name in ("low", "normal", "urgent"):
        assert cluster.wait_finished(name)["status"]["phase"] == "Succeeded"
    # startTime carries microseconds (other status times are whole seconds).
    assert sorted(("low", "normal", "urgent"), key=lambda name: cluster.status(name)["startTime"]) == [
        "urgent",
        "normal",
        "low",
    ]


def linked_task(task_id: str, url: str) -> dict[str, Any]:
    return {
        "metadata": {"id": task_id, "runtime": "solo", "tasktype": "image-to-image", "prefix": "res"},
        "content": {"prompt": task_id, "steps": 4, "width": 64, "height": 64, "init_images": [url]},
    }


def test_the_next_task_is_prepared_while_the_current_one_generates(cluster: Cluster, files: Files) -> None:
    """Its links are fetched while the pod's GPU is still busy, so its generation starts as soon as the GPU is free."""
    cluster.submit(slow_task("busy-gpu", rounds=8))
    wait_for(lambda: cluster.status("busy-gpu").get("phase") == "Running", 30, "the first task to run")
    url = files.publish("/next-input.png", sample_png(seed=7))
    cluster.submit(linked_task("prepared", url))

    done = cluster.wait_finished("prepared")["status"]
    assert done["phase"] == "Succeeded"
    first = cluster.wait_finished("busy-gpu")["status"]
    assert first["phase"] == "Succeeded", first
    fetched = files.fetched("/next-input.png")
    assert len(fetched) == 1  # prepared once, not fetched again when run
    # Fetched before the task started (its start waits for the Web UI to be free), not as its first step.
    started = dt.datetime.fromisoformat(done["startTime"].replace("Z", "+00:00")).timestamp()
    assert fetched[0] < started


def test_a_prepared_task_deleted_before_it_starts_never_runs(cluster: Cluster, files: Files) -> None:
    cluster.submit(slow_task("busy-gpu-2", rounds=8))
    wait_for(lambda: cluster.status("busy-gpu-2").get("phase") == "Running", 30, "the first task to run")
    url = files.publish("/doomed-input.png", sample_png(seed=8))
    doomed = cluster.submit(linked_task("doomed", url))
    wait_for(lambda: files.fetched("/doomed-input.png"), 30, "the queued task to be prepared")
    assert cluster.status("doomed").get("phase") == "Scheduled"  # prepared, not started: the GPU is still busy

    cluster.custom.delete_namespaced_custom_object("sdtask.io", "v1alpha1", cluster.namespace, "sdtasks", doomed)
    cluster.submit(slow_task("after-doomed", rounds=1))

    assert cluster.wait_finished("busy-gpu-2")["status"]["phase"] == "Succeeded"
    assert cluster.wait_finished("after-doomed")["status"]["phase"] == "Succeeded"
    assert cluster.s3_keys("res/doomed/") == []  # never generated, nothing stored
