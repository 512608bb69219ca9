"""The per-runtime loop's decisions, pure: what each pod holds, which pods a scale-down drains, whether a manifest
needs applying, the runtime's status and conditions, and when that status is worth writing. `runtimes.RuntimeLoop`
gathers the inputs and applies the results."""

from __future__ import annotations

import datetime as dt
import heapq
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from sdtask.api.common import plain_json, tolerant_context
from sdtask.api.runtime import (
    CONDITION_DEGRADED,
    CONDITION_READY,
    CONDITION_SCALING,
    QUEUE_HEAD_LENGTH,
    ScalingSpec,
    SchedulingSpec,
)
from sdtask.checkpoints import same_checkpoint
from sdtask.conditions import set_condition
from sdtask.constants import ACTIVE_PHASES, Phase
from sdtask.controller.views import EPOCH, PodView, TaskView
from sdtask.scaling import ScalingPolicy
from sdtask.scheduling import Policy, QueuedTask, queue_position, queue_summary

CLAIM_TTL = dt.timedelta(seconds=30)
Part = TypeVar("Part", bound=BaseModel)
# Pods' busy/task fields change with every task; the status is rewritten at most this often for them alone.
STATUS_MIN_INTERVAL_SECONDS = 1.0
# The status fields whose change is written at once; the per-pod and per-task ones wait for the interval above.
STRUCTURAL_STATUS_FIELDS = ("observedGeneration", "desiredReplicas", "replicas", "readyReplicas", "conditions")


@dataclass(frozen=True)
class Claim:
    """A dispatch the task index has not shown yet: the task is taken, its pod has one more task."""

    pod: str
    model: str | None
    since: dt.datetime
    # Dispatched on arrival (see `arrival_pod`): not in the runtime's index until its first status write shows, so
    # its absence there does not mean it is gone.
    arriving: bool = False


def spec_part(model: type[Part], value: Any) -> Part:
    """A part of a runtime's spec through its model, so the defaults are the model's: unknown fields are dropped
    (a newer CRD), and a value the model refuses (an object stored before a schema change; the API server checks
    the same schema) gives the model's defaults rather than stopping the runtime's loop."""
    try:
        return model.model_validate(plain_json(value or {}), context=tolerant_context())
    except ValidationError:
        return model()


def scaling_policy(spec: Mapping[str, Any]) -> ScalingPolicy:
    return ScalingPolicy.from_spec(spec_part(ScalingSpec, spec.get("scaling")))


@dataclass(frozen=True)
class SchedulingSettings:
    policy: Policy
    depth: int  # tasks a pod may hold: the one it runs and those assigned ahead
    min_switch_tasks: int


def scheduling_settings(spec: Mapping[str, Any]) -> SchedulingSettings:
    scheduling = spec_part(SchedulingSpec, spec.get("scheduling"))
    return SchedulingSettings(
        policy=Policy(scheduling.policy),
        depth=1 + max(scheduling.tasks_ahead, 0),
        min_switch_tasks=max(scheduling.min_tasks_per_switch, 1),
    )


@dataclass(frozen=True)
class PodWork:
    """What a pod holds: its tasks (active or claimed), the one it runs, and the model it will have loaded."""

    load: int
    running: str
    model: str | None


@dataclass(frozen=True)
class TaskCensus:
    """A pass's unfinished tasks by what the loop does with them, from one walk over them (the queue may hold
    thousands, and a pass used to walk it once per question)."""

    queued: list[TaskView]  # Pending and not claimed by a dispatch in flight: what dispatch and scaling see
    claimed: list[TaskView]  # Pending, but dispatched by this operator (the index hasn't caught up yet)
    active: list[TaskView]  # Scheduled or Running
    models: int  # checkpoints the unfinished tasks ask for (dynamic runtimes scale on it)
    queued_by_model: dict[str, int]  # of `queued`, "" for "any model"
    pending_by_model: dict[str, int]  # of `queued` and `claimed` (the runtime status counts every Pending task)


