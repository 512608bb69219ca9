"""`make kind`: the whole system on a kind cluster, for people with Docker and internet access.

Steps (each a function, so the ones that need no Docker are run by the tests against the local stack):
1. create the kind cluster of deploy/kind/cluster.yaml (GPU pools as labelled, tainted workers) unless it exists;
2. give its workers fake GPUs: nvidia.com/gpu in their status capacity, as many as their sdtask.io/fake-gpus label;
3. build the image (`make image`) and load it into the cluster;
4. start the in-cluster S3 (deploy/kind/minio.yaml), create the buckets and upload a stand-in checkpoint;
5. install the chart with deploy/kind/values.yaml (the operator and the example runtime);
6. run the demo task with `sdtask run`, downloading its outputs to kind-output/.
Then `export SDTASK_KUBECONFIG=.kind/kubeconfig` points the test suite at the cluster.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes import utils
from kubernetes.client import ApiClient, AppsV1Api, CoreV1Api
from kubernetes.client.exceptions import ApiException

from sdtask.clients.s3 import S3Client, S3Settings, make_s3_client
from sdtask.devcluster import images
from sdtask.devcluster.waiting import wait_for
from sdtask.standin.weights import checkpoint_bytes

ROOT = Path(__file__).resolve().parents[3]
KIND_DIR = ROOT / "deploy" / "kind"
CLUSTER = "sdtask"
IMAGE = images.DEFAULT_TAG
FAKE_GPUS_LABEL = "sdtask.io/fake-gpus"
GPU = "nvidia.com/gpu"
S3_ON_HOST = "http://127.0.0.1:30900"
DEMO_NAMESPACE = "sdtask-demo"
BUCKETS = ("sdtask-outputs", "sdtask-models")


def step(message: str) -> None:
    print(f"[make kind] {message}", flush=True)


def run(*command: str, env: dict[str, str] | None = None) -> None:
    step("$ " + " ".join(command))
    subprocess.run(command, check=True, cwd=ROOT, env={**os.environ, **(env or {})})


def cluster_config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((KIND_DIR / "cluster.yaml").read_text())
    return config


def create_cluster(kubeconfig: Path) -> None:
    existing = subprocess.run(["kind", "get", "clusters"], capture_output=True, text=True, check=True).stdout.split()
    if CLUSTER in existing:
        step(f"kind cluster {CLUSTER} exists; reusing it")
        run("kind", "export", "kubeconfig", "--name", CLUSTER, "--kubeconfig", str(kubeconfig))
        return
    kubeconfig.parent.mkdir(parents=True, exist_ok=True)
    run("kind", "create", "cluster", "--config", str(KIND_DIR / "cluster.yaml"), "--kubeconfig", str(kubeconfig))


def fake_gpus(client: ApiClient) -> dict[str, str]:
    """Patch nvidia.com/gpu into the capacity of every node labelled sdtask.io/fake-gpus (extended resources in the
    status survive kubelet restarts; no device plugin needed for scheduling). Returns node -> GPUs."""
    core = CoreV1Api(client)
    patched = {}
    for node in core.list_node(label_selector=FAKE_GPUS_LABEL).items:
        count = node.metadata.labels[FAKE_GPUS_LABEL]
        core.patch_node_status(node.metadata.name, {"status": {"capacity": {GPU: count}}})
        patched[node.metadata.name] = count
    step(f"fake GPUs: {patched or 'no node labelled ' + FAKE_GPUS_LABEL}")
    return patched


def load_image() -> None:
    run("make", "image")
    run("kind", "load", "docker-image", IMAGE, "--name", CLUSTER)


def apply_manifests(client: ApiClient, path: Path) -> None:
    for document in yaml.safe_load_all(path.read_text()):
        if not document:
            continue
        try:
            utils.create_from_dict(client, document)
        except utils.FailToCreateError as error:
            if any(isinstance(e, ApiException) and e.status == 409 for e in error.api_exceptions):
                continue  # already there from an earlier run
            raise


def start_s3(client: ApiClient) -> None:
    apply_manifests(client, KIND_DIR / "minio.yaml")

    def ready() -> bool:
        deployment = AppsV1Api(client).read_namespaced_deployment("minio", DEMO_NAMESPACE)
        return bool(deployment.status.ready_replicas)

    wait_for(ready, 300, "MinIO to be ready")


def demo_credentials() -> dict[str, str]:
    secret = next(d for d in yaml.safe_load_all((KIND_DIR / "minio.yaml").read_text()) if d["kind"] == "Secret")
    return dict(secret["stringData"])


def values() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((KIND_DIR / "values.yaml").read_text())
    return loaded


def seed_s3(s3: S3Client) -> list[str]:
    """The buckets, and the stand-in checkpoint the example runtime's fetch-model init container fetches."""
    for bucket in BUCKETS:
        with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):  # an earlier run made it
            s3.create_bucket(Bucket=bucket)
    uris = []
    for runtime in values()["runtimes"]:
        spec = runtime["spec"]
        bucket, _, prefix = spec["models"]["s3Prefix"].removeprefix("s3://").partition("/")
        key = prefix + spec["checkpoint"]
        s3.put_object(Bucket=bucket, Key=key, Body=checkpoint_bytes(spec["checkpoint"]))
        uris.append(f"s3://{bucket}/{key}")
    step(f"seeded {', '.join(uris)}")
    return uris


