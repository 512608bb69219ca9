"""Log lines carry the namespace, task and runtime they are about, in JSON or in text; kopf's lines too."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from sdtask import logs
from sdtask.logs import bind, configure, log_context


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    token = logs._context.set({})
    yield
    logs._context.reset(token)
    root.handlers[:], root.level = handlers, level


def lines(err: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in err.splitlines() if line.strip()]


def test_json_lines_carry_the_bound_context(capsys: pytest.CaptureFixture[str]) -> None:
    configure("info", "json", "agent")
    with log_context(namespace="ns", task="t-1", runtime="rt"):
        logging.getLogger("sdtask.agent").info("generating %d images", 4)
    logging.getLogger("sdtask.agent").info("idle")
    first, second = lines(capsys.readouterr().err)
    assert first["message"] == "generating 4 images" and first["level"] == "INFO"
    assert (first["namespace"], first["task"], first["runtime"], first["component"]) == ("ns", "t-1", "rt", "agent")
    assert "time" in first
    assert "task" not in second  # the context ends with its block


def test_kopf_object_lines_get_the_fields_from_their_object(capsys: pytest.CaptureFixture[str]) -> None:
    configure("info", "json", "operator")
    ref = {"apiVersion": "sdtask.io/v1alpha1", "kind": "SDTask", "name": "t-2", "namespace": "ns", "uid": "u"}
    logging.getLogger("kopf.objects").info("Handler succeeded.", extra={"k8s_ref": ref, "k8s_skip": False})
    (line,) = lines(capsys.readouterr().err)
    assert (line["namespace"], line["task"]) == ("ns", "t-2")
    assert "k8s_ref" not in line and "k8s_skip" not in line


def test_text_for_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    configure("info", "text", "operator")
    bind(namespace="ns", runtime="rt")
    logging.getLogger("sdtask.controller").warning("reconcile failed")
    text = capsys.readouterr().err
    assert "WARNING sdtask.controller [ns runtime=rt]: reconcile failed" in text
