"""The next task's generation waits in the Web UI's own queue while the current one runs (agent/queueing.py), so the
GPU goes from one to the next without a round trip; yet every task gets its own images, a task deleted while it
waits there is stopped and stores nothing, and stopping the running task never cuts the one queued behind it."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest

from sdtask.devcluster.waiting import wait_for
from sdtask.standin.images import read_standin_metadata

from .conftest import GROUP, VERSION, Cluster

RUNTIME = "queued"
MODEL = "v1-5-pruned-emaonly.safetensors"
BATCH = 8  # images per round; the stand-in spends 0.05 s per image


@pytest.fixture(scope="module", autouse=True)
def runtime(cluster: Cluster) -> None:
    cluster.models(RUNTIME, MODEL)
    cluster.runtime(RUNTIME, "pool-b", checkpoint=MODEL, scaling={"minReplicas": 1, "maxReplicas": 1})
    wait_for(lambda: (cluster.get_runtime(RUNTIME).get("status") or {}).get("readyReplicas", 0) >= 1, 60, "a ready pod")


def task_body(name: str, rounds: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "SDTask",
        "metadata": {"name": name},
        "spec": {
            "task": {
                "metadata": {"id": name, "runtime": RUNTIME, "tasktype": "text-to-image", "prefix": "queued"},
                "content": {
                    "prompt": name,
                    "steps": 4,
                    "width": 64,
                    "height": 64,
                    "batch_size": BATCH,
                    "n_iter": rounds,
                },
            }
        },
    }


def stats(cluster: Cluster) -> dict[str, Any]:
    pod = next(p for p in cluster.runtime_pods(RUNTIME) if p.status.phase == "Running")
    url = cluster.system.sidecars.webui_url(cluster.namespace, pod.metadata.name)
    with urllib.request.urlopen(f"{url}/standin/stats") as response:
        found: dict[str, Any] = json.load(response)
    return found


def queued_calls(cluster: Cluster) -> int:
    return int(stats(cluster)["queued_calls"])


def prompts_of_images(cluster: Cluster, status: dict[str, Any]) -> set[str]:
    """Whose request each stored image came from, as the stand-in wrote it into the image."""
    found = set()
    for uri in status["images"]:
        metadata = read_standin_metadata(cluster.s3_object(uri)[0]) or {}
        found.add(str(metadata.get("prompt")))
    return found


def start_behind_running(cluster: Cluster, first: str, first_rounds: int, second: str, second_rounds: int) -> int:
    """`first` generates; `second`, dispatched to the same pod meanwhile, goes to wait in the Web UI's queue. Returns
    the stand-in's count of queued calls before."""
    before = queued_calls(cluster)
    cluster.create(task_body(first, first_rounds))
    wait_for(lambda: cluster.status(first).get("phase") == "Running", 30, f"{first} to run")
    cluster.create(task_body(second, second_rounds))
    wait_for(lambda: queued_calls(cluster) > before, 30, f"{second} to wait in the Web UI's queue")
    assert cluster.status(first)["phase"] == "Running"  # it still generates: the second call waits behind it
    return before


def test_tasks_queued_behind_each_other_in_the_web_ui_each_get_their_own_images(cluster: Cluster) -> None:
    generated = int(stats(cluster)["requests"].get("/sdapi/v1/txt2img", 0))
    start_behind_running(cluster, "line-1", 4, "line-2", 1)
    cluster.create(task_body("line-3", 1))
    finished = {name: cluster.wait_finished(name)["status"] for name in ("line-1", "line-2", "line-3")}
    for name, status in finished.items():
        assert (status["phase"], status["attempts"]) == ("Succeeded", 1)
        assert prompts_of_images(cluster, status) == {name}  # never another task's answer
    assert len(finished["line-1"]["images"]) == 4 * BATCH and len(finished["line-3"]["images"]) == BATCH
    assert int(stats(cluster)["requests"]["/sdapi/v1/txt2img"]) == generated + 3  # each generated once


def test_a_task_deleted_while_it_waits_in_the_web_ui_queue_is_stopped_and_stores_nothing(cluster: Cluster) -> None:
    interrupts = int(stats(cluster)["interrupts"])
    start_behind_running(cluster, "keeps-going", 4, "deleted-in-queue", 8)
    cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, cluster.namespace, "sdtasks", "deleted-in-queue")

    kept = cluster.wait_finished("keeps-going")["status"]
    assert (kept["phase"], len(kept["images"])) == ("Succeeded", 4 * BATCH)  # the running one was never cut
    # Its call could not be taken back out of the Web UI's queue: it was interrupted as soon as it ran.
    wait_for(lambda: int(stats(cluster)["interrupts"]) > interrupts, 30, "the deleted task's generation to stop")
    cluster.create(task_body("after-deleted-in-queue", 1))
    after = cluster.wait_finished("after-deleted-in-queue")["status"]
    assert (after["phase"], prompts_of_images(cluster, after)) == ("Succeeded", {"after-deleted-in-queue"})
    assert cluster.s3_keys("queued/deleted-in-queue/") == []


def test_stopping_the_running_task_never_cuts_the_task_queued_behind_it(cluster: Cluster) -> None:
    """The interrupt that stops the running task may reach the Web UI just as the queued one begins: the queued one
    must still end with all its images, its own."""
    interrupts = int(stats(cluster)["interrupts"])
    start_behind_running(cluster, "stopped-first", 8, "behind-stopped", 2)
    cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, cluster.namespace, "sdtasks", "stopped-first")

    behind = cluster.wait_finished("behind-stopped")["status"]
    assert (behind["phase"], behind["attempts"]) == ("Succeeded", 1)
    assert len(behind["images"]) == 2 * BATCH
    assert prompts_of_images(cluster, behind) == {"behind-stopped"}
    assert int(stats(cluster)["interrupts"]) > interrupts
    assert cluster.s3_keys("queued/stopped-first/") == []