def task_census(tasks: list[TaskView], claims: Mapping[str, Claim]) -> TaskCensus:
    queued: list[TaskView] = []
    claimed: list[TaskView] = []
    active: list[TaskView] = []
    models: set[str] = set()
    queued_by_model: dict[str, int] = {}
    for task in tasks:
        if task.model:
            models.add(task.model)
        if task.phase == Phase.PENDING:
            if task.name in claims:
                claimed.append(task)
            else:
                queued.append(task)
                model = task.model or ""
                queued_by_model[model] = queued_by_model.get(model, 0) + 1
        elif task.phase in ACTIVE_PHASES:
            active.append(task)
    pending_by_model = dict(queued_by_model)
    for task in claimed:
        pending_by_model[task.model or ""] = pending_by_model.get(task.model or "", 0) + 1
    return TaskCensus(queued, claimed, active, len(models), queued_by_model, pending_by_model)


def pod_work(
    tasks: list[TaskView], claims: Mapping[str, Claim], loaded: Mapping[str, str | None]
) -> dict[str, PodWork]:
    """Per pod. The model is that of its last assigned task: a claim, else a task not started, else the running
    one, else what the pod reports loaded. Pure.

    An agent generates one task at a time and stores the outputs of the one before while the next generates: a pod
    with two Running tasks is generating one and finishing the other, which takes no slot (`tasksAhead` counts
    beyond the one it runs). Counted, it would leave the pod nothing assigned ahead just when it needs it."""
    load: dict[str, int] = {}
    running: dict[str, list[TaskView]] = {}
    ahead_model: dict[str, str | None] = {}
    for task in tasks:
        if task.phase not in ACTIVE_PHASES or not task.pod or task.name in claims:
            continue
        if task.phase == Phase.RUNNING:
            running.setdefault(task.pod, []).append(task)
            continue
        load[task.pod] = load.get(task.pod, 0) + 1
        if task.model is not None:
            ahead_model[task.pod] = task.model
    for pod, runs in running.items():
        load[pod] = load.get(pod, 0) + 1
        if pod not in ahead_model:
            # Two running: the model reported loaded is the generating one's (a switch comes before a generation).
            ahead_model[pod] = runs[0].model if len(runs) == 1 else loaded.get(pod) or runs[0].model
    for claim in sorted(claims.values(), key=lambda c: c.since):
        load[claim.pod] = load.get(claim.pod, 0) + 1
        if claim.model is not None:
            ahead_model[claim.pod] = claim.model
    pods = set(load) | set(loaded)
    return {
        pod: PodWork(load.get(pod, 0), _generating(running.get(pod, [])), ahead_model.get(pod) or loaded.get(pod))
        for pod in pods
    }


def _generating(runs: list[TaskView]) -> str:
    """The task a pod runs: of two Running ones, the one started last (the other is storing its outputs)."""
    return max(runs, key=lambda t: (t.start_time or EPOCH, t.name)).name if runs else ""


@dataclass(frozen=True)
class ArrivalSlot:
    """A free place on a ready pod a new task may take on arrival: the pod itself when it holds nothing, else a place
    in its queue behind what it holds. `model`: the model the pod will have loaded by then (dynamic runtimes; None on
    a static one). `behind`: a place behind work on a dynamic runtime, for a task of that model only (a task needing
    a switch is never queued ahead: a load can't overlap a generation, and the pod's queue would wait for it)."""

    pod: str
    model: str | None
    behind: bool = False


