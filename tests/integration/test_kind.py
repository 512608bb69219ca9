"""`make kind` as far as these machines can run it (their Docker refuses privileged containers and kind's node images
are out of reach): its config and manifests agree with each other and with the examples, and its steps that need no
kind node run against the local stack."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import yaml
from kubernetes.client import ApiClient, CoreV1Api, CustomObjectsApi

from sdtask.cli.tasks import load_request
from sdtask.devcluster import kind
from sdtask.devcluster.helm import ensure_helm, run_helm
from sdtask.devcluster.stack import DevStack
from sdtask.standin.weights import read_header

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def workers() -> list[dict[str, Any]]:
    return [n for n in kind.cluster_config()["nodes"] if n["role"] == "worker"]


def test_kind_workers_are_the_gpu_pools_the_runtimes_select() -> None:
    pools = {w["labels"]["sdtask.io/pool"] for w in workers()}
    selected = {r["spec"]["placement"]["nodeSelector"]["sdtask.io/pool"] for r in kind.values()["runtimes"]}
    for example in ("runtime-static.yaml", "runtime-dynamic.yaml"):
        selected.add(
            yaml.safe_load((EXAMPLES / example).read_text())["spec"]["placement"]["nodeSelector"]["sdtask.io/pool"]
        )
    assert selected <= pools
    for worker in workers():
        assert int(worker["labels"][kind.FAKE_GPUS_LABEL]) >= 1
        (patch,) = worker["kubeadmConfigPatches"]
        taints = yaml.safe_load(patch)["nodeRegistration"]["taints"]
        assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"} in taints


def test_the_in_cluster_s3_is_reachable_on_the_host_port_the_demo_downloads_from() -> None:
    (control_plane,) = [n for n in kind.cluster_config()["nodes"] if n["role"] == "control-plane"]
    (mapping,) = control_plane["extraPortMappings"]
    service = next(d for d in yaml.safe_load_all((kind.KIND_DIR / "minio.yaml").read_text()) if d["kind"] == "Service")
    assert service["spec"]["ports"][0]["nodePort"] == mapping["containerPort"]
    assert f"http://127.0.0.1:{mapping['hostPort']}" == kind.S3_ON_HOST
    (runtime,) = kind.values()["runtimes"]
    assert runtime["spec"]["output"]["endpoint"] == "http://minio.sdtask-demo.svc:9000"
    assert runtime["namespace"] == kind.DEMO_NAMESPACE == service["metadata"]["namespace"]


def test_fake_gpus_step_gives_labelled_nodes_gpu_capacity(kube_api: ApiClient) -> None:
    core = CoreV1Api(kube_api)
    name = f"kind-worker-{uuid.uuid4().hex[:6]}"
    core.create_node({"metadata": {"name": name, "labels": {kind.FAKE_GPUS_LABEL: "2", "sdtask.io/pool": "pool-z"}}})
    try:
        patched = kind.fake_gpus(kube_api)
        assert patched[name] == "2"
        assert core.read_node_status(name).status.capacity["nvidia.com/gpu"] == "2"
    finally:
        core.delete_node(name)


def test_seed_step_puts_a_loadable_checkpoint_where_the_runtime_fetches_it(stack: DevStack) -> None:
    s3 = stack.s3_client()
    (uri,) = kind.seed_s3(s3)
    assert uri == "s3://sdtask-models/checkpoints/v1-5-pruned-emaonly.safetensors"
    body = s3.get_object(Bucket="sdtask-models", Key="checkpoints/v1-5-pruned-emaonly.safetensors")["Body"].read()
    assert read_header(body)  # a valid safetensors file: the stand-in loads it
    assert kind.seed_s3(s3) == [uri]  # a second run of make kind reuses the buckets


def test_chart_values_install_a_runtime_the_api_server_accepts(kube_api: ApiClient, namespace: str) -> None:
    home = Path(subprocess.check_output(["mktemp", "-d"], text=True).strip())
    rendered = run_helm(
        ["template", "sdtask", str(kind.ROOT / "charts" / "sdtask-operator"), "-f", str(kind.KIND_DIR / "values.yaml")],
        home=home,
        helm=ensure_helm(),
    )
    (runtime,) = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "SDRuntime"]
    assert runtime["spec"]["command"] == ["sdtask", "webui-standin"]  # the stand-in from the same image
    runtime["metadata"]["namespace"] = namespace
    CustomObjectsApi(kube_api).create_namespaced_custom_object(
        "sdtask.io", "v1alpha1", namespace, "sdruntimes", runtime, dry_run="All"
    )


def test_demo_task_is_a_valid_request_for_the_kind_runtime() -> None:
    manifest = load_request(str(kind.KIND_DIR / "demo-task.json"), None)
    assert manifest["spec"]["task"]["metadata"]["runtime"] == kind.values()["runtimes"][0]["name"]
    assert json.loads((kind.KIND_DIR / "demo-task.json").read_text())["task"] == manifest["spec"]["task"]


def test_make_kind_says_what_it_needs_when_kind_or_docker_is_missing(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sdtask.devcluster.kind"],
        env={"PATH": str(tmp_path)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "make kind needs kind and docker on PATH" in result.stdout
