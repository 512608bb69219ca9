"""One loop per SDRuntime: own its Deployment and Service, requeue lost tasks, dispatch, scale, report status.

The loop wakes on any change of its tasks, pods, Deployment or the runtime itself (and once a second for timers such
as back-off and the scale-down delay). Decisions come from pure functions; this module only gathers inputs and applies
results through the Kubernetes client.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sdtask.api.runtime import QUEUE_HEAD_LENGTH
from sdtask.clients.kube import Kube, is_conflict, is_not_found
from sdtask.completion import CallbackPolicy, end_failed_attempt
from sdtask.conditions import set_condition
from sdtask.config import OperatorSettings
from sdtask.constants import ACTIVE_PHASES, LABEL_POD, POD_DELETION_COST, Phase
from sdtask.controller import metrics
from sdtask.controller.views import PodView, TaskView
from sdtask.deployment import build_agent_access, build_deployment, build_service, manifest_hash
from sdtask.logs import log_context
from sdtask.scaling import ScalingPolicy, demand, desired_replicas
from sdtask.scheduling import IdlePod, QueuedTask, plan_assignments, queue_summary

log = logging.getLogger(__name__)
COMPONENT = "sdtask-operator"

TICK_SECONDS = 1.0


@dataclass
class RuntimeState:
    """What one runtime's loop remembers between passes (lost on restart, rebuilt from the cluster)."""

    wake: asyncio.Event = field(default_factory=asyncio.Event)
    applied: dict[str, tuple[str, int]] = field(default_factory=dict)  # kind -> (manifest hash, generation seen)
    # pod -> (task, when): dispatched, but the task index has not shown it yet; such a pod is busy, such a task taken.
    claims: dict[str, tuple[str, dt.datetime]] = field(default_factory=dict)
    draining: set[str] = field(default_factory=set)  # pods picked for removal by a scale-down
    # An operator restart starts the scale-down delay afresh rather than scaling down at once.
    last_needed: dt.datetime | None = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    last_status: dict[str, Any] = field(default_factory=dict)


def scaling_policy(spec: Mapping[str, Any]) -> ScalingPolicy:
    scaling = spec.get("scaling") or {}
    return ScalingPolicy(
        min_replicas=int(scaling.get("minReplicas", 0)),
        max_replicas=int(scaling.get("maxReplicas", 1)),
        tasks_per_replica=int(scaling.get("tasksPerReplica", 1)),
        scale_down_delay=dt.timedelta(seconds=float(scaling.get("scaleDownDelaySeconds", 300))),
    )


CLAIM_TTL = dt.timedelta(seconds=30)
INITIAL_REPLICAS_MANAGER = "sdtask-operator-initial-replicas"


