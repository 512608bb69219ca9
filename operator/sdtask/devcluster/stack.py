"""The local stack the tests, `make dev`, the demo and the benchmarks share.

A real control plane with simulated GPU node pools (or an existing cluster named by SDTASK_KUBECONFIG) plus a real
S3-protocol server. Later layers (operator, agents, stand-in Web UI) are started on top of it by their own modules.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import boto3
import kubernetes
from kubernetes.client import ApiClient, CoreV1Api
from kubernetes.client.exceptions import ApiException

from sdtask.clients.s3 import S3Client
from sdtask.devcluster.binaries import ensure_binaries
from sdtask.devcluster.cluster import ClusterPorts, LocalControlPlane
from sdtask.devcluster.nodes import DEFAULT_POOLS, NodePool, pool_manifests
from sdtask.devcluster.processes import LocalPart, StackError
from sdtask.devcluster.realnode import RealNode
from sdtask.devcluster.s3server import LocalS3Server, S3Endpoint

EXISTING_KUBECONFIG_ENV = "SDTASK_KUBECONFIG"
DEFAULT_BUCKET = "sdtask-outputs"


class DevStack(LocalPart):
    def __init__(
        self,
        workdir: Path | None = None,
        pools: tuple[NodePool, ...] = DEFAULT_POOLS,
        ports: ClusterPorts | None = None,
        bucket: str = DEFAULT_BUCKET,
        real_node: bool = False,
    ) -> None:
        self._owns_workdir = workdir is None
        # Absolute: the kubeconfig names its certificates by path, and a relative path would be resolved again
        # against the kubeconfig's own folder by every client.
        self.workdir = (workdir or Path(tempfile.mkdtemp(prefix="sdtask-stack-"))).resolve()
        self.pools = pools
        self.ports = ports
        self.bucket = bucket
        self.control_plane: LocalControlPlane | None = None
        self.s3_server: LocalS3Server | None = None
        self.kubeconfig = Path()
        self.s3 = S3Endpoint(url="")
        self.want_real_node = real_node
        self.real_node: RealNode | None = None  # a kubelet running pods as real containers (sdtask.devcluster.realnode)

    @property
    def uses_existing_cluster(self) -> bool:
        return bool(os.environ.get(EXISTING_KUBECONFIG_ENV))

    def _start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        existing = os.environ.get(EXISTING_KUBECONFIG_ENV)
        if existing:
            self.kubeconfig = Path(existing)
            if not self.kubeconfig.is_file():
                raise StackError("cluster", f"{EXISTING_KUBECONFIG_ENV}={existing} names no readable kubeconfig")
        else:
            self.control_plane = LocalControlPlane(
                ensure_binaries(), self.workdir, self.ports, real_node=self.want_real_node
            ).start()
            self.kubeconfig = self.control_plane.kubeconfig
        self.s3_server = LocalS3Server(self.workdir).start()
        self.s3 = self.s3_server.endpoint
        self.s3_client().create_bucket(Bucket=self.bucket)
        if not existing:
            self.register_node_pools()
        if self.want_real_node:
            if existing or self.control_plane is None or self.s3_server is None:
                raise StackError("real node", f"runs only with the local control plane, not {EXISTING_KUBECONFIG_ENV}")
            apiserver_port = int(self.control_plane.server.rsplit(":", 1)[1])
            self.real_node = RealNode(self.workdir, self.kubeconfig, apiserver_port, self.s3_server.port).start()

    def api_client(self) -> ApiClient:
        return kubernetes.config.new_client_from_config(config_file=str(self.kubeconfig))

    def s3_client(self) -> S3Client:
        return boto3.client(
            "s3",
            endpoint_url=self.s3.url,
            region_name=self.s3.region,
            aws_access_key_id=self.s3.access_key_id,
            aws_secret_access_key=self.s3.secret_access_key,
        )

    def register_node_pools(self, timeout: float = 60) -> None:
        """Create the pools' Nodes and wait until kwok reports every one Ready."""
        with self.api_client() as client:
            core = CoreV1Api(client)
            names = []
            for manifest in pool_manifests(self.pools):
                names.append(manifest["metadata"]["name"])
                try:
                    core.create_node(manifest)
                except ApiException as error:
                    if error.status != 409:
                        raise
            deadline = time.monotonic() + timeout
            while True:
                ready = {
                    node.metadata.name
                    for node in core.list_node().items
                    if any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])
                }
                if ready.issuperset(names):
                    return
                if time.monotonic() > deadline:
                    log = self.control_plane.processes[-1].log if self.control_plane else None
                    raise StackError("kwok", f"nodes not Ready after {timeout:.0f}s: {sorted(set(names) - ready)}", log)
                time.sleep(0.2)

    def env(self) -> dict[str, str]:
        """What a shell (or a child process) needs to talk to this stack."""
        return {
            "KUBECONFIG": str(self.kubeconfig),
            "SDTASK_S3_ENDPOINT": self.s3.url,
            "SDTASK_S3_BUCKET": self.bucket,
            "AWS_ACCESS_KEY_ID": self.s3.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.s3.secret_access_key,
            "AWS_DEFAULT_REGION": self.s3.region,
        }

    def stop(self) -> None:
        if self.real_node:  # first: its pods talk to the control plane and S3 until they are gone
            self.real_node.stop()
            self.real_node = None
        if self.s3_server:
            self.s3_server.stop()
            self.s3_server = None
        if self.control_plane:
            self.control_plane.stop()
            self.control_plane = None
        if self._owns_workdir and not os.environ.get("SDTASK_KEEP_STACK"):  # kept: its logs, to read after a failure
            shutil.rmtree(self.workdir, ignore_errors=True)
