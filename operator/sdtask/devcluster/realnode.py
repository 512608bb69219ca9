"""One real node in the local cluster: a kubelet on this machine running pods as real containers.

Beside the kwok pools (scale), this node proves the manifests: the image built here, the pod spec we write (probes,
preStop, grace period, security context, read-only root, volumes, token mounts) executed by a real kubelet. It needs
root and the Debian packages of scripts/host-packages.sh. What it runs, each as a child process logging to a file:

- containerd (Debian's) with its own root, state and socket, so it never touches a containerd the machine may have;
  `restrict_oom_score_adj`, because root here can't lower oom_score_adj and every sandbox would fail without it;
- the CNI bridge plugin on a bridge of ours (`sdtask0`, 10.89.0.0/24), no masquerading: pods reach only this machine;
- relays from the bridge address to the API server and S3 on loopback (sdtask.devcluster.relay), and kube-proxy, so a
  pod reaches the API server through the `kubernetes` Service exactly as on a real cluster (no hostNetwork, no env
  overrides in our manifests); the Service's EndpointSlice points at the relay;
- the kubelet (cgroup v1 allowed, cgroupfs, registered as `localhost` so the API server reaches it on loopback), with
  the pool label and the GPU taint of a GPU node;
- a fake GPU device plugin (sdtask.devcluster.fakegpu) advertising `nvidia.com/gpu`.

Teardown removes everything: pods' containers and shims, mounts under the work folder, the pods' network namespaces,
the bridge, the iptables chains the kubelet and kube-proxy added, and the cgroups.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import kubernetes
import yaml
from kubernetes.client import ApiClient, CoreV1Api, DiscoveryV1Api, RbacAuthorizationV1Api
from kubernetes.client.exceptions import ApiException

from sdtask.devcluster import images
from sdtask.devcluster.binaries import NodeBinaries, ensure_node_binaries
from sdtask.devcluster.certs import KUBELET_CLIENT_USER
from sdtask.devcluster.host import (
    CGROUP_ROOT,
    CNI_BIN_DIR,
    PAUSE_IMAGE,
    ensure_pause_image,
    iptables_chains,
    make_cgroup_root,
    mounts_under,
    netns_names,
    preflight_problems,
    remove_cgroups,
    remove_chains,
    run,
)
from sdtask.devcluster.processes import LocalPart, ManagedProcess, StackError, free_port, http_ok

NODE_NAME = "localhost"  # the kubelet's --hostname-override; the API server reaches it by this name on loopback
POOL = "real"
BRIDGE = "sdtask0"
BRIDGE_ADDRESS = "10.89.0.1"
POD_SUBNET = "10.89.0.0/24"
APISERVER_RELAY_PORT = 6443
S3_RELAY_PORT = 9000
CONTAINERD_NAMESPACE = "k8s.io"
START_TIMEOUT = 120.0
GPU_RESOURCE = "nvidia.com/gpu"


class RealNode(LocalPart):
    def __init__(
        self,
        workdir: Path,
        kubeconfig: Path,
        apiserver_port: int,
        s3_port: int,
        gpus: int = 2,
        pool: str = POOL,
    ) -> None:
        self.workdir = workdir.resolve() / "realnode"
        self.kubeconfig = kubeconfig
        self.ca_cert = workdir.resolve() / "pki" / "ca.crt"  # written by sdtask.devcluster.certs
        self.apiserver_port = apiserver_port
        self.s3_port = s3_port
        self.gpus = gpus
        self.pool = pool
        self.processes: list[ManagedProcess] = []
        self.socket = self.workdir / "containerd" / "containerd.sock"
        self.kubelet_port = 0
        self._chains_before: dict[tuple[str, str], set[str]] = {}
        self._netns_before: set[str] = set()
        self._bridge_created = False
        self.kube_proxy_config = self.workdir / "kube-proxy.yaml"
        self.binaries: NodeBinaries | None = None

    # What pods use to reach this machine's services.
    @property
    def s3_endpoint(self) -> str:
        return f"http://{BRIDGE_ADDRESS}:{S3_RELAY_PORT}"

    @property
    def labels(self) -> dict[str, str]:
        return {"sdtask.io/pool": self.pool, "nvidia.com/gpu.product": "fake"}

    def start(self) -> RealNode:
        problems = preflight_problems()
        if problems:
            raise StackError(
                "real node", "can't start: " + "; ".join(problems) + ". Set SDTASK_SKIP_CONTAINERS=1 to run without it."
            )
        return super().start()

    def _start(self) -> None:
        if Path(f"/sys/class/net/{BRIDGE}").exists():
            raise StackError(
                "real node",
                f"bridge {BRIDGE} exists: another real node runs on this machine (only one can), or one crashed "
                f"without teardown (then `ip link del {BRIDGE}`)",
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.binaries = ensure_node_binaries()
        self._chains_before = iptables_chains()
        self._netns_before = netns_names()
        run(["ip", "link", "add", BRIDGE, "type", "bridge"])
        self._bridge_created = True
        run(["ip", "addr", "add", f"{BRIDGE_ADDRESS}/24", "dev", BRIDGE])
        run(["ip", "link", "set", BRIDGE, "up"])
        self._spawn(
            "relay",
            [
                sys.executable,
                "-m",
                "sdtask.devcluster.relay",
                f"{BRIDGE_ADDRESS}:{APISERVER_RELAY_PORT}=127.0.0.1:{self.apiserver_port}",
                f"{BRIDGE_ADDRESS}:{S3_RELAY_PORT}=127.0.0.1:{self.s3_port}",
            ],
        )
        self._start_containerd()
        images.ensure_engine()
        ensure_pause_image(self.binaries)
        self.import_images([PAUSE_IMAGE])
        with _api_client(self.kubeconfig) as client:
            self._point_kubernetes_service(client)
            self._authorize_apiserver(client)
        self._start_kube_proxy()
        self._start_kubelet()
        self._spawn(
            "fake-gpu-plugin",
            [sys.executable, "-m", "sdtask.devcluster.fakegpu", "--resource", GPU_RESOURCE, "--count", str(self.gpus)],
        )
        self.wait_ready()

    # containerd ------------------------------------------------------------------------------------------------
    def _start_containerd(self) -> None:
        base = self.workdir / "containerd"
        cni_conf = self.workdir / "cni" / "net.d"
        cni_conf.mkdir(parents=True, exist_ok=True)
        (cni_conf / "10-sdtask.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "0.4.0",
                    "name": "sdtask",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": BRIDGE,
                            "isGateway": True,
                            "ipMasq": False,  # pods reach this machine only, never beyond it
                            "ipam": {
                                "type": "host-local",
                                "ranges": [[{"subnet": POD_SUBNET, "gateway": BRIDGE_ADDRESS}]],
                                "routes": [{"dst": "0.0.0.0/0"}],
                                "dataDir": str(self.workdir / "cni" / "ipam"),
                            },
                        },
                        {"type": "portmap", "capabilities": {"portMappings": True}},
                    ],
                },
                indent=2,
            )
        )
        config = f"""version = 2
