"""Stand-ins for what runs inside runtime pods on kwok nodes (kwok runs no containers).

For every Running runtime pod, this starts the stand-in Web UI and the real agent (`sdtask agent`) as local processes.
Like a kubelet, it reads the pod spec and nothing else: the init containers run first (a failure is reported in the pod
status and the pod never starts), the stand-in gets the Web UI container's own args ($(VAR) expanded), and the pod is
Ready only once the container's readiness probe passes. The agent gets exactly the environment the operator wrote
into the pod's agent container (fieldRefs and secretKeyRefs resolved as the kubelet would). The local substitutions:
ports, the models volume (one folder per runtime, playing a shared volume), the Web UI URL and the state folder.
When the pod goes away, the agent is told to stop as the kubelet would (SIGTERM) and both processes end.
"""

from __future__ import annotations

import base64
import logging
import re
import socket
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes
from kubernetes.client import ApiClient, CoreV1Api

from sdtask.api.runtime import DEFAULT_MODELS_MOUNT_PATH
from sdtask.constants import AGENT_CONTAINER, LABEL_RUNTIME, WEBUI_CONTAINER
from sdtask.devcluster.processes import ManagedProcess, StackError, free_port, http_ok
from sdtask.devcluster.waiting import wait_for

log = logging.getLogger(__name__)


@dataclass
class SimulatedPod:
    name: str
    namespace: str
    runtime: str
    webui_url: str
    webui: ManagedProcess
    agent: ManagedProcess
    metrics_url: str = ""


@dataclass
class StandinTiming:
    load_delay: float = 0.3
    image_delay: float = 0.05


