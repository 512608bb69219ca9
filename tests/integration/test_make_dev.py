"""The README's `make dev`, run as a newcomer runs it: from a clean clone, then stopped with SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import kubernetes
import pytest
import yaml
from kubernetes.client import CustomObjectsApi

from sdtask.devcluster.waiting import ConditionTimeout, wait_for

REPO = Path(__file__).resolve().parents[2]
GROUP, VERSION = "sdtask.io", "v1alpha1"


def processes_using(folder: Path) -> list[str]:
    """Live processes whose command line or working folder is inside `folder` (what `make dev` started)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
            state = next(line for line in (entry / "status").read_text().splitlines() if line.startswith("State:"))
        except (OSError, StopIteration):
            continue
        if "zombie" in state:
            continue
        if str(folder) in cmdline or cwd == str(folder) or cwd.startswith(f"{folder}/"):
            found.append(f"{entry.name}: {cmdline.strip()}")
    return found


@pytest.fixture
def clone(tmp_path: Path) -> Iterator[Path]:
    """A clean clone of this checkout's HEAD, as `git clone` gives a newcomer."""
    target = tmp_path / "sdtask-operator"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(target)], check=True)
    yield target


@pytest.mark.timeout(900)  # the clone's own venv is created by `make dev` itself
def test_make_dev_from_a_clean_clone_serves_a_task_and_stops_cleanly(clone: Path) -> None:
    log = (clone.parent / "make-dev.log").open("wb")
    dev = subprocess.Popen(["make", "dev"], cwd=clone, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        kubeconfig = clone / ".dev" / "kubeconfig"
        env_file = clone / ".dev" / "env"

        def up() -> bool:
            if dev.poll() is not None:
                output = (clone.parent / "make-dev.log").read_text()[-3000:]
                raise AssertionError(f"make dev exited with {dev.returncode}:\n{output}")
            return kubeconfig.exists() and env_file.exists()

        wait_for(up, 600, "make dev to write .dev/kubeconfig")
        client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
        custom = CustomObjectsApi(client)
        runtime = yaml.safe_load((clone / "examples" / "runtime-static.yaml").read_text())
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", "sdruntimes", runtime)
        task = yaml.safe_load((clone / "examples" / "task-text-to-image.yaml").read_text())
        del task["spec"]["callback"]  # hooks.example.com is the internet: not reachable from here
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", "sdtasks", task)

        def finished() -> dict[str, object] | None:
            status = custom.get_namespaced_custom_object(GROUP, VERSION, "default", "sdtasks", "test-t2i").get("status")
            return status if (status or {}).get("phase") in ("Succeeded", "Failed") else None

        status = wait_for(finished, 120, "the example task to finish")
        assert status["phase"] == "Succeeded", status
        client.close()
    finally:
        dev.send_signal(signal.SIGTERM)  # what a service manager or `kill` sends; make passes it on
        try:
            code = dev.wait(timeout=120)
        finally:
            log.close()
    # make passes SIGTERM on, waits for its child, then ends by the same signal (-15)
    assert code in (0, 2, -signal.SIGTERM), (clone.parent / "make-dev.log").read_text()[-3000:]
    assert "local stack stopped" in (clone.parent / "make-dev.log").read_text()
    try:
        wait_for(lambda: not processes_using(clone), 30, "every process of make dev to end")
    except ConditionTimeout:
        pytest.fail(f"left behind: {processes_using(clone)}")
