"""The README's session with `make dev` running, run verbatim by bash against the whole local system: the runtime
applied, the old API's request bodies run to their response objects and files, then list, describe, runtimes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from sdtask.devcluster.dev import write_env_file
from tests.readme import REPO, readme_block

from .conftest import Cluster


def test_the_readme_dev_session_runs_as_written(cluster: Cluster, tmp_path: Path) -> None:
    # What `make dev` leaves: .dev/env; here its kubeconfig's context points at this test's namespace.
    kubeconfig = yaml.safe_load(cluster.stack.kubeconfig.read_text())
    for context in kubeconfig["contexts"]:
        context["context"]["namespace"] = cluster.namespace
    (tmp_path / ".dev").mkdir()
    (tmp_path / ".dev" / "kubeconfig").write_text(yaml.safe_dump(kubeconfig))
    write_env_file(
        tmp_path / ".dev" / "env", {**cluster.stack.env(), "KUBECONFIG": str(tmp_path / ".dev" / "kubeconfig")}
    )
    (tmp_path / "examples").symlink_to(REPO / "examples")
    script = "\n".join(["set -e", *readme_block("source .dev/env")])
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "COLUMNS": "200"}
    result = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240, check=False
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    responses = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    location = f"s3://{cluster.stack.bucket}"
    assert responses[0] == {
        "id": "cat-wizard",
        "runtime": "sdruntime",
        "output_location": f"{location}/output/cat-wizard",
    }
    assert responses[1]["id_task"] == "lighthouse-1"
    assert responses[1]["output_location"] == f"{location}/legacy/lighthouse-1"
    saved = sorted(p.name for p in (tmp_path / "out" / "cat-wizard").iterdir())
    assert saved == ["cat-wizard.out", "image-1.png", "image-2.png"]
    assert "sdruntime applied" in result.stdout  # sdtask apply
    assert "lighthouse-1" in result.stdout and "Succeeded" in result.stdout  # sdtask list
    assert "Normal" in result.stdout and "Completed" in result.stdout  # sdtask describe's Events
    assert "serves v1-5-pruned-emaonly.safetensors" in result.stdout  # sdtask runtimes
