"""One loop per SDRuntime: own its Deployment and Service, requeue lost tasks, dispatch, scale, report status.

The loop wakes on any change of its tasks, pods, Deployment or the runtime itself (and once a second for timers such
as back-off and the scale-down delay). Decisions come from pure functions; this module only gathers inputs and applies
results through the Kubernetes client.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from sdtask.api.task import CONDITION_SCHEDULED
from sdtask.clients.kube import Kube, is_conflict, is_not_found
from sdtask.completion import CallbackPolicy, end_failed_attempt, running_on
from sdtask.conditions import set_condition
from sdtask.config import OperatorSettings
from sdtask.constants import OPERATOR_NAME, POD_DELETION_COST, Phase
from sdtask.controller import metrics
from sdtask.controller.decisions import (
    ArrivalSlot,
    Claim,
    PodWork,
    SchedulingSettings,
    TaskCensus,
    arrival_pod,
    arrival_slots,
    busy_pods,
    comparable_status,
    needs_apply,
    pod_work,
    pods_to_drain,
    queue_settled_up_to,
    runtime_status,
    runtime_structure,
    scaling_policy,
    scheduling_settings,
    settled_claims,
    status_write_due,
    status_write_early,
    task_census,
)
from sdtask.controller.views import PodView, TaskView
from sdtask.deployment import build_agent_access, build_deployment, build_service, manifest_hash
from sdtask.logs import log_context
from sdtask.scaling import ScalingPolicy, demand, desired_replicas
from sdtask.scheduling import AheadTask, IdlePod, QueuedTask, plan_assignments, reclaims

log = logging.getLogger(__name__)

TICK_SECONDS = 1.0


@dataclass
class RuntimeState:
    """What one runtime's loop remembers between passes (lost on restart, rebuilt from the cluster)."""

    wake: asyncio.Event = field(default_factory=asyncio.Event)
    applied: dict[str, tuple[str, int]] = field(default_factory=dict)  # kind -> (manifest hash, generation seen)
    claims: dict[str, Claim] = field(default_factory=dict)  # task name -> its dispatch
    draining: set[str] = field(default_factory=set)  # pods picked for removal by a scale-down
    # An operator restart starts the scale-down delay afresh rather than scaling down at once.
    last_needed: dt.datetime | None = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    last_status: dict[str, Any] = field(default_factory=dict)
    last_status_at: float = 0.0
    # The places on pods a new task may be dispatched to on arrival, in its one admission write (see
    # decisions.arrival_slots): published at the end of a pass that left nothing queued, emptied when a pass starts
    # (a pass in progress decides itself) and as arrivals take them.
    slots: list[ArrivalSlot] = field(default_factory=list)
    # Arrivals of at most this priority need no pass of their own (see decisions.queue_settled_up_to); None: all do.
    settled_up_to: float | None = None
    writes: set[asyncio.Task[None]] = field(default_factory=set)  # dispatch writes in flight (see _dispatch)
    reporting: asyncio.Task[None] | None = None  # the status write in flight (see RuntimeLoop._report)

    def take_slot(self, task: str, model: str | None, now: dt.datetime) -> str | None:
        """A pod for a task just admitted, claimed at once (before its write: a pass meanwhile counts it)."""
        slot = arrival_pod(self.slots, model)
        if slot is None:
            # It waits in the queue now: no later arrival may pass it on a pod the next pass might give it.
            self.slots = []
            return None
        self.slots.remove(slot)
        self.claims[task] = Claim(slot.pod, model or slot.model, now, arriving=True)
        return slot.pod

    def give_back(self, task: str) -> None:
        """The arrival's write failed: it holds no pod."""
        self.claims.pop(task, None)

    def seen(self, task: str) -> None:
        """An event showed the task after its arrival write: from now on its absence from the index means it ended
        (a fast task may end before any pass sees it Scheduled), and its claim settles as any other."""
        claim = self.claims.get(task)
        if claim is not None and claim.arriving:
            self.claims[task] = dataclasses.replace(claim, arriving=False)


INITIAL_REPLICAS_MANAGER = f"{OPERATOR_NAME}-initial-replicas"