def arrival_slots(
    ready: Collection[str],
    work: Mapping[str, PodWork],
    assigned: Mapping[str, int],
    dynamic: bool,
    queued: int,
    depth: int,
) -> list[ArrivalSlot]:
    """The places new tasks may take on arrival, as a pass leaves them, idle pods first: none while any of the
    `queued` tasks it saw is still waiting (not assigned: backing off, or no pod for it), so an arrival never passes
    one; else on the ready, not draining (`ready` leaves those out) pods, each place up to `depth` tasks a pod may
    hold (the one it runs and those ahead: what a pass would give it), once this pass's `assigned` tasks are counted.
    On a dynamic runtime, no place behind the tasks this pass gave a pod: their model, which may be a switch, is not
    in `work` yet, and an arrival behind them must not force a switch back. Pure."""
    if sum(assigned.values()) < queued:
        return []
    places: list[tuple[int, str]] = []
    for pod in ready:
        if pod not in work:
            continue
        if dynamic and assigned.get(pod, 0):
            continue
        held = work[pod].load + assigned.get(pod, 0)
        places.extend((position, pod) for position in range(held, depth))
    return [
        ArrivalSlot(pod, work[pod].model, position > 0) if dynamic else ArrivalSlot(pod, None)
        for position, pod in sorted(places)
    ]


def queue_settled_up_to(
    ready: Collection[str],
    work: Mapping[str, PodWork],
    assigned: Mapping[str, int],
    queued: int,
    depth: int,
    ahead_priorities: Collection[int],
) -> float | None:
    """After a pass: the highest priority an arriving task may have and still need no pass of its own, or None when
    every arrival needs one. An arrival can only join the queue when the pass left tasks waiting, gave no pod a task
    (its tasks' priorities are not in `ahead_priorities` yet) and left no place free on a ready pod: the place that
    frees later comes with an event of its own (a task ending, a pod becoming ready), which wakes the loop. Only a
    task that outranks one assigned ahead needs the loop at once, to take that one back. Anything else waits for the
    next tick (at most a second, while the queue only grows): with thousands queued, a pass per arrival walked the
    queue for nothing and took the event loop from admission. Pure."""
    if queued == 0 or sum(assigned.values()) > 0:
        return None
    if any(work[pod].load < depth for pod in ready if pod in work):
        return None
    return min(ahead_priorities, default=math.inf)


def needs_prompt_pass(phase: Phase | None, priority: int, settled_up_to: float | None) -> bool:
    """Whether a task's event should wake its runtime's loop at once (see queue_settled_up_to): yes unless it is an
    arrival or a queued task (phase None or Pending) that can only join a settled queue. Pure."""
    if settled_up_to is None or phase not in (None, Phase.PENDING):
        return True
    return priority > settled_up_to


def arrival_pod(slots: list[ArrivalSlot], model: str | None) -> ArrivalSlot | None:
    """Where a task goes the moment it is admitted, skipping the queue: only when nothing waited in its runtime's
    queue at the end of the last pass (`slots` are then published, else empty), so no older or higher-priority task
    is passed over; the first slot that fits, so idle pods before queues. On a dynamic runtime only to a pod that will
    have its model loaded (else to one with no model yet, which loads one anyway): whether a switch is worth it is the
    loop's decision (`scheduling.plan_assignments`). Pure."""
    if model is None:
        return slots[0] if slots else None
    loaded = [slot for slot in slots if slot.model is not None and same_checkpoint(slot.model, model)]
    empty = [slot for slot in slots if slot.model is None and not slot.behind]
    choices = loaded or empty
    return choices[0] if choices else None


