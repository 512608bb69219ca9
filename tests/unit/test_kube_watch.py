"""The agent's watch of its tasks (clients/kube.py RawWatch) over a canned watch response: no API server needed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from sdtask.clients.kube import RawWatch


class CannedResponse:
    """What the official client returns with `_preload_content=False`: a stream of byte chunks."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.body = b"".join(json.dumps(event).encode() + b"\n" for event in events)

    def stream(self, amt: Any = None, decode_content: bool = False) -> Iterator[bytes]:
        # Split mid-line, as a real chunked response may be.
        yield self.body[:7]
        yield self.body[7:]

    def close(self) -> None:
        pass

    def release_conn(self) -> None:
        pass


def list_tasks(events: list[dict[str, Any]]) -> Any:
    def list_namespaced_custom_object(*_: Any, **kwargs: Any) -> CannedResponse:
        """Lists or watches namespace scoped custom objects.

        :return: object
        """
        assert kwargs["watch"] is True and kwargs["_preload_content"] is False
        return CannedResponse(events)

    return list_namespaced_custom_object


def task(name: str, version: str, phase: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": version}, "status": {"phase": phase}}


def test_events_carry_the_task_as_it_was_sent() -> None:
    sent = [
        {"type": "ADDED", "object": task("a", "5", "Scheduled")},
        {"type": "MODIFIED", "object": task("a", "6", "Running")},
        {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}},
    ]
    got = list(RawWatch().stream(list_tasks(sent), timeout_seconds=5))
    assert [(e["type"], e["object"]) for e in got] == [(e["type"], e["object"]) for e in sent]


def test_an_expired_version_still_raises_410_for_the_agent_to_list_again() -> None:
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"}}
    events = [{"type": "ADDED", "object": task("a", "5", "Scheduled")}, gone]
    stream = RawWatch().stream(list_tasks(events), timeout_seconds=5)  # the agent's watches end after a timeout
    assert next(stream)["object"]["metadata"]["name"] == "a"
    with pytest.raises(ApiException) as raised:
        next(stream)
    assert raised.value.status == 410