@dataclass
class SidecarSimulator:
    kubeconfig: Path
    workdir: Path
    models_root: Path
    timing: StandinTiming = field(default_factory=StandinTiming)
    # Per runtime name, for benchmarks that give each runtime its own service and switch times.
    timings: dict[str, StandinTiming] = field(default_factory=dict)
    extra_agent_env: dict[str, str] = field(default_factory=dict)
    # Per runtime name, over extra_agent_env: a test that needs another setting for its own runtime's agents.
    agent_envs: dict[str, dict[str, str]] = field(default_factory=dict)
    # Used where the pod spec leaves a variable empty (e.g. no S3 endpoint: pod identity -> the local S3 server).
    default_agent_env: dict[str, str] = field(default_factory=dict)
    pods: dict[tuple[str, str], SimulatedPod] = field(default_factory=dict)
    lost: set[tuple[str, str]] = field(default_factory=set)  # pods whose "node died": never restarted
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def models_dir(self, namespace: str, runtime: str) -> Path:
        """Plays the runtime's shared models volume: one folder per runtime."""
        path = self.models_root / namespace / runtime
        path.mkdir(parents=True, exist_ok=True)
        return path

    def start(self) -> SidecarSimulator:
        self._thread = threading.Thread(target=self._watch, name="sidecar-simulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            for pod in list(self.pods.values()):
                self._stop_pod(pod)
            self.pods.clear()

    def simulated(self, namespace: str, pod: str, timeout: float = 30) -> SimulatedPod:
        """The pod's local processes, once they run. A pod turns Ready (its probe passed) a moment before its agent
        starts and it is registered here, so a caller that waited for readiness waits that moment too."""
        return wait_for(lambda: self.pods.get((namespace, pod)), timeout, f"pod {namespace}/{pod} to be simulated")

    def webui_url(self, namespace: str, pod: str) -> str:
        return self.simulated(namespace, pod).webui_url

    def agent_metrics_url(self, namespace: str, pod: str) -> str:
        return self.simulated(namespace, pod).metrics_url

    def crash_agent(self, namespace: str, pod: str) -> None:
        """The agent container dies and the kubelet restarts it; the pod and its Web UI stay."""
        with self._lock:
            agent = self.pods[(namespace, pod)].agent
            agent.kill()
            agent.start()

    def lose(self, namespace: str, pod: str) -> None:
        """Simulate the node under a pod dying: its agent and Web UI are killed at once, mid-task."""
        with self._lock:
            self.lost.add((namespace, pod))
            simulated = self.pods.pop((namespace, pod), None)
        if simulated:
            simulated.agent.kill()
            simulated.webui.kill()

    # --- watching pods ---------------------------------------------------------------------------------------------
    def _watch(self) -> None:
        client = kubernetes.config.new_client_from_config(config_file=str(self.kubeconfig))
        core = CoreV1Api(client)
        while not self._stop.is_set():
            try:
                listing = core.list_pod_for_all_namespaces(label_selector=LABEL_RUNTIME)
                self._sync(client, {(p.metadata.namespace, p.metadata.name): p for p in listing.items})
                stream = kubernetes.watch.Watch().stream(
                    core.list_pod_for_all_namespaces,
                    label_selector=LABEL_RUNTIME,
                    resource_version=listing.metadata.resource_version,
                    timeout_seconds=5,
                )
                for _event in stream:
                    if self._stop.is_set():
                        return
                    # Any change: look at the whole picture again (few pods, and it keeps this simple and exact).
                    current = core.list_pod_for_all_namespaces(label_selector=LABEL_RUNTIME)
                    self._sync(client, {(p.metadata.namespace, p.metadata.name): p for p in current.items})
            except Exception as error:
                if not self._stop.is_set():
                    log.warning("sidecar simulator: %s", error)
                    self._stop.wait(0.5)

    def _sync(self, client: ApiClient, pods: dict[tuple[str, str], Any]) -> None:
        with self._lock:
            if self._stop.is_set():
                return
            for key, pod in list(self.pods.items()):
                live = pods.get(key)
                if live is None or live.metadata.deletion_timestamp or live.status.phase != "Running":
                    self._stop_pod(pod)
                    del self.pods[key]
            for key, pod in pods.items():
                if key in self.pods or key in self.lost or pod.metadata.deletion_timestamp:
                    continue
                if pod.status.phase != "Running":
                    continue
                try:
                    self.pods[key] = self._start_pod(client, pod)
                except Exception as error:
                    log.warning("sidecar simulator: cannot start pod %s/%s: %s", *key, error)

    # --- one pod: what the kubelet would do with its spec ------------------------------------------------------------
    def _start_pod(self, client: ApiClient, pod: Any) -> SimulatedPod:
        serialized = client.sanitize_for_serialization(pod)
        meta, spec = serialized["metadata"], serialized["spec"]
        namespace, name = meta["namespace"], meta["name"]
        runtime = meta["labels"][LABEL_RUNTIME]
        core = CoreV1Api(client)
        containers = {c["name"]: c for c in spec["containers"]}
        pod_dir = self.workdir / "pods" / namespace / name
        models = self.models_dir(namespace, runtime)
        webui_spec, agent_spec = containers[WEBUI_CONTAINER], containers[AGENT_CONTAINER]
        mount = models_mount_path(webui_spec)
        # Until its probe passes the pod is not Ready, whatever kwok said: the operator must not dispatch to it.
        set_pod_ready(core, namespace, name, False, "ContainersNotReady")
        for init in spec.get("initContainers") or []:
            self._run_init_container(core, serialized, init, pod_dir, models, mount)
        timing = self.timings.get(runtime, self.timing)
        port = free_port()
        webui_env = resolve_env(core, serialized, webui_spec.get("env") or [])
        args = local_webui_args(expand_vars(webui_spec.get("args") or [], webui_env), mount, models, port)
        webui = ManagedProcess(
            f"stand-in webui {name}",
            [
                sys.executable,
                "-m",
                "sdtask.standin",
                "--load-delay",
                str(timing.load_delay),
                "--image-delay",
                str(timing.image_delay),
                "--data-dir",
                str(pod_dir / "webui"),
                *args,
            ],
            pod_dir / "webui.log",
        ).start()
        try:
            return self._start_agent(core, serialized, agent_spec, webui_spec, webui, port, pod_dir, models)
        except BaseException:
            # The pod went while it started (its readiness write finds it deleted, say): nothing of it may outlive
            # this, as no SimulatedPod will be there to stop it.
            webui.kill()
            raise

    def _start_agent(
        self,
        core: CoreV1Api,
        serialized: dict[str, Any],
        agent_spec: dict[str, Any],
        webui_spec: dict[str, Any],
        webui: ManagedProcess,
        port: int,
        pod_dir: Path,
        models: Path,
    ) -> SimulatedPod:
        """Once the pod's Web UI runs: wait for its readiness probe, then start the agent."""
        meta = serialized["metadata"]
        namespace, name, runtime = meta["namespace"], meta["name"], meta["labels"][LABEL_RUNTIME]
        # The kubelet probes the pod's IP, not the container's loopback: POD_IP plays it (all of 127/8 is loopback
        # here), so a Web UI started without --listen (bound to 127.0.0.1 only) never becomes Ready.
        readiness = webui_spec.get("readinessProbe") or {}
        probe = probe_url(readiness, POD_IP, port)
        if "tcpSocket" in readiness:
            webui.wait_until(lambda: tcp_open(POD_IP, port), 30, f"ready (TCP {POD_IP}:{port})")
        else:
            webui.wait_until(lambda: http_ok(probe), 30, f"ready ({probe})")
        set_pod_ready(core, namespace, name, True, "")
        webui_url = f"http://127.0.0.1:{port}"
        env = resolve_env(core, serialized, agent_spec.get("env") or [])
        env.update({key: value for key, value in self.default_agent_env.items() if not env.get(key)})
        metrics_port = free_port()  # the pod spec's port would clash between local agents
        env.update(
            SDTASK_WEBUI_URL=webui_url,
            SDTASK_AGENT_METRICS_PORT=str(metrics_port),
            SDTASK_MODELS_DIR=str(models),
            SDTASK_STATE_DIR=str(pod_dir / "state"),
            KUBECONFIG=str(self.kubeconfig),
            **self.extra_agent_env,
        )
        env.update(self.agent_envs.get(runtime, {}))
        agent = ManagedProcess(
            f"agent {name}", [sys.executable, "-m", "sdtask.cli", "agent"], pod_dir / "agent.log", env=env
        ).start()
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        return SimulatedPod(name, namespace, runtime, webui_url, webui, agent, metrics_url)

    def _run_init_container(
        self, core: CoreV1Api, pod: dict[str, Any], init: dict[str, Any], pod_dir: Path, models: Path, mount: str
    ) -> None:
        """Run one of our init containers (the same image: `sdtask <args>`) to its end, as the kubelet does before
        any container starts; a failure is reported in the pod status with its message, and the pod never starts."""
        env = resolve_env(core, pod, init.get("env") or [])
        env.update({key: value for key, value in self.default_agent_env.items() if not env.get(key)})
        env = {key: str(models) if value == mount else value for key, value in env.items()}
        log = pod_dir / f"{init['name']}.log"
        termination = pod_dir / f"{init['name']}.termination-log"
        process = ManagedProcess(
            f"init {init['name']} {pod['metadata']['name']}",
            [sys.executable, "-m", "sdtask.cli", *init.get("args", [])],
            log,
            env={**env, "SDTASK_TERMINATION_LOG": str(termination)},
        ).start()
        code = process.wait(timeout=300)
        if code == 0:
            return
        message = termination.read_text() if termination.exists() else log.read_text()[-2000:]
        report_init_failure(core, pod["metadata"]["namespace"], pod["metadata"]["name"], init["name"], code, message)
        raise StackError(f"init container {init['name']}", f"exited with code {code}: {message}", log)

    @staticmethod
    def _stop_pod(pod: SimulatedPod) -> None:
        pod.agent.stop(grace=30)  # SIGTERM: the agent finishes its task first, as in a real pod
        pod.webui.stop()


POD_IP = "127.0.0.2"
_VARIABLE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def models_mount_path(webui: dict[str, Any]) -> str:
    mounts = {m["name"]: m["mountPath"] for m in webui.get("volumeMounts") or []}
    return str(mounts.get("models", DEFAULT_MODELS_MOUNT_PATH)).rstrip("/") or "/"


def expand_vars(args: list[str], env: dict[str, str]) -> list[str]:
    """The kubelet expands $(VAR) in args from the container's environment ($$ is a literal $)."""

    def value(match: re.Match[str]) -> str:
        return "$" if match.group(0) == "$$" else env.get(match.group(1), match.group(0))

    return [_VARIABLE.sub(value, arg) for arg in args]


def local_webui_args(args: list[str], mount: str, models: Path, port: int) -> list[str]:
    """The pod's Web UI args with what differs on this machine: the port (many pods share one host) and paths in
    the models volume (a local folder)."""
    local: list[str] = []
    for index, arg in enumerate(args):
        if index > 0 and args[index - 1] == "--port":
            local.append(str(port))
        elif arg.startswith("--port="):
            local.append(f"--port={port}")
        elif arg == mount or arg.startswith(f"{mount}/"):
            local.append(str(models) + arg[len(mount) :])
        else:
            local.append(arg)
    if "--port" not in args and not any(a.startswith("--port=") for a in args):
        local += ["--port", str(port)]  # the pod would use the image's default port; here each pod needs its own
    return local


def probe_url(probe: dict[str, Any], host: str, port: int) -> str:
    """Where the kubelet's httpGet readiness probe goes."""
    path = (probe.get("httpGet") or {}).get("path")
    return f"http://{host}:{port}{path or '/'}"


def tcp_open(host: str, port: int) -> bool:
    with socket.create_connection((host, port), timeout=2):
        return True


def set_pod_ready(core: CoreV1Api, namespace: str, name: str, ready: bool, reason: str) -> None:
    status = "True" if ready else "False"
    conditions = [
        {"type": kind, "status": status, **({"reason": reason} if reason else {})}
        for kind in ("Ready", "ContainersReady")
    ]
    core.patch_namespaced_pod_status(name, namespace, {"status": {"conditions": conditions}})


def report_init_failure(core: CoreV1Api, namespace: str, name: str, container: str, code: int, message: str) -> None:
    """What the kubelet reports for an init container that keeps failing."""
    status = {
        "phase": "Pending",
        "initContainerStatuses": [
            {
                "name": container,
                "ready": False,
                "restartCount": 0,
                "image": "",
                "imageID": "",
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": message}},
                "lastState": {"terminated": {"exitCode": code, "reason": "Error", "message": message}},
            }
        ],
    }
    core.patch_namespaced_pod_status(name, namespace, {"status": status})


def resolve_env(core: CoreV1Api, pod: dict[str, Any], env: list[dict[str, Any]]) -> dict[str, str]:
    """What the kubelet would put in the container's environment."""
    resolved: dict[str, str] = {}
    for item in env:
        source = item.get("valueFrom") or {}
        if "value" in item:
            resolved[item["name"]] = str(item["value"])
        elif "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            resolved[item["name"]] = str(pod["metadata"][path.split(".", 1)[1]])
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            secret = core.read_namespaced_secret(ref["name"], pod["metadata"]["namespace"])
            resolved[item["name"]] = base64.b64decode((secret.data or {})[ref["key"]]).decode()
    return resolved