def busy_pods(work: Mapping[str, PodWork]) -> set[str]:
    return {pod for pod, held in work.items() if held.load > 0}


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
            conditions,
            CONDITION_READY,
            True,
            "ScaledToZero",
            "no pods while idle; a new task scales the runtime up",
            now,
        )
    elif ready >= max(desired, 1):
        conditions = set_condition(conditions, CONDITION_READY, True, "PodsReady", f"{ready} pod(s) ready", now)
    else:
        conditions = set_condition(
            conditions, CONDITION_READY, False, "PodsNotReady", f"{ready}/{desired} pod(s) ready", now
        )
    if len(live) != desired:
        direction = "ScalingUp" if len(live) < desired else "ScalingDown"
        conditions = set_condition(
            conditions, CONDITION_SCALING, True, direction, f"{len(live)} -> {desired} replicas", now
        )
    else:
        conditions = set_condition(conditions, CONDITION_SCALING, False, "Stable", f"{desired} replicas", now)
    failing = [p for p in live if p.init_failure]
    if failing:
        # The reason names the object (e.g. the checkpoint missing from models.s3Prefix); the pod never starts, so
        # tasks wait rather than run on a Web UI that fell back to another model.
        reason = "ModelMissing" if "ModelMissing:" in failing[0].init_failure else "InitFailed"
        message = f"{len(failing)} pod(s) can't start: {failing[0].name}: {failing[0].init_failure}"
        conditions = set_condition(conditions, CONDITION_DEGRADED, True, reason, message, now)
    elif pending:
        message = f"{len(pending)} pod(s) Pending: no GPU capacity in pool ({pending[0].unschedulable})"
        conditions = set_condition(conditions, CONDITION_DEGRADED, True, "Unschedulable", message, now)
    else:
        conditions = set_condition(conditions, CONDITION_DEGRADED, False, "AsExpected", "all pods placed", now)
    return conditions


def settled_claims(claims: Mapping[str, Claim], tasks: list[TaskView], now: dt.datetime) -> list[str]:
    """The claims the task index has caught up with (the task is no longer Pending, or gone) or that are too old to
    trust: the dispatch is either visible now or never happened."""
    if not claims:
        return []  # the usual case once dispatches settle: no pass over a queue that may hold thousands
    by_name = {t.name: t for t in tasks}
    settled = []
    for name, claim in claims.items():
        seen = by_name.get(name)
        gone = seen is None and not claim.arriving
        if gone or (seen is not None and seen.phase != Phase.PENDING) or now - claim.since > CLAIM_TTL:
            settled.append(name)
    return settled


def pods_to_drain(
    live: list[PodView], busy: Collection[str], count: int, draining: Collection[str] = ()
) -> list[PodView]:
    """The `count` pods a scale-down removes: idle ones only (a busy pod is never picked); the ones an earlier pass
    already picked first, then not-ready ones, then by name, so repeated passes pick the same pods (a pass that
    picked others would leave a pod fed no task that the scale-down doesn't remove)."""
    idle = sorted((p for p in live if p.name not in busy), key=lambda p: (p.name not in draining, p.ready, p.name))
    return idle[: max(count, 0)]


def needs_apply(kind: str, digest: str, applied: tuple[str, int] | None, deployment_generation: int | None) -> bool:
    """Whether a manifest must be applied again: never applied, changed since (another hash), or, for the
    Deployment, missing (no generation seen) or edited by someone else (its generation moved past what we applied)."""
    if applied is None or applied[0] != digest:
        return True
    if kind != "Deployment":
        return False
    return deployment_generation is None or deployment_generation != applied[1]


def runtime_structure(
    runtime: Mapping[str, Any], desired: int, pods: list[PodView], now: dt.datetime
) -> dict[str, Any]:
    """The status's structural fields (replicas and conditions): cheap, from the pods alone."""
    previous = (runtime.get("status") or {}).get("conditions")
    live = [p for p in pods if not p.deleting]
    return {
        "observedGeneration": runtime["metadata"].get("generation"),
        "desiredReplicas": desired,
        "replicas": len(live),
        "readyReplicas": sum(1 for p in live if p.ready),
        "conditions": runtime_conditions(previous, desired, pods, now),
    }