def install_chart(kubeconfig: Path) -> None:
    from sdtask.devcluster.helm import ensure_helm

    helm = ensure_helm()
    run(
        str(helm), "upgrade", "--install", "sdtask", str(ROOT / "charts" / "sdtask-operator"),
        "--namespace", "sdtask-system", "--create-namespace", "--values", str(KIND_DIR / "values.yaml"),
        "--wait", "--timeout", "5m",
        env={"KUBECONFIG": str(kubeconfig)},
    )  # fmt: skip


def run_demo(kubeconfig: Path, out: Path) -> None:
    credentials = demo_credentials()
    run(
        str(Path(sys.executable).parent / "sdtask"), "run", str(KIND_DIR / "demo-task.json"),
        "-n", DEMO_NAMESPACE, "--out", str(out), "--s3-endpoint", S3_ON_HOST, "--timeout", "600",
        env={"KUBECONFIG": str(kubeconfig), **credentials},
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="make kind", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--kubeconfig", type=Path, default=ROOT / ".kind" / "kubeconfig")
    parser.add_argument("--out", type=Path, default=ROOT / "kind-output")
    args = parser.parse_args(argv)
    missing = [tool for tool in ("kind", "docker") if shutil.which(tool) is None]
    if missing:
        print(f"make kind needs {' and '.join(missing)} on PATH (and internet access for kind's node image)")
        return 1
    create_cluster(args.kubeconfig)
    from sdtask.clients.kube import load_api_client

    client = load_api_client(str(args.kubeconfig))
    fake_gpus(client)
    load_image()
    start_s3(client)
    started = time.monotonic()
    credentials = demo_credentials()
    s3 = make_s3_client(
        S3Settings(
            endpoint_url=S3_ON_HOST,
            access_key_id=credentials["AWS_ACCESS_KEY_ID"],
            secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"],
        )
    )
    wait_for(lambda: bool(s3.list_buckets() is not None), 120, "S3 on the host port")
    seed_s3(s3)
    install_chart(args.kubeconfig)
    run_demo(args.kubeconfig, args.out)
    step(f"done in {time.monotonic() - started:.0f}s after the image build. Next:")
    print(f"  export KUBECONFIG={args.kubeconfig}            # kubectl get sdt,sdr -n {DEMO_NAMESPACE}")
    print(f"  export SDTASK_KUBECONFIG={args.kubeconfig}     # make test runs on this cluster")
    print(f"  kind delete cluster --name {CLUSTER}           # when done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
