"""Stand-ins for what runs inside runtime pods on kwok nodes (kwok runs no containers).

For every Running runtime pod, this starts the stand-in Web UI and the real agent (`sdtask agent`) as local processes.
The agent gets exactly the environment the operator wrote into the pod's agent container (fieldRefs and secretKeyRefs
resolved as the kubelet would), with three local substitutions: the Web UI URL, the models folder and the state folder.
When the pod goes away, the agent is told to stop as the kubelet would (SIGTERM) and both processes end.
"""

from __future__ import annotations

import base64
import logging
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes
from kubernetes.client import ApiClient, CoreV1Api

from sdtask.constants import AGENT_CONTAINER, LABEL_RUNTIME, WEBUI_CONTAINER
from sdtask.localstack.processes import ManagedProcess, free_port, http_ok

log = logging.getLogger(__name__)


@dataclass
class SimulatedPod:
    name: str
    namespace: str
    runtime: str
    webui_url: str
    webui: ManagedProcess
    agent: ManagedProcess


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

    def webui_url(self, namespace: str, pod: str) -> str:
        return self.pods[(namespace, pod)].webui_url

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

    # --- one pod ---------------------------------------------------------------------------------------------------
    def _start_pod(self, client: ApiClient, pod: Any) -> SimulatedPod:
        serialized = client.sanitize_for_serialization(pod)
        meta, spec = serialized["metadata"], serialized["spec"]
        namespace, name = meta["namespace"], meta["name"]
        runtime = meta["labels"][LABEL_RUNTIME]
        containers = {c["name"]: c for c in spec["containers"]}
        pod_dir = self.workdir / "pods" / namespace / name
        models = self.models_dir(namespace, runtime)
        webui_args = containers[WEBUI_CONTAINER].get("args") or []
        initial = initial_model_args(webui_args)
        if initial and not (models / initial[1]).exists():
            (models / initial[1]).write_bytes(b"stand-in weights")  # a static runtime's volume holds its checkpoint
        timing = self.timings.get(runtime, self.timing)
        port = free_port()
        webui = ManagedProcess(
            f"stand-in webui {name}",
            [
                sys.executable,
                "-m",
                "sdtask.standin",
                "--port",
                str(port),
                "--models-dir",
                str(models),
                "--load-delay",
                str(timing.load_delay),
                "--image-delay",
                str(timing.image_delay),
                *initial_model_args(containers[WEBUI_CONTAINER].get("args") or []),
            ],
            pod_dir / "webui.log",
        ).start()
        webui_url = f"http://127.0.0.1:{port}"
        webui.wait_until(lambda: http_ok(f"{webui_url}/internal/ping"), 30, "serving")
        env = resolve_env(CoreV1Api(client), serialized, containers[AGENT_CONTAINER].get("env") or [])
        env.update({key: value for key, value in self.default_agent_env.items() if not env.get(key)})
        env.update(
            SDTASK_WEBUI_URL=webui_url,
            SDTASK_MODELS_DIR=str(models),
            SDTASK_STATE_DIR=str(pod_dir / "state"),
            KUBECONFIG=str(self.kubeconfig),
            **self.extra_agent_env,
        )
        agent = ManagedProcess(
            f"agent {name}", [sys.executable, "-m", "sdtask.cli", "agent"], pod_dir / "agent.log", env=env
        ).start()
        return SimulatedPod(name, namespace, runtime, webui_url, webui, agent)

    @staticmethod
    def _stop_pod(pod: SimulatedPod) -> None:
        pod.agent.stop(grace=30)  # SIGTERM: the agent finishes its task first, as in a real pod
        pod.webui.stop()


def initial_model_args(webui_args: list[str]) -> list[str]:
    """A static runtime starts its Web UI with --ckpt <path>: the stand-in starts with that model loaded."""
    if "--ckpt" in webui_args:
        index = webui_args.index("--ckpt")
        if index + 1 < len(webui_args):
            return ["--initial-model", Path(webui_args[index + 1]).name]
    return []


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