def runtime_status(
    runtime: Mapping[str, Any],
    desired: int,
    pods: list[PodView],
    census: TaskCensus,
    work: Mapping[str, PodWork],
    now: dt.datetime,
    structure: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The SDRuntime's status: replicas, queue counts, the head of the queue, each pod, and the conditions."""
    pending = [*census.queued, *census.claimed]
    # The head only, picked from the views: no sort, nor a QueuedTask per task, of a queue that may hold thousands.
    nearest = heapq.nsmallest(QUEUE_HEAD_LENGTH, pending, key=lambda t: queue_position(t.priority, t.created, t.name))
    head = queue_summary([QueuedTask(t.name, t.priority, t.created, t.model) for t in nearest], census.pending_by_model)
    return {
        **(structure or runtime_structure(runtime, desired, pods, now)),
        "queued": len(pending),
        "running": len(census.active),
        "queue": head,
        "pods": [
            {
                "name": p.name,
                "ready": p.ready,
                "busy": p.name in work and work[p.name].load > 0,
                "task": work[p.name].running if p.name in work else "",
                "model": p.model or "",
                "node": p.node,
                "phase": p.phase,
            }
            for p in sorted(pods, key=lambda p: p.name)
        ],
    }


def comparable_status(status: Mapping[str, Any]) -> dict[str, Any]:
    """The status without the conditions' times, to tell a change from a rewrite of the same."""
    comparable = dict(status)
    comparable["conditions"] = [
        {k: c[k] for k in ("type", "status", "reason", "message")} for c in status.get("conditions") or []
    ]
    return comparable


def status_write_early(structure: Mapping[str, Any], last: Mapping[str, Any], seconds_since_write: float) -> bool:
    """Whether the status could be written now at all, from its structural fields alone: when they are unchanged
    and the last write is under the interval old, only per-task fields could differ, and those wait. With
    thousands queued, computing the queue's summary is what a pass costs: this spares it."""
    if seconds_since_write >= STATUS_MIN_INTERVAL_SECONDS:
        return True
    return any(comparable_status(structure).get(k) != last.get(k) for k in STRUCTURAL_STATUS_FIELDS)


def status_write_due(comparable: Mapping[str, Any], last: Mapping[str, Any], seconds_since_write: float) -> bool:
    """Write when anything changed; when only the per-pod and per-task fields did, at most once per interval (the
    loop ticks every second, so a change always gets written)."""
    if comparable == last:
        return False
    structural_unchanged = all(comparable.get(k) == last.get(k) for k in STRUCTURAL_STATUS_FIELDS)
    return not structural_unchanged or seconds_since_write >= STATUS_MIN_INTERVAL_SECONDS


# A pass's rest after it fed no pod (see pass_rest).
PASS_REST_FROM_SECONDS = 0.005
PASS_REST_FACTOR = 8
PASS_REST_PER_TASK_SECONDS = 0.00001
MAX_PASS_REST_SECONDS = 0.25


def pass_rest(spent: float, fed: int, unfinished: int) -> float:
    """How long a runtime's loop rests after a pass that took `spent` seconds over `unfinished` tasks. A pass costs
    O(queue), and every task event wakes the loop: with thousands queued, back-to-back passes would take the event
    loop from admission. A pass that gave no pod a task rests several times as long as it took, and at least a
    moment per task it walked (10 ms per 1,000: a cheap pass over a long queue is no reason to run one per event),
    never more than a quarter second. The floor is next to nothing for a short queue, where a pod that frees is fed at
    once. A pass that fed pods never rests: the next pass may have pods to feed (the busy bench's pods waited a second
    for their second task while passes rested after dispatching). `spent` is the pass's own work: its dispatch and
    status writes go on in the background (a status write it awaited made a pass of 1 ms look like 100, and rest
    a quarter second, while pods freed in a burst)."""
    if fed:
        return 0.0
    rest = max(
        spent * PASS_REST_FACTOR if spent > PASS_REST_FROM_SECONDS else 0.0, unfinished * PASS_REST_PER_TASK_SECONDS
    )
    return min(rest, MAX_PASS_REST_SECONDS)
