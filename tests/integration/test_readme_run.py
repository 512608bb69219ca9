"""README commands that need the local stack but not the whole e2e system, run exactly as the README writes them
(through a shell; see tests/readme.py for how every README command is tied to a test)."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from kubernetes.client import ApiClient, AppsV1Api, CoreV1Api

from sdtask.devcluster.helm import ensure_helm, helm_env
from sdtask.devcluster.stack import DevStack
from tests.readme import REPO, readme_command


@pytest.mark.timeout(600)
def test_make_demo_prints_the_story_and_downloads_the_image() -> None:
    result = subprocess.run(
        readme_command("make demo"), shell=True, cwd=REPO, capture_output=True, text=True, timeout=540, check=False
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Normal   Completed  1 image(s) stored under s3://" in result.stdout
    assert '"output_location": "s3://' in result.stdout
    assert (REPO / "demo-output" / "image-1.png").read_bytes().startswith(b"\x89PNG")


def test_helm_install_as_written_installs_the_operator(stack: DevStack, kube_api: ApiClient, tmp_path: Path) -> None:
    command = readme_command(
        "helm install sdtask charts/sdtask-operator -n sdtask-system --create-namespace"
        " --set image.repository=registry.example.com/sdtask/sdtask-operator --set image.tag=0.1.0"
    )
    helm = ensure_helm()
    env = {**helm_env(tmp_path), "KUBECONFIG": str(stack.kubeconfig), "PATH": f"{helm.parent}:{os.environ['PATH']}"}
    result = subprocess.run(command, shell=True, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    try:
        assert result.returncode == 0, result.stderr
        deployment = AppsV1Api(kube_api).read_namespaced_deployment("sdtask-sdtask-operator", "sdtask-system")
        (container,) = deployment.spec.template.spec.containers
        assert container.image == "registry.example.com/sdtask/sdtask-operator:0.1.0"
    finally:
        subprocess.run(
            ["helm", "uninstall", "sdtask", "-n", "sdtask-system"], env=env, capture_output=True, check=False
        )
        CoreV1Api(kube_api).delete_namespace("sdtask-system")


def test_make_kind_without_docker_or_kind_says_what_it_needs(tmp_path: Path) -> None:
    """What these machines can run of `make kind`: it stops at once, naming the missing tools."""
    tools = tmp_path / f"bin-{uuid.uuid4().hex[:6]}"
    tools.mkdir()
    make = shutil.which("make")
    assert make
    (tools / "make").symlink_to(make)
    result = subprocess.run(
        readme_command("make kind"),
        shell=True,
        cwd=REPO,
        env={"PATH": str(tools), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "make kind needs kind and docker on PATH" in result.stdout
