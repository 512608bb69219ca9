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
import itertools
import json
import os
import platform
import statistics
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from kubernetes.client import CoreV1Api

from bench.cluster import CHECKPOINTS, POOLS, BenchCluster
from bench.cpu import CpuMeter
from bench.observe import cpu_model, load_average, ms_stats, reference_workload_ms, rss_mib, wait_rss_settled
from bench.report import table
from sdtask.checkpoints import same_checkpoint
from sdtask.devcluster.sidecars import StandinTiming
from sdtask.devcluster.stack import DevStack
from sdtask.devcluster.system import LocalSystem
from sdtask.devcluster.waiting import wait_for

RESULTS = Path(__file__).resolve().parent / "results.json"
PHASES = ("Pending", "Scheduled", "Running", "Succeeded")

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


class Bench(BenchCluster):
    """The scenarios, each returning its figures."""

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

    def idle(self, seconds: float = 10.0) -> dict[str, Any]:
        """Nothing to do, the 4 warm pods up: the stack's own background CPU (leases, controllers, probes, the
        agents' watches), which every figure pays on top of its tasks."""
        time.sleep(seconds)
        return {"seconds": seconds}

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
        # The operator, and one pod's agent and stand-in, and the S3 server: where the CPU of a task goes.
        pod = next(
            p for key, p in self.system.sidecars.pods.items() if key[0] == self.namespace and p.runtime == "busy"
        )
        s3_pid = self.stack.s3_server.process.pid if self.stack.s3_server else None
        profilers = [
            self.profile("busy", 20),
            self.profile("busy-agent", 20, pod.agent.pid),
            self.profile("busy-standin", 20, pod.webui.pid),
            self.profile("busy-s3", 20, s3_pid) if s3_pid else None,
        ]
        self.cpu_begin()
        began = time.monotonic()
        self.create_many([(n, "busy", None) for n in names])
        self.observer.wait_finished(names, 300)
        makespan = max(self.observer.seen[n]["Succeeded"] for n in names) - began
        for profiler in profilers:
            self.finish_profile(profiler)
        self.cpu_done()
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
        self.cpu_begin()
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
        self.cpu_done()
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

        def take_sample() -> None:
            samples.append((time.monotonic() - began, self.admitted(namespace), rss_mib(operator)))

        def sample() -> None:
            while not stop.is_set():
                take_sample()
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
        take_sample()  # the sampler sleeps between samples: its last one may predate the last admission
        self.finish_profile(profiler)
        admission_cpu = self.meter.stop() if self.meter else None  # creation and admission, before the history
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
            # CPU per component while the tasks were created and admitted (the history's writes not included).
            "create_and_admit_cpu": admission_cpu,
            "namespace": namespace,
        }

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


PHASE_NAMES = ("latency", "api", "busy", "switching", "scale_from_zero", "burst")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--profile", type=Path, default=None, help="record py-spy profiles of the operator here")
    parser.add_argument("--burst", type=int, default=10_000, help="tasks in the burst")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--only",
        default=",".join(PHASE_NAMES),
        help=f"comma-separated phases to run, of {','.join(PHASE_NAMES)} (burst includes the latency with history)",
    )
    args = parser.parse_args()
    only = {p.strip() for p in args.only.split(",") if p.strip()}
    if unknown := only - set(PHASE_NAMES):
        parser.error(f"unknown phase(s): {', '.join(sorted(unknown))}")
    started = time.monotonic()
    load = {"before": load_average()}
    reference_ms = reference_workload_ms()  # before the stack starts: the machine's own speed
    # A history that outlives the run: the TTL must not delete the burst's tasks while they are measured.
    operator_env = {"SDTASK_FINISHED_TTL_SECONDS": "3600"}
    with DevStack(pools=POOLS) as stack, LocalSystem(stack, operator_env=operator_env) as system:
        namespace = f"bench-{uuid.uuid4().hex[:6]}"
        bench = Bench(stack, system, namespace, args.profile)
        bench.core.create_namespace({"metadata": {"name": namespace}})
        bench.observer.start()
        results: dict[str, Any] = {}
        cpu: dict[str, Any] = {}

        def step(name: str, work: Any) -> Any:
            """One scenario; a failure is recorded as such and the run goes on to the next."""
            began = time.monotonic()
            bench.meter, bench.cpu = CpuMeter().start(), None
            try:
                value = work()
            except Exception as error:
                value = {"error": f"{type(error).__name__}: {error}"}
            measured = bench.cpu_done()
            cpu[name] = {"load_average": load_average(), **(measured or {})}
            tasks = value.get("tasks") or value.get("rounds") if isinstance(value, dict) else None
            if tasks and measured:
                used: dict[str, float] = measured["by_component_cpu_seconds"]
                cpu[name]["cpu_ms_per_task"] = {k: round(v / tasks * 1000, 1) for k, v in used.items()}
                cpu[name]["stack_cpu_ms_per_task"] = round(sum(used.values()) / tasks * 1000, 1)
            print(f"[bench] {name}: {time.monotonic() - began:.1f}s {json.dumps(value)}", flush=True)
            print(f"[bench] {name} cpu: {json.dumps(cpu[name])}", flush=True)
            return value

        if only & {"latency", "api", "burst"}:
            bench.runtime("lat", timing=StandinTiming(0.0, 0.0), scaling={"minReplicas": 4, "maxReplicas": 4})
            bench.wait_ready("lat", 4)
            results["idle"] = step("idle", bench.idle)
        if "latency" in only:
            results["latency"] = step("latency", lambda: bench.latency("lat", 50, "lat"))
        if "api" in only:
            results["api"] = step("api", lambda: bench.api_requests("lat"))
        if "busy" in only:
            results["busy"] = step("busy", bench.busy)
        if "switching" in only:
            results["switching"] = {
                "policy": step("switching (switch-aware)", lambda: bench.switching("switch-aware")),
                "fifo": step("switching (fifo)", lambda: bench.switching("fifo")),
            }
        if "scale_from_zero" in only:
            results["scale_from_zero"] = step("scale_from_zero", bench.scale_from_zero)
        if "burst" in only:
            results["burst"] = step("burst", lambda: bench.burst(args.burst))
            results["latency_with_history"] = step("latency with history", lambda: bench.latency("lat", 30, "hist"))
        results["operator_rss_mib_end"] = rss_mib(system.operator.pid)
        results["cpu"] = cpu
        bench.observer.stop.set()
    load["after"] = load_average()
    results["machine"] = {
        "cpus": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "reference_workload_ms": reference_ms,
        "python": platform.python_version(),
        "load_average": load,
        "seconds": round(time.monotonic() - started, 1),
    }
    results["targets"] = TARGETS
    try:
        printed = table(results)
    except (KeyError, TypeError, ZeroDivisionError):  # a scenario failed or was not run: its figures are above
        printed = "(no table: a scenario failed or was left out, see the results)"
    results["table"] = printed.splitlines()
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(printed)
    machine = results["machine"]
    print(f"{machine['cpus']} x {machine['cpu_model']}, reference workload {reference_ms} ms (lower is faster)")
    print(f"written to {args.output} in {machine['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