def queued_by_model(queued: list[TaskView]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for task in queued:
        counts[task.model or ""] = counts.get(task.model or "", 0) + 1
    return counts


def busy_pods(tasks: list[TaskView], claims: Mapping[str, object]) -> set[str]:
    return {t.pod for t in tasks if t.phase in ACTIVE_PHASES and t.pod} | set(claims)


def runtime_conditions(
    previous: list[dict[str, Any]] | None, desired: int, pods: list[PodView], now: dt.datetime
) -> list[dict[str, Any]]:
    """Ready, Scaling and Degraded, each with a reason a person can act on. Pure."""
    live = [p for p in pods if not p.deleting]
    ready = sum(1 for p in live if p.ready)
    pending = [p for p in live if p.unschedulable]
    conditions = previous
    if desired == 0 and not live:
        conditions = set_condition(
            conditions, "Ready", True, "ScaledToZero", "no pods while idle; a new task scales the runtime up", now
        )
    elif ready >= max(desired, 1):
        conditions = set_condition(conditions, "Ready", True, "PodsReady", f"{ready} pod(s) ready", now)
    else:
        conditions = set_condition(conditions, "Ready", False, "PodsNotReady", f"{ready}/{desired} pod(s) ready", now)
    if len(live) != desired:
        direction = "ScalingUp" if len(live) < desired else "ScalingDown"
        conditions = set_condition(conditions, "Scaling", True, direction, f"{len(live)} -> {desired} replicas", now)
    else:
        conditions = set_condition(conditions, "Scaling", False, "Stable", f"{desired} replicas", now)
    failing = [p for p in live if p.init_failure]
    if failing:
        # The reason names the object (e.g. the checkpoint missing from models.s3Prefix); the pod never starts, so
        # tasks wait rather than run on a Web UI that fell back to another model.
        reason = "ModelMissing" if "ModelMissing:" in failing[0].init_failure else "InitFailed"
        message = f"{len(failing)} pod(s) can't start: {failing[0].name}: {failing[0].init_failure}"
        conditions = set_condition(conditions, "Degraded", True, reason, message, now)
    elif pending:
        message = f"{len(pending)} pod(s) Pending: no GPU capacity in pool ({pending[0].unschedulable})"
        conditions = set_condition(conditions, "Degraded", True, "Unschedulable", message, now)
    else:
        conditions = set_condition(conditions, "Degraded", False, "AsExpected", "all pods placed", now)
    return conditions


class RuntimeLoop:
    def __init__(self, kube: Kube, settings: OperatorSettings, state: RuntimeState, callbacks: CallbackPolicy) -> None:
        self.kube = kube
        self.settings = settings
        self.state = state
        self.callbacks = callbacks

    async def reconcile(
        self,
        runtime: dict[str, Any],
        tasks: list[TaskView],
        pods: list[PodView],
        deployment_generation: int | None,
    ) -> None:
        now = dt.datetime.now(dt.UTC)
        spec = runtime.get("spec") or {}
        self._forget_settled_claims(tasks, now)
        await self._requeue_tasks_of_lost_pods(tasks, pods)
        busy = busy_pods(tasks, self.state.claims)
        claimed = {name for name, _ in self.state.claims.values()}
        queued = [t for t in tasks if t.phase == Phase.PENDING and t.name not in claimed]
        running = [t for t in tasks if t.phase in ACTIVE_PHASES]
        policy = scaling_policy(spec)
        live = [p for p in pods if not p.deleting]
        current = len(live)
        if demand(len(queued), len(running), policy.tasks_per_replica) >= current:
            self.state.last_needed = now  # the current size is still needed: the scale-down delay starts over
        desired = desired_replicas(
            policy,
            queued=len(queued),
            running=len(running),
            busy_pods=len(busy & {p.name for p in live}),
            current=current,
            last_needed=self.state.last_needed,
            now=now,
        )
        external = bool((spec.get("scaling") or {}).get("externalScaler", False))
        if not external and desired < current:
            await self._pick_pods_to_remove(runtime, live, busy, current - desired)
        await self._apply_workloads(runtime, None if external else desired, deployment_generation)
        await self._dispatch(runtime, queued, live, busy, now)
        await self._report(runtime, desired, pods, tasks, now)
        metrics.observe_runtime(
            runtime["metadata"]["namespace"],
            runtime["metadata"]["name"],
            queued=len(queued),
            running=len(running),
            desired=desired,
            ready=sum(1 for p in live if p.ready),
            queued_by_model=queued_by_model(queued),
        )

    # --- claims: dispatches the task index hasn't caught up with yet --------------------------------------------------
    def _forget_settled_claims(self, tasks: list[TaskView], now: dt.datetime) -> None:
        by_name = {t.name: t for t in tasks}
        for pod, (task_name, since) in list(self.state.claims.items()):
            seen = by_name.get(task_name)
            if seen is None or seen.phase != Phase.PENDING or now - since > CLAIM_TTL:
                del self.state.claims[pod]

    # --- workloads ----------------------------------------------------------------------------------------------------
    async def _apply_workloads(
        self, runtime: dict[str, Any], replicas: int | None, deployment_generation: int | None
    ) -> None:
        if replicas is None and deployment_generation is None:
            # An external scaler (KEDA, HPA) owns spec.replicas. Created without it, the Deployment would default to
            # one GPU pod; a one-time manager sets minReplicas at creation so ours never owns the field.
            initial = int((runtime.get("spec") or {}).get("scaling", {}).get("minReplicas", 0))
            await self.kube.apply(build_deployment(runtime, initial, self.settings), INITIAL_REPLICAS_MANAGER)
        deployment = build_deployment(runtime, replicas or 0, self.settings)
        if replicas is None:
            del deployment["spec"]["replicas"]
        namespace = runtime["metadata"]["namespace"]
        access = build_agent_access(namespace, self.settings.agent_service_account)
        manifests = [(m, None) for m in access] + [(deployment, deployment_generation), (build_service(runtime), None)]
        for manifest, generation in manifests:
            kind = manifest["kind"]
            digest = manifest_hash(manifest)
            applied = self.state.applied.get(kind)
            missing = kind == "Deployment" and deployment_generation is None
            edited = kind == "Deployment" and applied is not None and generation not in (None, applied[1])
            if applied and applied[0] == digest and not missing and not edited:
                continue
            result = await self.kube.apply(manifest)
            self.state.applied[kind] = (digest, int(result.get("metadata", {}).get("generation") or 0))

    async def _pick_pods_to_remove(
        self, runtime: dict[str, Any], live: list[PodView], busy: set[str], count: int
    ) -> None:
        """Mark idle pods as the cheapest to delete, so the ReplicaSet never takes a busy one; stop feeding them."""
        idle = sorted((p for p in live if p.name not in busy), key=lambda p: (p.ready, p.name))
        for pod in idle[:count]:
            if pod.name not in self.state.draining:
                await self.kube.annotate_pod(pod.namespace, pod.name, {POD_DELETION_COST: "-1000"})
                self.state.draining.add(pod.name)
        for pod in live:
            if pod.name in busy:
                await self.kube.annotate_pod(pod.namespace, pod.name, {POD_DELETION_COST: "1000"})
        self.state.draining &= {p.name for p in live}

    # --- tasks --------------------------------------------------------------------------------------------------------
    async def _requeue_tasks_of_lost_pods(self, tasks: list[TaskView], pods: list[PodView]) -> None:
        existing = {p.name for p in pods}
        for task in tasks:
            if task.phase not in ACTIVE_PHASES or not task.pod or task.pod in existing:
                continue
            try:
                body = await self.kube.get_task(task.namespace, task.name)
                if (body.get("status") or {}).get("pod") != task.pod:
                    continue  # the index was behind; the task moved on
                await end_failed_attempt(
                    self.kube,
                    body,
                    "PodLost",
                    f"pod {task.pod} went away during attempt {task.attempts}",
                    retryable=True,
                    backoff_seconds=self.settings.retry_backoff_seconds,
                    component=COMPONENT,
                    policy=self.callbacks,
                )
            except Exception as error:
                if is_conflict(error) or is_not_found(error):
                    continue
                raise

    async def _dispatch(
        self,
        runtime: dict[str, Any],
        queued: list[TaskView],
        live: list[PodView],
        busy: set[str],
        now: dt.datetime,
    ) -> None:
        idle = [
            IdlePod(p.name, p.model)
            for p in live
            if p.ready and p.name not in busy and p.name not in self.state.draining
        ]
        if not idle or not queued:
            return
        views = {t.name: t for t in queued}
        queue = [QueuedTask(t.name, t.priority, t.created, t.model, t.not_before) for t in queued]
        plan = plan_assignments(
            queue,
            idle,
            now,
            window=self.settings.affinity_window,
            starvation_limit=dt.timedelta(seconds=self.settings.starvation_limit_seconds),
        )
        for assignment in plan:
            await self._assign(views[assignment.task.name], assignment.pod.name, now)

    async def _assign(self, task: TaskView, pod: str, now: dt.datetime) -> None:
        attempt = task.attempts + 1
        message = f"assigned to pod {pod} (attempt {attempt})"
        # The agent may post "Started" before our "Scheduled" is posted: the event carries the time of assignment.
        assigned_at = dt.datetime.now(dt.UTC)
        try:
            current = await self.kube.get_task(task.namespace, task.name)
            status = current.get("status") or {}
            if status.get("phase") != Phase.PENDING.value:
                return
            conditions = set_condition(status.get("conditions"), "Scheduled", True, "Assigned", message, now)
            await self.kube.patch_task_status(
                task.namespace,
                task.name,
                {
                    "phase": Phase.SCHEDULED.value,
                    "pod": pod,
                    "attempts": attempt,
                    "notBefore": None,
                    "reason": "Assigned",
                    "message": message,
                    "conditions": conditions,
                },
                current["metadata"]["resourceVersion"],
            )
            # The agent of that pod watches this label; it acts once it sees status.pod naming its pod.
            await self.kube.patch_task_labels(task.namespace, task.name, {LABEL_POD: pod})
        except Exception as error:
            if is_conflict(error) or is_not_found(error):
                return
            raise
        self.state.claims[pod] = (task.name, now)
        waited = (now - task.created).total_seconds()
        metrics.task_dispatched(task.namespace, task.runtime, waited)
        with log_context(task=task.name):  # the daemon's context already names the namespace and runtime
            log.info("task %s %s after %.1fs in the queue", task.name, message, waited)
        await self.kube.post_event(current, "Normal", "Scheduled", message, COMPONENT, when=assigned_at)

    # --- status -------------------------------------------------------------------------------------------------------
    async def _report(
        self, runtime: dict[str, Any], desired: int, pods: list[PodView], tasks: list[TaskView], now: dt.datetime
    ) -> None:
        running_by_pod = {t.pod: t.name for t in tasks if t.phase in ACTIVE_PHASES and t.pod}
        previous = (runtime.get("status") or {}).get("conditions")
        live = [p for p in pods if not p.deleting]
        status = {
            "observedGeneration": runtime["metadata"].get("generation"),
            "desiredReplicas": desired,
            "replicas": len(live),
            "readyReplicas": sum(1 for p in live if p.ready),
            "queued": sum(1 for t in tasks if t.phase == Phase.PENDING),
            "running": sum(1 for t in tasks if t.phase in ACTIVE_PHASES),
            "queue": queue_summary(
                [QueuedTask(t.name, t.priority, t.created, t.model) for t in tasks if t.phase == Phase.PENDING],
                QUEUE_HEAD_LENGTH,
            ),
            "pods": [
                {
                    "name": p.name,
                    "ready": p.ready,
                    "busy": p.name in running_by_pod,
                    "task": running_by_pod.get(p.name, ""),
                    "model": p.model or "",
                    "node": p.node,
                    "phase": p.phase,
                }
                for p in sorted(pods, key=lambda p: p.name)
            ],
        }
        comparable = dict(status)
        status["conditions"] = runtime_conditions(previous, desired, pods, now)
        comparable["conditions"] = [
            {k: c[k] for k in ("type", "status", "reason", "message")} for c in status["conditions"]
        ]
        if comparable == self.state.last_status:
            return
        try:
            await self.kube.patch_runtime_status(runtime["metadata"]["namespace"], runtime["metadata"]["name"], status)
        except Exception as error:
            if is_not_found(error):
                return
            raise
        self.state.last_status = comparable
