"""`sdtask` as a person uses it, in a pseudo-terminal against the whole local system: what the screen shows, the
exit codes scripts rely on, and the files it downloads."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest
import yaml

from sdtask.devcluster.waiting import wait_for

from .conftest import Cluster

MODEL = "v1-5-pruned-emaonly.safetensors"
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][A-Z0-9]|\r")


@pytest.fixture(scope="module", autouse=True)
def runtimes(cluster: Cluster) -> Iterator[None]:
    cluster.models("cli-rt", MODEL)
    cluster.runtime("cli-rt", "pool-a", checkpoint=MODEL, scaling={"maxReplicas": 1})
    # A pool no node belongs to: its pods never start, so its tasks stay queued.
    cluster.runtime("stuck", "pool-nowhere", checkpoint=MODEL, scaling={"maxReplicas": 1})
    yield


def body(task_id: str, runtime: str = "cli-rt", **content: Any) -> dict[str, Any]:
    """A request body of the old API: the {task: ...} envelope."""
    return {
        "task": {
            "metadata": {"id": task_id, "runtime": runtime, "tasktype": "text-to-image", "prefix": "cli"},
            "content": {"prompt": task_id, "steps": 8, "width": 64, "height": 64, **content},
        }
    }


class Terminal:
    """Runs `sdtask` in a pseudo-terminal, as a shell would, and keeps what the screen showed (escapes removed)."""

    def __init__(self, cluster: Cluster, tmp_path: Path) -> None:
        self.cluster = cluster
        self.cwd = tmp_path
        self.env = {**os.environ, **cluster.stack.env(), "TERM": "xterm-256color", "COLUMNS": "160"}

    def run(self, *args: str, timeout: float = 90) -> tuple[int, str]:
        child = pexpect.spawn(
            sys.executable,
            ["-m", "sdtask.cli", *args, "-n", self.cluster.namespace],
            cwd=str(self.cwd),
            env=self.env,
            encoding="utf-8",
            timeout=timeout,
            dimensions=(50, 160),
        )
        child.expect(pexpect.EOF)
        child.close()
        return int(child.exitstatus if child.exitstatus is not None else -1), ANSI.sub("", child.before or "")

    def write(self, name: str, content: Any) -> str:
        path = self.cwd / name
        path.write_text(json.dumps(content) if name.endswith(".json") else yaml.safe_dump(content))
        return name


@pytest.fixture
def term(cluster: Cluster, tmp_path: Path) -> Terminal:
    return Terminal(cluster, tmp_path)


def test_run_shows_the_task_running_prints_the_response_and_downloads_the_outputs(
    term: Terminal, cluster: Cluster, tmp_path: Path
) -> None:
    # 4 batches of 8 images: long enough (about 1.6 s) for the live display to show the task running.
    code, screen = term.run("run", term.write("b.json", body("cli-one", batch_size=8, n_iter=4)), "--out", "out")

    assert code == 0, screen
    assert "sdtask/cli-one created" in screen
    assert re.search(r"cli-one\s+Running", screen), screen  # the live display while it ran
    assert re.search(r"cli-one\s+Succeeded\s+.*100%", screen), screen
    response = json.loads(next(line for line in screen.splitlines() if line.startswith("{")))
    assert response == {
        "id": "cli-one",
        "runtime": "cli-rt",
        "output_location": f"s3://{cluster.stack.bucket}/cli/cli-one",
    }
    saved = sorted(p.name for p in (tmp_path / "out" / "cli-one").iterdir())
    assert saved == sorted([f"image-{n}.png" for n in range(1, 33)] + ["cli-one.out"])
    assert (tmp_path / "out" / "cli-one" / "image-1.png").read_bytes().startswith(b"\x89PNG")
    # The spec is the user's write through the CLI, the status the operator's: `--show-managed-fields` tells them apart.
    managers = {(e["manager"], e.get("subresource", "")) for e in cluster.task("cli-one")["metadata"]["managedFields"]}
    assert managers == {("sdtask", ""), ("sdtask-operator", "status")}, managers

    code, screen = term.run("get", "cli-one")
    assert code == 0
    location = f"s3://{cluster.stack.bucket}/cli/cli-one"
    assert re.search(rf"cli-one\s+Succeeded\s+cli-rt\s+{re.escape(MODEL)}.*{location}", screen), screen

    code, screen = term.run("describe", "cli-one")
    assert code == 0
    assert re.search(r"Attempts:\s+1 \(retries allowed: 2\)", screen), screen
    # The outcome, from the Events (the steps before it are conditions: an Event per step would double a task's
    # API requests).
    assert re.search(r"Normal\s+Completed\s", screen), screen

    code, screen = term.run("list", "--phase", "Succeeded", "--runtime", "cli-rt")
    assert code == 0 and "cli-one" in screen
    code, screen = term.run("list", "--runtime", "another-rt")  # filtered by the API server (status.runtime)
    assert code == 0 and "cli-one" not in screen, screen
    code, screen = term.run("list", "--phase", "Failed")
    assert "cli-one" not in screen

    code, screen = term.run("wait", "cli-one")  # already finished: returns at once with the response
    assert code == 0 and '"id": "cli-one"' in screen

    code, screen = term.run("runtimes", "cli-rt")
    assert code == 0
    assert re.search(rf"cli-rt\s+serves {re.escape(MODEL)}", screen), screen
    assert re.search(rf"sdruntime-cli-rt-\S+\s+Running\s+yes\s+no\s+-\s+{re.escape(MODEL)}", screen), screen


def test_many_files_legacy_and_envelope_piped_output_is_only_the_responses(term: Terminal, cluster: Cluster) -> None:
    legacy = {
        "prompt": "legacy body",
        "steps": 4,
        "width": 64,
        "height": 64,
        "alwayson_scripts": {"task": "text-to-image", "id_task": "cli-legacy", "sd_model_checkpoint": MODEL},
    }
    files = [term.write("legacy.yaml", legacy), term.write("env.json", body("cli-envelope"))]
    # Not a terminal: scripts get one JSON response per line on stdout, the progress as plain lines on stderr.
    result = subprocess.run(
        [sys.executable, "-m", "sdtask.cli", "run", *files, "-n", cluster.namespace],
        cwd=term.cwd,
        env=term.env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    responses = [json.loads(line) for line in result.stdout.splitlines()]
    location = f"s3://{cluster.stack.bucket}"
    # The legacy response names the checkpoint that ran, as the Web UI titles it (file name and short hash).
    assert responses[0].pop("sd_model_checkpoint").startswith(MODEL)
    assert responses == [
        {"id_task": "cli-legacy", "output_location": f"{location}/output/cli-legacy"},
        {"id": "cli-envelope", "runtime": "cli-rt", "output_location": f"{location}/cli/cli-envelope"},
    ]
    assert "\x1b[" not in result.stderr
    assert re.search(r"cli-legacy Succeeded", result.stderr), result.stderr


def test_bad_input_exits_2_naming_the_field_and_creates_nothing(term: Terminal, cluster: Cluster) -> None:
    good = term.write("good.json", body("cli-never"))
    bad = term.write("bad.json", body("cli-bad", steps=0))
    code, screen = term.run("run", good, bad)
    assert code == 2
    assert "bad.json: task.content.steps: Input should be greater than or equal to 1" in screen
    assert not {"cli-never", "cli-bad"} & set(cluster.task_names())  # all or nothing

    legacy = term.write("legacy.json", {"prompt": "x", "alwayson_scripts": {"task": "text-to-image", "id_task": "l"}})
    code, screen = term.run("run", legacy)
    assert code == 2 and "alwayson_scripts.sd_model_checkpoint is missing" in screen


def test_a_failed_task_exits_1_with_its_reason(term: Terminal) -> None:
    code, screen = term.run("run", term.write("f.json", body("cli-lost", runtime="no-such-runtime")))
    assert code == 1
    assert "cli-lost failed: UnknownRuntime: runtime 'no-such-runtime' does not exist in this namespace" in screen
    assert '"error": "UnknownRuntime: ' in screen


def test_queue_positions_without_a_write_per_task_then_cancel(term: Terminal, cluster: Cluster) -> None:
    for task_id in ("cli-q1", "cli-q2", "cli-q3"):
        code, screen = term.run("run", "--no-wait", term.write(f"{task_id}.json", body(task_id, runtime="stuck")))
        assert code == 0 and f"sdtask/{task_id} created" in screen

    def positions() -> str | None:
        _, screen = term.run("get", "cli-q1", "cli-q2", "cli-q3")
        return screen if all(f"#{n} of 3 in queue" in screen for n in (1, 2, 3)) else None

    screen = wait_for(positions, 30, "queue positions to show")
    assert re.search(r"cli-q1\s+Pending\s+stuck.*#1 of 3 in queue", screen)
    assert re.search(r"cli-q3\s+Pending\s+stuck.*#3 of 3 in queue", screen)

    def summary() -> str | None:
        _, screen = term.run("runtimes", "stuck")
        return screen if "next: cli-q1, cli-q2, cli-q3" in screen else None

    screen = wait_for(summary, 30, "the runtime status to carry the queue")
    assert "queue depth 3" in screen and f"queued by model: {MODEL}: 3" in screen

    code, screen = term.run("describe", "cli-q2")
    assert re.search(r"Now:\s+queued: position 2 of 3 on stuck", screen), screen

    code, screen = term.run("cancel", "cli-q1", "cli-q2", "cli-q3")
    assert code == 0 and "sdtask/cli-q2 cancelled" in screen
    wait_for(lambda: not {"cli-q1", "cli-q2", "cli-q3"} & set(cluster.task_names()), 30, "the tasks to go")
    code, screen = term.run("cancel", "cli-q1")
    assert code == 1 and "no SDTask cli-q1" in screen
