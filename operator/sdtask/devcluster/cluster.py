"""A real Kubernetes control plane on 127.0.0.1: etcd, kube-apiserver, controller-manager, scheduler and kwok.

The envtest recipe plus the controllers that make Deployments real: ReplicaSets, scheduling onto GPU nodes, garbage
collection, and kwok playing the kubelets.
"""

from __future__ import annotations

import os
import secrets
import ssl
from dataclasses import dataclass
from pathlib import Path

import yaml

from sdtask.devcluster import certs
from sdtask.devcluster.binaries import Binaries
from sdtask.devcluster.processes import LocalPart, ManagedProcess, StackError, ensure_port_free, free_port, http_ok

START_TIMEOUT = 90.0
# The control plane shares the machine's cores with the runtimes it serves (a real cluster's runs on machines of its
# own), so its Go processes collect garbage less often: memory for the collector's CPU. In the bench, the API server
# ran 2 collections instead of 7 and took 15% less CPU with 200 tasks, and 22% less with 10,000, peaking at 2.9 GB
# instead of 1.3 GB (a 2 GiB limit gave the CPU back). The limit bounds the trade; a caller's GOGC or GOMEMLIMIT wins.
GO_RUNTIME_ENV = {"GOGC": "400", "GOMEMLIMIT": "4GiB"}

# The kwok stages that make nodes Ready and keep their leases, and move pods through Running and deletion.
KWOK_STAGE_FILES = (
    "node/fast/node-initialize.yaml",
    "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "pod/fast/pod-ready.yaml",
    "pod/fast/pod-complete.yaml",
    "pod/fast/pod-delete.yaml",
)


@dataclass
class ClusterPorts:
    etcd_client: int = 0
    apiserver: int = 0
    controller_manager: int = 0
    scheduler: int = 0

    def resolved(self) -> ClusterPorts:
        """Ports left at 0 get a free one; given ports are checked so a taken one fails before anything starts."""
        chosen = ClusterPorts()
        for name, component in _PORT_OWNERS.items():
            port = getattr(self, name)
            if port:
                ensure_port_free(component, port)
            setattr(chosen, name, port or free_port())
        return chosen


_PORT_OWNERS = {
    "etcd_client": "etcd",
    "apiserver": "kube-apiserver",
    "controller_manager": "kube-controller-manager",
    "scheduler": "kube-scheduler",
}


# Every client of the stack (operator, agents, tests, kubectl, the controllers) authenticates as the admin with a bearer
# token, as in-cluster components do with their service-account tokens. With the admin client certificate instead,
# the API server verified the certificate's signature on every request: 5% of its CPU in the benchmark's profile.
ADMIN_USER = "sdtask-admin"
ADMIN_GROUP = "system:masters"


def write_token_file(path: Path) -> str:
    """A new admin token in the API server's static token file (token,user,uid,"groups"); returns the token."""
    token = secrets.token_urlsafe(32)
    path.touch(mode=0o600)
    path.write_text(f'{token},{ADMIN_USER},{ADMIN_USER},"{ADMIN_GROUP}"\n')
    return token


def write_kubeconfig(path: Path, server: str, tls: certs.ClusterCertificates, token: str) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "sdtask-local", "cluster": {"server": server, "certificate-authority": str(tls.ca_cert)}}
        ],
        "users": [
            {
                "name": ADMIN_USER,
                "user": {"token": token},
            }
        ],
        "contexts": [{"name": "sdtask-local", "context": {"cluster": "sdtask-local", "user": ADMIN_USER}}],
        "current-context": "sdtask-local",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)