class RuntimeLoop:
    def __init__(self, kube: Kube, settings: OperatorSettings, state: RuntimeState, callbacks: CallbackPolicy) -> None:
        self.kube = kube
        self.settings = settings
        self.state = state
        self.callbacks = callbacks
        # The workloads of the last pass and their digests, by what they are built from: building and hashing the
        # Deployment every pass was a twentieth of the operator's CPU under load, for an answer that rarely changes.
        self._workloads: tuple[tuple[str, str, int | None], list[tuple[dict[str, Any], str]]] | None = None
        # The settings read from the spec through its models, by the spec's generation: read every pass, they were 3%
        # of the operator's CPU with 400 tasks on 4 pods (py-spy).
        self._spec_settings: tuple[tuple[str, int], ScalingPolicy, SchedulingSettings] | None = None

    async def reconcile(
        self,
        runtime: dict[str, Any],
        tasks: list[TaskView],
        pods: list[PodView],
        deployment_generation: int | None,
    ) -> int:
        """`tasks` are the runtime's unfinished tasks (the index holds no finished ones). Returns how many tasks this
        pass gave to pods."""
        self.state.slots = []  # this pass decides; arrivals meanwhile wait in the queue
        now = dt.datetime.now(dt.UTC)
        spec = runtime.get("spec") or {}
        self._forget_settled_claims(tasks, now)
        census = task_census(tasks, self.state.claims)
        if handled := await self._requeue_tasks_of_lost_pods(census.active, pods, now):
            # Neither running nor queued in this pass: the index shows them as they were until their write is seen.
            census = task_census([t for t in tasks if t.name not in handled], self.state.claims)
        live = [p for p in pods if not p.deleting]
        work = pod_work(census.active, self.state.claims, {p.name: p.model for p in live})
        busy = busy_pods(work)
        queued, running = census.queued, census.active
        policy, scheduling = self._settings_of(runtime)
        # Models matter only where pods switch them: on a static runtime every task fits every pod.
        dynamic = bool(spec.get("dynamicModel"))
        current = len(live)
        models = census.models if dynamic else 0
        if demand(len(queued), len(running), policy.tasks_per_replica, models) >= current:
            self.state.last_needed = now  # the current size is still needed: the scale-down delay starts over
        desired = desired_replicas(
            policy,
            queued=len(queued),
            running=len(running),
            busy_pods=len(busy & {p.name for p in live}),
            current=current,
            last_needed=self.state.last_needed,
            now=now,
            models=models,
        )
        external = bool((spec.get("scaling") or {}).get("externalScaler", False))
        if not external and desired < current:
            await self._pick_pods_to_remove(runtime, live, busy, current - desired)
        else:
            self.state.draining.clear()  # no scale-down (any more): every ready pod takes tasks again
        await self._apply_workloads(runtime, None if external else desired, deployment_generation)
        ready = {p.name for p in live if p.ready and p.name not in self.state.draining}
        # While pods are still coming (scaling up, or starting), nothing is assigned ahead to a busy pod: a new pod
        # will be idle sooner than a busy one.
        coming = any(not p.ready and p.name not in self.state.draining for p in live)
        depth = 1 if desired > current or coming else scheduling.depth
        assigned = await self._dispatch(scheduling, dynamic, queued, census.active, ready, work, depth, now)
        # Published before the status report, whose write an arrival would otherwise wait out in the queue.
        self.state.slots = arrival_slots(ready, work, assigned, dynamic, len(queued), depth)
        self.state.settled_up_to = self._settled_up_to(census, ready, work, assigned, depth)
        await self._report(runtime, desired, pods, census, work, now)
        metrics.observe_runtime(
            runtime["metadata"]["namespace"],
            runtime["metadata"]["name"],
            queued=len(queued),
            running=len(running),
            desired=desired,
            ready=sum(1 for p in live if p.ready),
            queued_by_model=census.queued_by_model,
        )
        return sum(assigned.values())

    def _settings_of(self, runtime: dict[str, Any]) -> tuple[ScalingPolicy, SchedulingSettings]:
        meta, spec = runtime["metadata"], runtime.get("spec") or {}
        generation = meta.get("generation")
        if not isinstance(generation, int):  # no generation to know a change by: read each time
            return scaling_policy(spec), scheduling_settings(spec)
        key = (str(meta.get("uid", "")), generation)
        if self._spec_settings is None or self._spec_settings[0] != key:
            self._spec_settings = (key, scaling_policy(spec), scheduling_settings(spec))
        return self._spec_settings[1], self._spec_settings[2]

    def _settled_up_to(
        self,
        census: TaskCensus,
        ready: Collection[str],
        work: Mapping[str, PodWork],
        assigned: Mapping[str, int],
        depth: int,
    ) -> float | None:
        ahead = [t for t in census.active if t.phase == Phase.SCHEDULED] + census.claimed
        shown = {t.name for t in census.active} | {t.name for t in census.claimed}
        if any(name not in shown for name in self.state.claims):
            return None  # an arrival's claim the index doesn't show yet: its priority is unknown
        return queue_settled_up_to(ready, work, assigned, len(census.queued), depth, [t.priority for t in ahead])

    # --- claims: dispatches the task index hasn't caught up with yet --------------------------------------------------
    def _forget_settled_claims(self, tasks: list[TaskView], now: dt.datetime) -> None:
        for name in settled_claims(self.state.claims, tasks, now):
            del self.state.claims[name]

    # --- workloads ----------------------------------------------------------------------------------------------------
    async def _apply_workloads(
        self, runtime: dict[str, Any], replicas: int | None, deployment_generation: int | None
    ) -> None:
        if replicas is None and deployment_generation is None:
            # An external scaler (KEDA, HPA) owns spec.replicas. Created without it, the Deployment would default to
            # one GPU pod; a one-time manager sets minReplicas at creation so ours never owns the field.
            initial = scaling_policy(runtime.get("spec") or {}).min_replicas
            await self.kube.apply(build_deployment(runtime, initial, self.settings), INITIAL_REPLICAS_MANAGER)
        for manifest, digest in self._built_workloads(runtime, replicas):
            kind = manifest["kind"]
            generation = deployment_generation if kind == "Deployment" else None
            if not needs_apply(kind, digest, self.state.applied.get(kind), generation):
                continue
            result = await self.kube.apply(manifest)
            self.state.applied[kind] = (digest, int(result.get("metadata", {}).get("generation") or 0))

    def _built_workloads(self, runtime: dict[str, Any], replicas: int | None) -> list[tuple[dict[str, Any], str]]:
        """The agents' access, the Deployment and the Service of this runtime with their digests; built again only
        when the runtime object (its resourceVersion) or the replicas changed."""
        metadata = runtime["metadata"]
        key = (str(metadata.get("uid", "")), str(metadata.get("resourceVersion", "")), replicas)
        if self._workloads is None or self._workloads[0] != key:
            deployment = build_deployment(runtime, replicas or 0, self.settings)
            if replicas is None:
                del deployment["spec"]["replicas"]
            access = build_agent_access(metadata["namespace"], self.settings.agent_service_account)
            built = [*access, deployment, build_service(runtime)]
            self._workloads = key, [(manifest, manifest_hash(manifest)) for manifest in built]
        return self._workloads[1]

    async def _pick_pods_to_remove(
        self, runtime: dict[str, Any], live: list[PodView], busy: set[str], count: int
    ) -> None:
        """Mark idle pods as the cheapest to delete, so the ReplicaSet never takes a busy one; stop feeding them.
        Only this pass's picks stop being fed: a pod an earlier pass picked that this one doesn't is used again."""
        picked = pods_to_drain(live, busy, count, self.state.draining)
        for pod in picked:
            if pod.name not in self.state.draining:
                await self.kube.annotate_pod(pod.namespace, pod.name, {POD_DELETION_COST: "-1000"})
        self.state.draining = {pod.name for pod in picked}
        for pod in live:
            if pod.name in busy:
                await self.kube.annotate_pod(pod.namespace, pod.name, {POD_DELETION_COST: "1000"})

    # --- tasks --------------------------------------------------------------------------------------------------------
    async def _requeue_tasks_of_lost_pods(
        self, active: list[TaskView], pods: list[PodView], now: dt.datetime
    ) -> set[str]:
        """A running task of a vanished pod ends its attempt (retried with back-off); a task only assigned ahead to
        a pod that vanished or is going away goes back to the queue at once, as it never started. Returns the names
        of the tasks handled, so this pass doesn't count them as running. `active`: the Scheduled and Running ones."""
        existing = {p.name for p in pods}
        leaving = {p.name for p in pods if p.deleting}
        handled: set[str] = set()
        for task in active:
            if not task.pod:
                continue
            try:
                if task.phase == Phase.SCHEDULED and (task.pod not in existing or task.pod in leaving):
                    await self._take_back(task, "PodLost", f"pod {task.pod} went away before the task started", now)
                    handled.add(task.name)
                elif task.phase == Phase.RUNNING and task.pod not in existing:
                    handled.add(task.name)
                    await self._end_lost_attempt(task)
            except Exception as error:
                if is_conflict(error) or is_not_found(error):
                    continue
                raise
        return handled

    async def _end_lost_attempt(self, task: TaskView) -> None:
        """Only while the task is still Running on that pod in that attempt, checked and written as one (the write
        carries the resourceVersion of the read that passed the check): a task the index showed late, that ended or
        moved on meanwhile (its success written just before the pod vanished), is never failed or run again."""
        body = await self.kube.get_task(task.namespace, task.name)
        still = running_on(task.pod, task.attempts)
        if not still.holds(body):
            return  # the index was behind; the task moved on
        await end_failed_attempt(
            self.kube,
            body,
            "PodLost",
            f"pod {task.pod} went away during attempt {task.attempts}",
            retryable=True,
            backoff_seconds=self.settings.retry_backoff_seconds,
            component=OPERATOR_NAME,
            policy=self.callbacks,
            expect=still,
        )

    async def _take_back(self, task: TaskView, reason: str, message: str, now: dt.datetime) -> None:
        """Back to the queue without counting an attempt: it never started. The resourceVersion guard fails (409)
        if the agent started it meanwhile."""
        conditions = set_condition(task.conditions, CONDITION_SCHEDULED, False, reason, message, now)
        await self.kube.write_task_status(
            task.namespace,
            task.name,
            {
                "phase": Phase.PENDING.value,
                "pod": "",
                "attempts": max(task.attempts - 1, 0),
                "reason": reason,
                "message": message,
                "conditions": conditions,
            },
            task.resource_version,
        )
        self.state.claims.pop(task.name, None)
        log.info("task %s/%s taken back from pod %s: %s", task.namespace, task.name, task.pod, message)

    async def _dispatch(
        self,
        scheduling: SchedulingSettings,
        dynamic: bool,
        queued: list[TaskView],
        active: list[TaskView],
        ready: Collection[str],
        work: Mapping[str, PodWork],
        depth: int,
        now: dt.datetime,
    ) -> dict[str, int]:
        """Assign queued tasks to the `ready` pods, up to `depth` tasks each (`active`: the Scheduled and Running
        ones; `dynamic`: the pods switch models); returns how many went to each pod."""
        if not queued:
            return {}
        slots = [
            IdlePod(pod, work[pod].model if dynamic else None, depth - work[pod].load, work[pod].load)
            for pod in sorted(ready)
            if pod in work
        ]
        ahead = [
            AheadTask(t.name, t.pod, t.priority, t.created)
            for t in active
            if t.phase == Phase.SCHEDULED and t.pod in work and work[t.pod].load > 1 and work[t.pod].running
        ]
        if not ahead and not any(s.free > 0 for s in slots):
            return {}  # nothing to decide: don't even sort the queue (it may hold thousands)
        queue = [QueuedTask(t.name, t.priority, t.created, t.model if dynamic else None, t.not_before) for t in queued]
        if ahead:
            await self._take_back_for_priority(queue, active, ahead, slots, now)
        if not any(s.free > 0 for s in slots):
            return {}
        views = {t.name: t for t in queued}
        plan = plan_assignments(
            queue,
            slots,
            now,
            policy=scheduling.policy,
            window=self.settings.affinity_window,
            starvation_limit=dt.timedelta(seconds=self.settings.starvation_limit_seconds),
            min_switch_tasks=scheduling.min_switch_tasks,
        )
        # The writes go on in the background, claimed first: the pass ends at once, and the next one (a pod that
        # freed meanwhile) needn't wait for them, as each takes a round trip and more under load. Pods concurrently;
        # one pod's tasks in plan order, one after the other: an idle agent starts the first task it sees, so a
        # lower-priority task dispatched beside a higher one must not reach it first.
        by_pod: dict[str, list[TaskView]] = {}
        for assignment in plan:
            task = views[assignment.task.name]
            by_pod.setdefault(assignment.pod.name, []).append(task)
            self.state.claims[task.name] = Claim(assignment.pod.name, task.model, now)
        for pod, mine in by_pod.items():
            writing = asyncio.create_task(self._assign_in_order(pod, mine, now))
            self.state.writes.add(writing)
            writing.add_done_callback(self.state.writes.discard)
        return {pod: len(mine) for pod, mine in by_pod.items()}

    async def _assign_in_order(self, pod: str, tasks: list[TaskView], now: dt.datetime) -> None:
        for task in tasks:
            await self._assign(task, pod, now)

    async def _take_back_for_priority(
        self,
        queue: list[QueuedTask],
        tasks: list[TaskView],
        ahead: list[AheadTask],
        slots: list[IdlePod],
        now: dt.datetime,
    ) -> None:
        """A higher-priority task never waits behind one assigned ahead to a busy pod: that one is taken back."""
        open_slots = sum(max(s.free, 0) for s in slots)
        views = {t.name: t for t in tasks}
        for taken in reclaims(queue, ahead, open_slots, now):
            try:
                await self._take_back(
                    views[taken.name], "Preempted", "taken back from its pod's queue for a higher-priority task", now
                )
            except Exception as error:
                if not (is_conflict(error) or is_not_found(error)):
                    raise

    async def _assign(self, task: TaskView, pod: str, now: dt.datetime) -> None:
        """One request: the status, guarded by the resourceVersion the index saw (a task that changed meanwhile is
        left for the next pass, as one whose write failed). The pod's agent watches the tasks whose status.pod names
        it. The task was claimed for the pod before (see _dispatch); a write that fails takes the claim back."""
        attempt = task.attempts + 1
        message = f"assigned to pod {pod} (attempt {attempt})"
        conditions = set_condition(task.conditions, CONDITION_SCHEDULED, True, "Assigned", message, now)
        try:
            await self.kube.write_task_status(
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
                task.resource_version,
            )
        except Exception as error:
            self.state.claims.pop(task.name, None)
            self.state.wake.set()  # the next pass decides again
            if not (is_conflict(error) or is_not_found(error)):
                log.warning("dispatch of task %s to pod %s failed: %s", task.name, pod, error)
            return
        waited = (now - task.created).total_seconds()
        metrics.task_dispatched(task.namespace, task.runtime, waited)
        with log_context(task=task.name):  # the daemon's context already names the namespace and runtime
            log.info("task %s %s after %.1fs in the queue", task.name, message, waited)

    # --- status -------------------------------------------------------------------------------------------------------
    async def _report(
        self,
        runtime: dict[str, Any],
        desired: int,
        pods: list[PodView],
        census: TaskCensus,
        work: Mapping[str, PodWork],
        now: dt.datetime,
    ) -> None:
        if self.state.reporting is not None and not self.state.reporting.done():
            # One status write at a time, in the background: awaited, it held up the pass (and the next one, which
            # feeds pods) for a round trip that takes a tenth of a second in a burst. A pass after it writes what
            # changed meanwhile.
            return
        structure = runtime_structure(runtime, desired, pods, now)
        since = time.monotonic() - self.state.last_status_at
        if not status_write_early(structure, self.state.last_status, since):
            return
        status = runtime_status(runtime, desired, pods, census, work, now, structure)
        comparable = comparable_status(status)
        if not status_write_due(comparable, self.state.last_status, since):
            return
        namespace, name = runtime["metadata"]["namespace"], runtime["metadata"]["name"]
        self.state.reporting = asyncio.create_task(self._write_status(namespace, name, status, comparable))

    async def _write_status(
        self, namespace: str, name: str, status: dict[str, Any], comparable: dict[str, Any]
    ) -> None:
        try:
            await self.kube.patch_runtime_status(namespace, name, status)
        except Exception as error:  # the next pass writes it again: only a written status counts as the last one
            if not is_not_found(error):
                log.warning("runtime %s/%s: writing its status failed: %s", namespace, name, error)
            return
        self.state.last_status = comparable
        self.state.last_status_at = time.monotonic()
