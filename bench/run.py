"""`make bench`: the figures of "Keep every GPU busy" on the real local stack, written to bench/results.json.

Everything real but the GPU: kube-apiserver, KCM, scheduler and kwok nodes, the operator process, one agent process
and one stand-in Web UI per pod (service and switch times set per runtime), the S3 server. Scenarios, in order:

- latency: one task at a time on 4 warm pods, 0 s service: first-seen time of each phase (created -> Pending
  (queued) -> Scheduled -> Running -> Succeeded) as the user's watch sees it, p50/p99 per phase and end to end.
- api: 200 tasks at once on those 4 pods: pod time per task (pods x makespan / tasks) and API requests per task,
  counted exactly by the API server itself (apiserver_request_total by resource, subresource and verb).
- busy: 8 pods, 160 tasks of 0.5 s: busy fraction = service time / (pods x makespan).
- switching: a dynamic runtime, 4 pods, 8 checkpoints round-robin, 64 tasks, 5 s switch, 0.5 s image, once with the
  project's policy and once with plain FIFO (`scheduling.policy`): makespan and model switches (a switch is a task
  whose model differs from the one its pod had loaded, counted from the pods' reported models and the tasks' status).
- burst: 10,000 tasks created at once on a runtime without pods: admission rate (the operator's admitted counter),
  operator memory and its growth per 1,000 tasks; then the tasks are marked finished (history) and the latency
  scenario runs again with that history present.
- scale_from_zero: first task of an idle runtime at 0 pods: first pod, pod Running, task Succeeded.

`python -m bench.run --profile DIR` also records py-spy profiles of the operator during the burst and the busy run.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import datetime as dt
import itertools
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from kubernetes.client import CoordinationV1Api, CoreV1Api, CustomObjectsApi

from bench.observe import Observer, load_average, ms_stats, rss_mib, urlopen_text, wait_rss_settled
from bench.report import table
from sdtask.checkpoints import same_checkpoint
from sdtask.constants import ANNOTATION_MODEL, GROUP, VERSION
from sdtask.devcluster.nodes import NodePool
from sdtask.devcluster.sidecars import StandinTiming
from sdtask.devcluster.stack import DevStack
from sdtask.devcluster.system import LocalSystem
from sdtask.devcluster.waiting import wait_for
from sdtask.modelreport import LEASE_SELECTOR
from sdtask.standin.weights import write_checkpoint

RESULTS = Path(__file__).resolve().parent / "results.json"
TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
PHASES = ("Pending", "Scheduled", "Running", "Succeeded")
# One pool with room for every runtime of the run at once (kwok nodes cost nothing).
POOLS = (NodePool(name="bench", nodes=2, gpus_per_node=16, cpu="64", memory="256Gi", pods=200),)
CHECKPOINTS = [f"model-{index}.safetensors" for index in range(8)]

TARGETS = {
    "latency_p50_ms": 50,
    "latency_p99_ms": 150,
    "busy_fraction": 0.95,
    "switch_makespan_s": 24,
    "switches": 10,
    "fifo_over_policy": 3.0,
    "pod_ms_per_task": 100,
    "api_requests_per_task": 7,
    "burst_admitted_within_s": 60,
    "operator_rss_mib": 250,
}


class Bench:
    def __init__(self, stack: DevStack, system: LocalSystem, namespace: str, profile_dir: Path | None) -> None:
        self.stack, self.system, self.namespace = stack, system, namespace
        self.client = stack.api_client()
        self.core, self.custom = CoreV1Api(self.client), CustomObjectsApi(self.client)
        self.coordination = CoordinationV1Api(self.client)  # the agents report their loaded model in Leases
        self.local = threading.local()
        self.created: dict[str, float] = {}
        self.observer = Observer(stack, namespace)
        self.profile_dir = profile_dir

    # --- objects ------------------------------------------------------------------------------------------------------
    def _thread_custom(self) -> CustomObjectsApi:
        if not hasattr(self.local, "custom"):
            self.local.custom = CustomObjectsApi(self.stack.api_client())
        return self.local.custom

    def runtime(self, name: str, *, namespace: str | None = None, timing: StandinTiming, **spec: Any) -> None:
        self.system.sidecars.timings[name] = timing
        # The runtime's models volume, pre-loaded with loadable checkpoints (all eight: dynamic runtimes use them).
        folder = self.system.sidecars.models_dir(namespace or self.namespace, name)
        for checkpoint in CHECKPOINTS:
            write_checkpoint(folder / checkpoint)
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "SDRuntime",
            "metadata": {"name": name},
            "spec": {
                "image": "registry.example.com/sd-webui:1",
                "checkpoint": CHECKPOINTS[0],
                "placement": {"nodeSelector": {"sdtask.io/pool": "bench"}, "tolerations": [TOLERATION]},
                "output": {"bucket": self.stack.bucket},
                **spec,
            },
        }
        self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace or self.namespace, "sdruntimes", body)

    def delete_runtime(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, "sdruntimes", name)
        wait_for(lambda: not self.pods(name), 120, f"the pods of {name} to go")

    def task(self, name: str, runtime: str, model: str | None = None, namespace: str | None = None) -> None:
        content: dict[str, Any] = {"prompt": name, "steps": 1, "width": 64, "height": 64}
        if model:
            content["alwayson_scripts"] = {"sd_model_checkpoint": model}
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "SDTask",
            "metadata": {"name": name},
            "spec": {
                "task": {
                    "metadata": {"id": name, "runtime": runtime, "tasktype": "text-to-image", "prefix": "bench"},
                    "content": content,
                }
            },
        }
        self.created[name] = time.monotonic()
        self._thread_custom().create_namespaced_custom_object(
            GROUP, VERSION, namespace or self.namespace, "sdtasks", body
        )

    def create_many(
        self, tasks: list[tuple[str, str, str | None]], threads: int = 8, namespace: str | None = None
    ) -> None:
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda t: self.task(t[0], t[1], t[2], namespace), tasks))

    def pods(self, runtime: str, namespace: str | None = None) -> list[Any]:
        selector = f"sdtask.io/runtime={runtime}"
        return list(self.core.list_namespaced_pod(namespace or self.namespace, label_selector=selector).items)

    def wait_ready(self, runtime: str, count: int) -> None:
        """Pods Running and their agents up (an agent reports its pod's loaded model once it runs)."""

        def ready() -> bool:
            pods = [p for p in self.pods(runtime) if p.status.phase == "Running" and not p.metadata.deletion_timestamp]
            leases = self.coordination.list_namespaced_lease(self.namespace, label_selector=LEASE_SELECTOR).items
            reported = {
                lease.metadata.name for lease in leases if (lease.metadata.annotations or {}).get(ANNOTATION_MODEL)
            }
            return len([p for p in pods if p.metadata.name in reported]) == count

        wait_for(ready, 120, f"{count} ready pods of {runtime}", interval=0.2)

    def wait_loaded(self, runtime: str, count: int) -> dict[str, str]:
        """Dynamic runtime: pods Running with their Web UI done loading its first checkpoint (the stand-in logs
        it; the agent may have asked before the load ended). Returns pod -> loaded model."""
        pattern = re.compile(r"loaded (\S+) \[")

        def loaded() -> dict[str, str] | None:
            pods = [p for p in self.pods(runtime) if p.status.phase == "Running" and not p.metadata.deletion_timestamp]
            found = {}
            for pod in pods:
                log = self.system.sidecars.workdir / "pods" / self.namespace / pod.metadata.name / "webui.log"
                match = pattern.search(log.read_text()) if log.exists() else None
                if match:
                    found[pod.metadata.name] = match.group(1)
            return found if len(found) == count else None

        return wait_for(loaded, 120, f"{count} pods of {runtime} with a model loaded", interval=0.2)

    # --- API server request counts ------------------------------------------------------------------------------------
    def request_counts(self) -> dict[tuple[str, str, str], float]:
        response = self.client.call_api(
            "/metrics", "GET", auth_settings=["BearerToken"], _preload_content=False, _return_http_data_only=True
        )
        counts: dict[tuple[str, str, str], float] = collections.defaultdict(float)
        for line in response.data.decode().splitlines():
            if not line.startswith("apiserver_request_total{"):
                continue
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line[: line.rindex("}")]))
            key = (labels.get("resource", ""), labels.get("subresource", ""), labels.get("verb", ""))
            counts[key] += float(line.rsplit(" ", 1)[1])
        return counts

    # --- scenarios ----------------------------------------------------------------------------------------------------
    def latency(self, runtime: str, rounds: int, prefix: str) -> dict[str, Any]:
        names = []
        for index in range(rounds):
            name = f"{prefix}-{index}"
            self.task(name, runtime)
            self.observer.wait_finished([name], 60)
            names.append(name)
        steps: dict[str, list[float]] = collections.defaultdict(list)
        order = ("created", *PHASES)
        for name in names:
            times = {"created": self.created[name], **self.observer.seen[name]}
            present = [p for p in order if p in times]
            for before, after in itertools.pairwise(present):
                steps[f"{before} -> {after}"].append(times[after] - times[before])
            steps["created -> Succeeded"].append(times["Succeeded"] - times["created"])
        return {"rounds": rounds, "pods": 4, "service_seconds": 0.0, **{k: ms_stats(v) for k, v in steps.items()}}

    def api_requests(self, runtime: str, count: int = 200) -> dict[str, Any]:
        names = [f"api-{index}" for index in range(count)]
        before = self.request_counts()
        began = time.monotonic()
        self.create_many([(n, runtime, None) for n in names])
        self.observer.wait_finished(names, 300)
        makespan = max(self.observer.seen[n]["Succeeded"] for n in names) - began
        after = self.request_counts()
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        per_task = {
            f"{res}{'/' + sub if sub else ''} {verb}": round(v / count, 2)
            for (res, sub, verb), v in sorted(delta.items())
            if v and verb not in ("WATCH", "LIST")
        }
        task_requests = sum(
            v
            for (res, _sub, verb), v in delta.items()
            if res in ("sdtasks", "events") and verb not in ("WATCH", "LIST")
        )
        return {
            "tasks": count,
            "pods": 4,
            "makespan_seconds": round(makespan, 2),
            "pod_ms_per_task": round(4 * makespan / count * 1000, 1),
            "api_requests_per_task": round(task_requests / count, 2),
            "by_resource_per_task": per_task,
        }

    def busy(self, pods: int = 8, count: int = 160, service: float = 0.5) -> dict[str, Any]:
        self.runtime("busy", timing=StandinTiming(0.0, service), scaling={"minReplicas": pods, "maxReplicas": pods})
        self.wait_ready("busy", pods)
        names = [f"busy-{index}" for index in range(count)]
        profiler = self.profile("busy", 20)
        began = time.monotonic()
        self.create_many([(n, "busy", None) for n in names])
        self.observer.wait_finished(names, 300)
        makespan = max(self.observer.seen[n]["Succeeded"] for n in names) - began
        self.finish_profile(profiler)
        self.delete_runtime("busy")
        return {
            "pods": pods,
            "tasks": count,
            "service_seconds": service,
            "makespan_seconds": round(makespan, 2),
            "ideal_makespan_seconds": count * service / pods,
            "busy_fraction": round(count * service / (pods * makespan), 3),
        }

    def switching(self, policy: str, pods: int = 4, count: int = 64) -> dict[str, Any]:
        name = f"switch-{policy}"
        self.runtime(
            name,
            timing=StandinTiming(load_delay=5.0, image_delay=0.5),
            dynamicModel=True,
            scaling={"minReplicas": pods, "maxReplicas": pods},
            scheduling={"policy": policy},
        )
        initial = self.wait_loaded(name, pods)
        names = [f"{name}-{index}" for index in range(count)]
        tasks = [(n, name, CHECKPOINTS[index % len(CHECKPOINTS)]) for index, n in enumerate(names)]
        began = time.monotonic()
        for task in tasks:  # in order: round-robin arrival is the point of this scenario
            self.task(*task)
        self.observer.wait_finished(names, 400)
        makespan = max(self.observer.seen[n]["Succeeded"] for n in names) - began
        by_pod: dict[str, list[tuple[float, str]]] = collections.defaultdict(list)
        for n in names:
            status = self.observer.final[n]
            by_pod[status["pod"]].append((self.observer.seen[n].get("Running", 0.0), status["model"]))
        switches = 0
        for pod, runs in by_pod.items():
            loaded = initial.get(pod)
            for _, model in sorted(runs):
                if not same_checkpoint(model, loaded):
                    switches += 1
                loaded = model
        self.delete_runtime(name)
        return {
            "policy": policy,
            "pods": pods,
            "tasks": count,
            "checkpoints": len(CHECKPOINTS),
            "switch_seconds": 5.0,
            "image_seconds": 0.5,
            "makespan_seconds": round(makespan, 2),
            "switches": switches,
        }

    def burst(self, count: int = 10_000) -> dict[str, Any]:
        namespace = f"{self.namespace}-burst"
        self.core.create_namespace({"metadata": {"name": namespace}})
        # An external scaler owns replicas and keeps them at 0: the queue only grows, nothing runs.
        self.runtime(
            "burst",
            namespace=namespace,
            timing=StandinTiming(0.0, 0.0),
            scaling={"minReplicas": 0, "maxReplicas": 1, "externalScaler": True},
        )
        operator = self.system.operator.pid
        rss_before = rss_mib(operator)
        samples: list[tuple[float, float, float]] = []  # (seconds, admitted, rss)
        stop = threading.Event()
        began = time.monotonic()

        def sample() -> None:
            while not stop.is_set():
                samples.append((time.monotonic() - began, self.admitted(namespace), rss_mib(operator)))
                stop.wait(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        profiler = self.profile("burst", 60)
        names = [f"b-{index}" for index in range(count)]
        self.create_many([(n, "burst", None) for n in names], threads=16, namespace=namespace)
        created_seconds = time.monotonic() - began
        try:
            # Two minutes at most: the figure's target is one, and the run must end within 15 minutes.
            wait_for(lambda: self.admitted(namespace) >= count, 120, f"{count} tasks admitted", interval=0.5)
            admitted_seconds = time.monotonic() - began
        except AssertionError:
            admitted_seconds = float("inf")
        stop.set()
        sampler.join()
        self.finish_profile(profiler)
        rss_queued = rss_mib(operator)
        # Growth per 1,000 tasks: least squares of resident memory over tasks admitted, during the burst.
        points = [(a, r) for _, a, r in samples if a > 0]
        slope = 0.0
        if len(points) > 2:
            mean_a = statistics.fmean(a for a, _ in points)
            mean_r = statistics.fmean(r for _, r in points)
            var = sum((a - mean_a) ** 2 for a, _ in points)
            slope = sum((a - mean_a) * (r - mean_r) for a, r in points) / var * 1000 if var else 0.0
        # The burst becomes history: every task finished (as an agent would have written it).
        finished_began = time.monotonic()
        self.finish_all(namespace, names)
        finish_seconds = time.monotonic() - finished_began
        rss_history = wait_rss_settled(operator)
        return {
            "tasks": count,
            "created_seconds": round(created_seconds, 1),
            "admitted_seconds": round(admitted_seconds, 1),
            "admission_rate_per_second": round(
                max(a for _, a, _ in samples) / min(admitted_seconds, samples[-1][0]), 1
            ),
            "admitted_after_60s": max((a for s, a, _ in samples if s <= 60), default=0),
            "operator_rss_mib": {"before": rss_before, "queued": rss_queued, "history": rss_history},
            "rss_growth_mib_per_1000_tasks": round(slope, 2),
            "history_written_seconds": round(finish_seconds, 1),
            "namespace": namespace,
        }

    def finish_all(self, namespace: str, names: list[str]) -> None:
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        status = {"phase": "Succeeded", "reason": "Completed", "message": "bench history", "completionTime": now}

        def finish(name: str) -> None:
            self._thread_custom().patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, "sdtasks", name, {"status": status}
            )

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(finish, names))

    def admitted(self, namespace: str) -> float:
        text = urlopen_text(self.system.metrics_url)
        total = 0.0
        for line in text.splitlines():
            if line.startswith("sdtask_tasks_admitted_total{") and f'namespace="{namespace}"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    def scale_from_zero(self, rounds: int = 3) -> dict[str, Any]:
        self.runtime(
            "cold",
            timing=StandinTiming(0.0, 0.0),
            scaling={"minReplicas": 0, "maxReplicas": 1, "scaleDownDelaySeconds": 0},
        )
        first_pod, running, succeeded = [], [], []
        for index in range(rounds):
            wait_for(lambda: not self.pods("cold"), 60, "the runtime to be at zero")
            seen: dict[str, float] = {}
            stop = threading.Event()

            def observe(seen: dict[str, float] = seen, stop: threading.Event = stop) -> None:
                core = CoreV1Api(self.stack.api_client())
                while not stop.is_set():
                    pods = core.list_namespaced_pod(self.namespace, label_selector="sdtask.io/runtime=cold").items
                    if pods:
                        seen.setdefault("created", time.monotonic())
                    if any(p.status.phase == "Running" for p in pods):
                        seen.setdefault("running", time.monotonic())
                    stop.wait(0.01)

            watcher = threading.Thread(target=observe, daemon=True)
            watcher.start()
            name = f"cold-{index}"
            self.task(name, "cold")
            self.observer.wait_finished([name], 60)

            def pod_running(seen: dict[str, float] = seen) -> bool:
                return "running" in seen

            wait_for(pod_running, 30, "the pod to run")
            stop.set()
            watcher.join()
            start = self.created[name]
            first_pod.append(seen["created"] - start)
            running.append(seen["running"] - start)
            succeeded.append(self.observer.seen[name]["Succeeded"] - start)
        self.delete_runtime("cold")
        return {
            "rounds": rounds,
            "first_pod_seconds": round(statistics.median(first_pod), 3),
            "pod_running_seconds": round(statistics.median(running), 3),
            "task_succeeded_seconds": round(statistics.median(succeeded), 3),
        }

    # --- profiling ----------------------------------------------------------------------------------------------------
    def profile(self, name: str, seconds: int) -> subprocess.Popen[bytes] | None:
        if self.profile_dir is None:
            return None
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        return subprocess.Popen(
            [
                str(Path(sys.executable).parent / "py-spy"),
                "record",
                "--pid",
                str(self.system.operator.pid),
                "--duration",
                str(seconds),
                "--rate",
                "50",
                "--format",
                "raw",
                "--output",
                str(self.profile_dir / f"{name}.txt"),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    @staticmethod
    def finish_profile(profiler: subprocess.Popen[bytes] | None) -> None:
        if profiler is not None:
            profiler.wait(timeout=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--profile", type=Path, default=None, help="record py-spy profiles of the operator here")
    parser.add_argument("--burst", type=int, default=10_000, help="tasks in the burst")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    started = time.monotonic()
    load = {"before": load_average()}
    # A history that outlives the run: the TTL must not delete the burst's tasks while they are measured.
    operator_env = {"SDTASK_FINISHED_TTL_SECONDS": "3600"}
    with DevStack(pools=POOLS) as stack, LocalSystem(stack, operator_env=operator_env) as system:
        namespace = f"bench-{uuid.uuid4().hex[:6]}"
        bench = Bench(stack, system, namespace, args.profile)
        bench.core.create_namespace({"metadata": {"name": namespace}})
        bench.observer.start()
        results: dict[str, Any] = {}

        def step(name: str, work: Any) -> Any:
            """One scenario; a failure is recorded as such and the run goes on to the next."""
            began = time.monotonic()
            try:
                value = work()
            except Exception as error:
                value = {"error": f"{type(error).__name__}: {error}"}
            print(f"[bench] {name}: {time.monotonic() - began:.1f}s {json.dumps(value)}", flush=True)
            return value

        bench.runtime("lat", timing=StandinTiming(0.0, 0.0), scaling={"minReplicas": 4, "maxReplicas": 4})
        bench.wait_ready("lat", 4)
        results["latency"] = step("latency", lambda: bench.latency("lat", 50, "lat"))
        results["api"] = step("api", lambda: bench.api_requests("lat"))
        results["busy"] = step("busy", bench.busy)
        results["switching"] = {
            "policy": step("switching (switch-aware)", lambda: bench.switching("switch-aware")),
            "fifo": step("switching (fifo)", lambda: bench.switching("fifo")),
        }
        results["scale_from_zero"] = step("scale_from_zero", bench.scale_from_zero)
        results["burst"] = step("burst", lambda: bench.burst(args.burst))
        results["latency_with_history"] = step("latency with history", lambda: bench.latency("lat", 30, "hist"))
        results["operator_rss_mib_end"] = rss_mib(system.operator.pid)
        bench.observer.stop.set()
    load["after"] = load_average()
    results["machine"] = {
        "cpus": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "load_average": load,
        "seconds": round(time.monotonic() - started, 1),
    }
    results["targets"] = TARGETS
    try:
        printed = table(results)
    except (KeyError, TypeError, ZeroDivisionError):  # a scenario failed: its error is in the results
        printed = "(no table: a scenario failed, see its error in the results)"
    results["table"] = printed.splitlines()
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(printed)
    print(f"written to {args.output} in {results['machine']['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