root = "{base / "root"}"
state = "{base / "state"}"
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{self.socket}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{base / "opt"}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # Root here lacks CAP_SYS_RESOURCE: without this every sandbox fails ("can't get final child's PID from pipe").
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{cni_conf}"
"""
        base.mkdir(parents=True, exist_ok=True)
        (base / "config.toml").write_text(config)
        containerd = self._spawn("containerd", ["containerd", "--config", str(base / "config.toml")])
        containerd.wait_until(lambda: self._ctr("version", check=True) != "", START_TIMEOUT, "serving its socket")

    def _ctr(self, *args: str, check: bool = False, stdin: Any = None) -> str:
        return run(["ctr", "-a", str(self.socket), "-n", CONTAINERD_NAMESPACE, *args], check=check, stdin=stdin)

    def import_images(self, names: Iterable[str]) -> None:
        """Copy images from the Docker engine into the node's containerd (as a registry pull would). One archive for
        all names: tags of one image share their layers."""
        save = subprocess.Popen([images.docker_client(), "save", *names], stdout=subprocess.PIPE)
        try:
            run(
                ["ctr", "-a", str(self.socket), "-n", CONTAINERD_NAMESPACE, "images", "import", "-"],
                stdin=save.stdout,
                timeout=600,
            )
        finally:
            save.wait()
        if save.returncode != 0:
            raise StackError("real node", f"docker save {' '.join(names)} failed (exit {save.returncode})")

    # API access for pods -----------------------------------------------------------------------------------------
    def _point_kubernetes_service(self, client: ApiClient) -> None:
        """The API server runs with --endpoint-reconciler-type=none: the `kubernetes` Service's endpoint is ours."""
        discovery = DiscoveryV1Api(client)
        body = {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "kubernetes-sdtask-relay",
                "namespace": "default",
                "labels": {
                    "kubernetes.io/service-name": "kubernetes",
                    "endpointslice.kubernetes.io/managed-by": "sdtask.devcluster",
                },
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [BRIDGE_ADDRESS], "conditions": {"ready": True}}],
            "ports": [{"name": "https", "port": APISERVER_RELAY_PORT, "protocol": "TCP"}],
        }
        try:
            discovery.create_namespaced_endpoint_slice("default", body)
        except ApiException as error:
            if error.status != 409:
                raise
            discovery.replace_namespaced_endpoint_slice("kubernetes-sdtask-relay", "default", body)

    @staticmethod
    def _authorize_apiserver(client: ApiClient) -> None:
        """The kubelet asks the API server (webhook) whether the API server's own client may read logs and exec."""
        body = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "sdtask-devcluster:apiserver-kubelet-client"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:kubelet-api-admin",
            },
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": KUBELET_CLIENT_USER}],
        }
        try:
            RbacAuthorizationV1Api(client).create_cluster_role_binding(body)
        except ApiException as error:
            if error.status != 409:
                raise

    def _start_kube_proxy(self) -> None:
        assert self.binaries is not None
        healthz = free_port()
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(self.kubeconfig)},
            "hostnameOverride": NODE_NAME,
            "bindAddress": "127.0.0.1",
            "healthzBindAddress": f"127.0.0.1:{healthz}",
            "metricsBindAddress": f"127.0.0.1:{free_port()}",
            "mode": "iptables",
            "clusterCIDR": POD_SUBNET,
            # Leave the machine's conntrack and route_localnet sysctls alone.
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
            "iptables": {"localhostNodePorts": False},
        }
        self.kube_proxy_config.write_text(yaml.safe_dump(config))
        proxy = self._spawn("kube-proxy", [str(self.binaries.kube_proxy), f"--config={self.kube_proxy_config}"])
        proxy.wait_until(lambda: http_ok(f"http://127.0.0.1:{healthz}/livez"), START_TIMEOUT, "healthy (/livez)")

    # kubelet ---------------------------------------------------------------------------------------------------
    def _start_kubelet(self) -> None:
        assert self.binaries is not None
        self.kubelet_port = free_port()
        healthz = free_port()
        self.kubelet_healthz = healthz
        root = self.workdir / "kubelet"
        root.mkdir(parents=True, exist_ok=True)
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "failCgroupV1": False,  # these machines have cgroup v1; 1.36 refuses it otherwise
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": f"/{CGROUP_ROOT}",  # everything the kubelet creates stays under one cgroup, removed on exit
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "address": "127.0.0.1",
            "port": self.kubelet_port,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": healthz,
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(self.ca_cert)},  # the API server's kubelet client certificate
            },
            "authorization": {"mode": "Webhook"},
            "failSwapOn": False,
            "resolvConf": "/etc/resolv.conf",
            "serializeImagePulls": False,
            # A shared development machine's disk: evict nothing, garbage-collect no imported image.
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "maxPods": 30,
        }
        make_cgroup_root()
        config_path = self.workdir / "kubelet.yaml"
        config_path.write_text(yaml.safe_dump(config))
        labels = ",".join(f"{key}={value}" for key, value in self.labels.items())
        kubelet = self._spawn(
            "kubelet",
            [
                str(self.binaries.kubelet),
                f"--config={config_path}",
                f"--kubeconfig={self.kubeconfig}",
                f"--root-dir={root}",
                f"--cert-dir={root / 'pki'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={BRIDGE_ADDRESS}",
                f"--node-labels={labels}",
                f"--register-with-taints={GPU_RESOURCE}=present:NoSchedule",
                "--v=1",
            ],
        )
        kubelet.wait_until(lambda: http_ok(f"http://127.0.0.1:{healthz}/healthz"), START_TIMEOUT, "healthy")

    def restart_kubelet(self) -> None:
        kubelet = next(p for p in self.processes if p.component == "kubelet")
        kubelet.stop()
        kubelet.start()
        kubelet.wait_until(
            lambda: http_ok(f"http://127.0.0.1:{self.kubelet_healthz}/healthz"), START_TIMEOUT, "healthy again"
        )

    def node(self) -> Any:
        with _api_client(self.kubeconfig) as client:
            return CoreV1Api(client).read_node(NODE_NAME)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Until the node is Ready and advertises its GPUs (the device plugin registered)."""
        deadline = time.monotonic() + timeout
        while True:
            for process in self.processes:
                if not process.running():
                    raise StackError(process.component, "exited while the real node was starting", process.log)
            with contextlib.suppress(ApiException):
                node = self.node()
                ready = any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])
                gpus = (node.status.allocatable or {}).get(GPU_RESOURCE)
                if ready and gpus == str(self.gpus):
                    return
            if time.monotonic() > deadline:
                kubelet = next((p for p in self.processes if p.component == "kubelet"), None)
                raise StackError(
                    "real node",
                    f"not Ready with {self.gpus} {GPU_RESOURCE} after {timeout:.0f}s",
                    kubelet.log if kubelet else None,
                )
            time.sleep(0.5)

    # teardown --------------------------------------------------------------------------------------------------
    def _kill_containers(self) -> None:
        if not self.socket.exists():
            return
        for task in self._ctr("tasks", "ls", "-q").split():
            self._ctr("tasks", "kill", "-s", "SIGKILL", task)
        deadline = time.monotonic() + 20
        while self._ctr("tasks", "ls", "-q").split() and time.monotonic() < deadline:
            time.sleep(0.3)

    def _kill_shims(self) -> None:
        """containerd's shims outlive it by design; ours are the ones serving our socket."""
        marker = str(self.socket).encode()
        for pid in filter(str.isdigit, os.listdir("/proc")):
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                if b"containerd-shim" in cmdline and marker in cmdline:
                    os.kill(int(pid), signal.SIGKILL)

    def stop(self) -> None:
        by_name = {p.component: p for p in self.processes}
        for name in ("fake-gpu-plugin", "kubelet"):
            if name in by_name:
                by_name[name].stop()
        self._kill_containers()
        self._kill_shims()
        if "kube-proxy" in by_name:
            by_name["kube-proxy"].stop()
            if self.binaries is not None:  # removes every rule and chain kube-proxy made, in all modes
                run([str(self.binaries.kube_proxy), "--cleanup", f"--config={self.kube_proxy_config}"], check=False)
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()
        for point in mounts_under(self.workdir):
            run(["umount", "-l", point], check=False)
        for name in netns_names() - self._netns_before:
            if name.startswith("cni-"):
                run(["ip", "netns", "delete", name], check=False)
        if self._bridge_created:
            run(["ip", "link", "del", BRIDGE], check=False)
            self._bridge_created = False
        if self._chains_before:
            remove_chains(self._chains_before)
        remove_cgroups()


def _api_client(kubeconfig: Path) -> ApiClient:
    return kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
