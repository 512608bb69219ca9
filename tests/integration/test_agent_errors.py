"""Whatever goes wrong inside an attempt ends it, on a real API server: the task gets a reason, a message and an
Event, the agent is free for the next task (#10 point 4: an unexpected error used to escape, leaving the task Running
on its pod and the pod busy for good).

The fault is injected into the Web UI client (a bug of ours or an extension's odd answer look alike from here); the
API server and S3 are the real local ones. Fixtures (tests/conftest.py): `stack`, `kube_api`, `namespace`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from sdtask.agent.execution import TaskExecution
from sdtask.api import GROUP, VERSION
from sdtask.clients.fetcher import LinkFetcher
from sdtask.clients.kube import Kube
from sdtask.clients.webui import WebUIClient
from sdtask.config import AgentSettings
from sdtask.devcluster.stack import DevStack
from sdtask.devcluster.waiting import wait_for

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
POD = "sdruntime-7f9c-x1"


class BuggyWebUI(WebUIClient):
    async def loaded_checkpoint(self) -> str | None:
        raise KeyError("sd_model_checkpoint")  # not one of the errors the agent expects from its Web UI


def test_an_unexpected_error_ends_the_attempt_as_internal_error_and_frees_the_pod(
    stack: DevStack, kube_api: client.ApiClient, namespace: str
) -> None:
    custom = client.CustomObjectsApi(kube_api)
    body: dict[str, Any] = yaml.safe_load((EXAMPLES / "task-text-to-image.yaml").read_text())
    body["metadata"] = {"name": "buggy"}
    body["spec"]["task"]["content"].pop("init_images", None)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "sdtasks", body)
    scheduled = {"phase": "Scheduled", "pod": POD, "attempts": 1, "runtime": "sdruntime"}
    task = custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, "sdtasks", "buggy", {"status": scheduled}
    )
    settings = AgentSettings(
        pod_name=POD, namespace=namespace, runtime="sdruntime", output_bucket=stack.bucket, retry_backoff_seconds=0.1
    )

    async def run() -> Any:
        async with BuggyWebUI("http://127.0.0.1:9") as webui, LinkFetcher() as fetcher:
            execution = TaskExecution(settings, Kube(kube_api), webui, stack.s3_client(), fetcher)
            phase = await execution.execute(task)
            await execution.outbox.close(timeout=5)
            return phase, execution.current

    phase, current = asyncio.run(run())
    assert (phase, current) == ("Pending", "")  # requeued for a retry; the agent holds no task any more
    status = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "sdtasks", "buggy")["status"]
    assert (status["phase"], status["reason"], status["pod"]) == ("Pending", "InternalError", "")
    assert "KeyError" in status["message"] and "sd_model_checkpoint" in status["message"]

    def event() -> bool:
        events = client.CoreV1Api(kube_api).list_namespaced_event(namespace).items
        return any(e.reason == "InternalError" and e.involved_object.name == "buggy" for e in events)

    wait_for(event, 30, "the InternalError Event")