# Runtime pods (labelled with their runtime) are played by the sidecar simulator, which acts as their kubelet: kwok only
# starts them (Running, a pod IP) and leaves them not Ready, and the simulator runs their init containers, starts their
# processes and sets Ready once the pod's own readiness probe passes. kwok's stock pod-ready stage would mark them
# Ready at once (and again whenever they are not), so the operator would dispatch to a pod whose Web UI isn't up.
_RUNTIME_LABEL_KEY = '.metadata.labels["sdtask.io/runtime"]'
RUNTIME_POD_STARTED_STAGE: dict[str, object] = {
    "apiVersion": "kwok.x-k8s.io/v1alpha1",
    "kind": "Stage",
    "metadata": {"name": "sdtask-runtime-pod-started"},
    "spec": {
        "resourceRef": {"apiGroup": "v1", "kind": "Pod"},
        "selector": {
            "matchExpressions": [
                {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"},
                {"key": ".status.phase", "operator": "In", "values": ["Pending"]},
                {"key": ".status.podIP", "operator": "DoesNotExist"},
                {"key": _RUNTIME_LABEL_KEY, "operator": "Exists"},
            ]
        },
        "next": {
            "statusTemplate": """{{ $now := Now }}
conditions:
- {lastTransitionTime: {{ $now | Quote }}, status: "True", type: Initialized}
- {lastTransitionTime: {{ $now | Quote }}, status: "False", type: Ready, reason: ContainersNotReady}
- {lastTransitionTime: {{ $now | Quote }}, status: "False", type: ContainersReady, reason: ContainersNotReady}
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: false
  restartCount: 0
  state: {running: {startedAt: {{ $now | Quote }}}}
{{ end }}
{{ $podIPs := PodIPsWith .spec.nodeName false .metadata.uid .metadata.name .metadata.namespace }}
{{ with $podIPs }}
podIP: {{ index . 0 | Quote }}
podIPs:
{{ range . }}
- ip: {{ . | Quote }}
{{ end }}
{{ end }}
phase: Running
startTime: {{ $now | Quote }}
"""
        },
    },
}


def runtime_pods_left_to_the_simulator(document: object) -> object:
    """kwok's pod-ready stage, for every pod but runtime pods (see RUNTIME_POD_STARTED_STAGE)."""
    if not isinstance(document, dict) or document.get("metadata", {}).get("name") != "pod-ready":
        return document
    expressions = document["spec"]["selector"]["matchExpressions"]
    expressions.append({"key": _RUNTIME_LABEL_KEY, "operator": "DoesNotExist"})
    return document


class LocalControlPlane(LocalPart):
    def __init__(
        self,
        binaries: Binaries,
        workdir: Path,
        ports: ClusterPorts | None = None,
        real_node: bool = False,
    ) -> None:
        self.binaries = binaries
        self.real_node = real_node  # the API server then reaches a kubelet (sdtask.devcluster.realnode)
        self.workdir = workdir.resolve()  # paths inside the kubeconfig must not depend on the current folder
        self.requested_ports = ports or ClusterPorts()
        self.processes: list[ManagedProcess] = []
        self.kubeconfig = self.workdir / "kubeconfig"
        self.server = ""

    def _spawn(self, component: str, argv: list[str], env: dict[str, str] | None = None) -> ManagedProcess:
        go_runtime = {name: value for name, value in GO_RUNTIME_ENV.items() if name not in os.environ}
        return super()._spawn(component, argv, {**go_runtime, **(env or {})})

    def _start(self) -> None:
        ports = self.requested_ports.resolved()
        tls = certs.generate(self.workdir / "pki")
        token_file = self.workdir / "pki" / "tokens.csv"
        admin_token = write_token_file(token_file)
        admin_tls = ssl.create_default_context(cafile=str(tls.ca_cert))
        admin_tls.load_cert_chain(str(tls.admin_cert), str(tls.admin_key))
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE  # controller-manager/scheduler serve health on self-signed certs

        etcd_url = f"http://127.0.0.1:{ports.etcd_client}"
        etcd = self._spawn(
            "etcd",
            [
                str(self.binaries.etcd),
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                "--listen-peer-urls=http://127.0.0.1:0",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        etcd.wait_until(lambda: http_ok(f"{etcd_url}/health"), START_TIMEOUT, "healthy")

        self.server = f"https://127.0.0.1:{ports.apiserver}"
        apiserver = self._spawn(
            "kube-apiserver",
            [
                str(self.binaries.kube_apiserver),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={ports.apiserver}",
                f"--cert-dir={self.workdir / 'apiserver-certs'}",
                f"--tls-cert-file={tls.serving_cert}",
                f"--tls-private-key-file={tls.serving_key}",
                f"--client-ca-file={tls.ca_cert}",
                f"--token-auth-file={token_file}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={tls.service_account_pub}",
                f"--service-account-signing-key-file={tls.service_account_key}",
                "--authorization-mode=RBAC",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--endpoint-reconciler-type=none",
                "--allow-privileged=true",
                "--v=0",
                *(self._kubelet_client_args(tls) if self.real_node else []),
            ],
        )
        apiserver.wait_until(lambda: http_ok(f"{self.server}/readyz", admin_tls), START_TIMEOUT, "ready (/readyz)")
        write_kubeconfig(self.kubeconfig, self.server, tls, admin_token)

        kcm = self._spawn(
            "kube-controller-manager",
            [
                str(self.binaries.kube_controller_manager),
                f"--kubeconfig={self.kubeconfig}",
                f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={ports.controller_manager}",
                "--leader-elect=false",
                f"--service-account-private-key-file={tls.service_account_key}",
                f"--root-ca-file={tls.ca_cert}",
                "--use-service-account-credentials=false",
                "--controllers=*,-nodeipam",
                "--v=0",
            ],
        )
        scheduler = self._spawn(
            "kube-scheduler",
            [
                str(self.binaries.kube_scheduler),
                f"--kubeconfig={self.kubeconfig}",
                f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={ports.scheduler}",
                "--leader-elect=false",
                "--v=0",
            ],
        )
        stage_args = [f"--config={self._kwok_stage_config()}"]
        kwok = self._spawn(
            "kwok",
            [
                str(self.binaries.kwok),
                f"--kubeconfig={self.kubeconfig}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                "--cidr=10.244.0.0/16",
                "--node-ip=10.0.0.1",
                "--node-lease-duration-seconds=40",
                *stage_args,
            ],
        )
        kcm.wait_until(
            lambda: http_ok(f"https://127.0.0.1:{ports.controller_manager}/healthz", insecure),
            START_TIMEOUT,
            "healthy (/healthz)",
        )
        scheduler.wait_until(
            lambda: http_ok(f"https://127.0.0.1:{ports.scheduler}/healthz", insecure),
            START_TIMEOUT,
            "healthy (/healthz)",
        )
        if not kwok.running():
            raise StackError("kwok", "exited right after start", kwok.log)

    @staticmethod
    def _kubelet_client_args(tls: certs.ClusterCertificates) -> list[str]:
        """For `kubectl logs/exec` on a real kubelet registered as `localhost`: reach it by that name (on loopback)
        with a client certificate of its own, which the kubelet authorizes through RBAC (realnode binds it)."""
        return [
            "--kubelet-preferred-address-types=Hostname",
            f"--kubelet-client-certificate={tls.kubelet_client_cert}",
            f"--kubelet-client-key={tls.kubelet_client_key}",
        ]

    def _kwok_stage_config(self) -> Path:
        """kwok takes one or more config files; the stages are concatenated into one multi-document file."""
        documents: list[object] = []
        for relative in KWOK_STAGE_FILES:
            source = self.binaries.kwok_stages / relative
            if not source.is_file():
                raise StackError("kwok", f"stage file {source} is missing (rebuild the kwok cache)")
            documents.extend(doc for doc in yaml.safe_load_all(source.read_text()) if doc)
        documents = [*(runtime_pods_left_to_the_simulator(doc) for doc in documents), RUNTIME_POD_STARTED_STAGE]
        target = self.workdir / "kwok-stages.yaml"
        target.write_text(yaml.safe_dump_all(documents, sort_keys=False))
        return target

    def check_alive(self) -> None:
        for process in self.processes:
            if not process.running():
                raise StackError(process.component, "is no longer running", process.log)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()
