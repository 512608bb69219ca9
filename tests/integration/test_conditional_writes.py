"""Writes that end an attempt apply only to what they checked, on a real API server.

A lost pod's task is requeued only while it is still Running on that pod.

The operator's index may show a task late: Running on a pod that has vanished, while the task itself has moved on
(its success written just before the pod went). Ending that "lost" attempt anyway would run a finished task again
and send a second, opposite callback. The check and the write are one (the write carries the resourceVersion of the
read that passed the check), so a change between the two is never overwritten either.

A dispatch applies only to the version the index showed: a task changed since (taken back, deleted, edited) is left
for the next pass, and the pod it was claimed for is free again at once.

Fixtures (tests/conftest.py): `kube_api` (admin ApiClient, CRDs installed) and `namespace` (a fresh namespace).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from sdtask.api import GROUP, VERSION
from sdtask.clients.kube import Kube
from sdtask.completion import CallbackPolicy
from sdtask.config import OperatorSettings
from sdtask.constants import Phase
from sdtask.controller.decisions import Claim
from sdtask.controller.runtimes import RuntimeLoop, RuntimeState
from sdtask.controller.views import task_view

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
GONE_POD = "sdruntime-5d9c-gone"


def _task(kube_api: client.ApiClient, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((EXAMPLES / "task-image-to-image.yaml").read_text())
    body["metadata"] = {"name": name}
    custom = client.CustomObjectsApi(kube_api)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "sdtasks", body)
    patched: dict[str, Any] = custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, "sdtasks", name, {"status": status}
    )
    return patched


def _status(kube_api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    body = client.CustomObjectsApi(kube_api).get_namespaced_custom_object(GROUP, VERSION, namespace, "sdtasks", name)
    return dict(body.get("status") or {})


def _requeue_lost(kube: Kube, view: Any) -> None:
    loop = RuntimeLoop(kube, OperatorSettings(retry_backoff_seconds=0.1), RuntimeState(), CallbackPolicy())
    asyncio.run(loop._requeue_tasks_of_lost_pods([view], [], dt.datetime.now(dt.UTC)))


RUNNING_ON_GONE_POD = {"phase": "Running", "pod": GONE_POD, "attempts": 1, "runtime": "sdruntime"}
SUCCEEDED_ON_GONE_POD = {**RUNNING_ON_GONE_POD, "phase": "Succeeded", "reason": "Completed", "message": "done"}


def test_a_running_task_of_a_vanished_pod_is_requeued(kube_api: client.ApiClient, namespace: str) -> None:
    body = _task(kube_api, namespace, "lost", RUNNING_ON_GONE_POD)
    _requeue_lost(Kube(kube_api), task_view(body))
    status = _status(kube_api, namespace, "lost")
    assert (status["phase"], status["reason"], status["pod"]) == ("Pending", "PodLost", "")


def test_a_task_that_succeeded_before_its_pod_vanished_is_not_run_again(
    kube_api: client.ApiClient, namespace: str
) -> None:
    """The index still shows it Running on the vanished pod; the task itself already Succeeded there."""
    body = _task(kube_api, namespace, "done", SUCCEEDED_ON_GONE_POD)
    late_view = dataclasses.replace(task_view(body), phase=Phase.RUNNING)
    _requeue_lost(Kube(kube_api), late_view)
    status = _status(kube_api, namespace, "done")
    assert (status["phase"], status["reason"]) == ("Succeeded", "Completed")


class SucceedsRightAfterTheRead(Kube):
    """A real client; right after the operator's first read of the task, its agent writes the success (as a
    real agent may, between the operator's read and its write)."""

    def __init__(self, api: client.ApiClient) -> None:
        super().__init__(api)
        self.reads = 0

    async def get_task(self, namespace: str, name: str) -> dict[str, Any]:
        body = await super().get_task(namespace, name)
        self.reads += 1
        if self.reads == 1:
            await self.patch_task_status(namespace, name, {"phase": "Succeeded", "reason": "Completed"})
        return body


def test_a_success_written_between_the_check_and_the_requeue_stays(kube_api: client.ApiClient, namespace: str) -> None:
    body = _task(kube_api, namespace, "raced", RUNNING_ON_GONE_POD)
    _requeue_lost(SucceedsRightAfterTheRead(kube_api), task_view(body))
    status = _status(kube_api, namespace, "raced")
    assert (status["phase"], status["reason"]) == ("Succeeded", "Completed")


def test_a_dispatch_of_a_task_changed_since_the_index_saw_it_writes_nothing_and_frees_the_pod(
    kube_api: client.ApiClient, namespace: str
) -> None:
    queued = {"phase": "Pending", "attempts": 0, "runtime": "sdruntime"}
    stale = task_view(_task(kube_api, namespace, "moved", queued))
    client.CustomObjectsApi(kube_api).patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, "sdtasks", "moved", {"status": {"message": "changed meanwhile"}}
    )
    state = RuntimeState()
    loop = RuntimeLoop(Kube(kube_api), OperatorSettings(), state, CallbackPolicy())
    now = dt.datetime.now(dt.UTC)
    state.claims["moved"] = Claim("pod-a", None, now)  # as the pass claims it before the background write
    asyncio.run(loop._assign(stale, "pod-a", now))
    status = _status(kube_api, namespace, "moved")
    assert (status["phase"], status.get("pod") or "") == ("Pending", "")
    assert "moved" not in state.claims and state.wake.is_set()  # the next pass may give pod-a another task
