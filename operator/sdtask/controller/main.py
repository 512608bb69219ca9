"""kopf registrations of the operator: a thin list; each use case lives in its own module.

Only event handlers, indices and daemons are used on SDTasks, never kopf's change-detecting handlers, so kopf never
copies a task's spec into an annotation (specs may be large) and never adds finalizers to tasks.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import logging
import sys
from dataclasses import dataclass, field
from typing import Any

import kopf

from sdtask import logs
from sdtask.clients.kube import THREADS, Kube, load_api_client
from sdtask.completion import CallbackPolicy
from sdtask.config import OperatorSettings
from sdtask.constants import (
    FINISHED_PHASES,
    GROUP,
    LABEL_MANAGED_BY,
    LABEL_RUNTIME,
    MANAGER,
    RUNTIME_PLURAL,
    TASK_KIND,
    TASK_PLURAL,
    VERSION,
)
from sdtask.controller import metrics
from sdtask.controller.admission_queue import AdmissionQueue
from sdtask.controller.decisions import needs_prompt_pass, pass_rest
from sdtask.controller.housekeeping import TaskKey, Timers, next_housekeeping
from sdtask.controller.recovery import recover
from sdtask.controller.runtimes import TICK_SECONDS, RuntimeLoop, RuntimeState
from sdtask.controller.tasks import admit_task, fail_orphans, fail_unadmitted, run_due
from sdtask.controller.views import PodView, TaskView, pod_view, runtime_info, task_view, with_models
from sdtask.deployment import deployment_name
from sdtask.modelreport import LEASE_GROUP, LEASE_PLURAL, LEASE_SELECTOR, LEASE_VERSION, reported_model
from sdtask.routing import RuntimeInfo

log = logging.getLogger(__name__)
API_SERVER_MAX_JSON_DEPTH = 10_000


RuntimeKey = tuple[str, str]  # namespace, runtime name


@dataclass(eq=False)
class OperatorMemo:
    """What the handlers share: one object for the whole operator (`sdtask operator` hands it to kopf.run).

    kopf gives each object's handlers a shallow copy of the operator's memo, made when it first sees the object, so
    a value set later on a copy (the housekeeper) stays in that object's copy: every task would start its own
    housekeeper. Copying returns this same memo instead (kopf's documented way to share one)."""

    config: OperatorSettings
    kube: Kube
    callbacks: CallbackPolicy
    timers: Timers = field(default_factory=Timers)
    runtimes: dict[RuntimeKey, RuntimeState] = field(default_factory=dict)
    outcomes: metrics.OutcomeRecorder = field(default_factory=metrics.OutcomeRecorder)
    housekeeper: asyncio.Task[None] | None = None
    admission_queue: AdmissionQueue | None = None

    @classmethod
    def for_settings(cls, config: OperatorSettings) -> OperatorMemo:
        return cls(
            config=config,
            kube=Kube(load_api_client()),
            callbacks=CallbackPolicy(
                allow_private=config.allow_private_callbacks, allowed_hosts=config.allowed_callback_hosts
            ),
        )

    def __copy__(self) -> OperatorMemo:
        return self

    def start_background(
        self, tasks_by_runtime: kopf.Index[RuntimeKey, TaskView], runtimes_by_namespace: kopf.Index[str, RuntimeInfo]
    ) -> AdmissionQueue:
        """The housekeeper and the admission workers, started by the first task event (see task_event). The indices
        are live views: both read them as they change."""
        if self.admission_queue is None:

            async def admit(body: dict[str, Any]) -> None:
                runtimes = list(runtimes_by_namespace.get(body["metadata"]["namespace"], []))
                await admit_task(self.kube, body, runtimes, self.callbacks, self)

            async def give_up(body: dict[str, Any], error: Exception) -> None:
                await fail_unadmitted(self.kube, body, error, self.callbacks)

            # Half the Kubernetes client's threads: the runtime loops' dispatches keep the other half.
            self.admission_queue = AdmissionQueue(admit, give_up, THREADS // 2, self.config.retry_backoff_seconds)
            self.admission_queue.start()
            self.housekeeper = asyncio.create_task(housekeeper(self, tasks_by_runtime, runtimes_by_namespace))
        return self.admission_queue

    def state(self, namespace: str, runtime: str) -> RuntimeState:
        return self.runtimes.setdefault((namespace, runtime), RuntimeState())

    def wake(self, namespace: str | None, runtime: str | None) -> None:
        if namespace and runtime:
            self.state(namespace, runtime).wake.set()

    def wake_for_task(self, type: str, view: TaskView) -> None:
        """A task's event wakes its runtime's loop, unless it only joins a queue no pod has room for (the loop's
        next tick counts it; see decisions.queue_settled_up_to)."""
        if not view.namespace or not view.runtime:
            return
        state = self.state(view.namespace, view.runtime)
        if type == "DELETED" or needs_prompt_pass(view.phase, view.priority, state.settled_up_to):
            state.wake.set()

    # tasks.ArrivalPods: a new task may go straight to a pod of its runtime, idle or with room ahead.
    def take(self, namespace: str, runtime: str, task: str, model: str | None) -> str | None:
        state = self.runtimes.get((namespace, runtime))  # no loop yet: no pod it knows to be idle
        return state.take_slot(task, model, dt.datetime.now(dt.UTC)) if state else None

    def give_back(self, namespace: str, runtime: str, task: str) -> None:
        state = self.runtimes.get((namespace, runtime))
        if state:
            state.give_back(task)


class RuntimesOnlyDiffBase(kopf.AnnotationsDiffBaseStorage):
    """kopf's diff base, for the resources that have change-detecting handlers (SDRuntimes), and not for SDTasks.

    kopf builds every object's "essence" (a deep copy of all but its status) on every event it sees, to detect changes
    for on.create/on.update handlers; SDTasks have none, yet the copy was a tenth of the operator's CPU under load
    (py-spy, 200 tasks on 4 pods). For them both sides are empty: no change is ever detected, none was looked for.
    """

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        if body.get("kind") == TASK_KIND:
            return kopf.BodyEssence()
        return super().build(body=body, extra_fields=extra_fields)

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        if body.get("kind") == TASK_KIND:
            return kopf.BodyEssence()
        return super().fetch(body=body)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: OperatorMemo, **_: Any) -> None:
    # kopf decodes each watch event with json.loads, which fails near 1,000 levels of nesting at the default limit:
    # one deeply nested task would then break the watch of every task. The API server accepts JSON up to 10,000
    # levels (Go's decoder limit), so the operator must decode that far; admission then refuses the task
    # (ContentTooDeep) at 64 levels, long before anything recursive of ours touches it.
    sys.setrecursionlimit(max(sys.getrecursionlimit(), API_SERVER_MAX_JSON_DEPTH * 2 + 1000))
    settings.persistence.finalizer = f"{GROUP}/operator"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = RuntimesOnlyDiffBase(prefix=GROUP)
    settings.posting.level = logging.WARNING  # our own Events tell the story; kopf's handler chatter would drown it
    settings.watching.server_timeout = 300
    # Only the agents' model Leases, filtered by the API server: every node's heartbeat is a Lease too.
    settings.watching.label_selectors[LEASE_GROUP, LEASE_PLURAL] = LEASE_SELECTOR
    settings.networking.request_timeout = 60
    # A quiet object's worker goes after 1 s instead of 5: a burst of thousands of new tasks holds fewer at once.
    settings.batching.idle_timeout = 1.0
    # The blocking Kubernetes client runs in threads: enough of them that a burst of admissions (bounded by
    # memo.admissions) and the dispatches never queue behind each other in asyncio's default pool (cores + 4 threads).
    asyncio.get_running_loop().set_default_executor(
        concurrent.futures.ThreadPoolExecutor(THREADS, thread_name_prefix="kube")
    )
    metrics.serve(memo.config.metrics_port)


@kopf.on.cleanup()
async def cleanup(memo: OperatorMemo, **_: Any) -> None:
    if memo.admission_queue:
        await memo.admission_queue.stop()
    task = memo.housekeeper
    if task:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# --- indices: the operator's in-memory view of the cluster ---------------------------------------------------------
def _unfinished(body: kopf.Body, **_: Any) -> bool:
    """Unfinished, or finished with its callback still Pending (recovery redelivers an abandoned one)."""
    status = body.get("status") or {}
    return status.get("phase") not in {p.value for p in FINISHED_PHASES} or (
        (status.get("callback") or {}).get("state") == "Pending"
    )


# Each index reaches the handlers as the keyword argument named by its id.
# Every handler is a coroutine, however little it does: kopf runs a plain function in a worker thread (a thread hop,
# a context copy and a shielded future per event), which the burst's profile showed among the operator's costs.
# Unfinished tasks only: finished ones need nothing but their TTL timer, and would make every pass and the operator's
# memory grow with the history. A filter, not a None result: kopf keeps an object's old entry when the handler
# returns None, and drops it when the object stops matching the filter.
@kopf.index(GROUP, VERSION, TASK_PLURAL, id="tasks_by_runtime", when=_unfinished)
async def index_task(body: kopf.Body, **_: Any) -> dict[RuntimeKey, TaskView]:
    view = task_view(body)
    return {(view.namespace, view.runtime): view}


@kopf.index(GROUP, VERSION, RUNTIME_PLURAL, id="runtimes_by_namespace")
async def index_runtime(body: kopf.Body, namespace: str | None, **_: Any) -> dict[str, RuntimeInfo]:
    return {namespace or "": runtime_info(body)}


@kopf.index("", "v1", "pods", id="pods_by_runtime", labels={LABEL_RUNTIME: kopf.PRESENT, LABEL_MANAGED_BY: MANAGER})
async def index_pod(body: kopf.Body, **_: Any) -> dict[RuntimeKey, PodView]:
    view = pod_view(body)
    return {(view.namespace, view.runtime): view}


# The model each pod's agent reports it has loaded, (pod name, model) (sdtask/modelreport.py): agents write no pod.
@kopf.index(
    LEASE_GROUP,
    LEASE_VERSION,
    LEASE_PLURAL,
    id="models_by_runtime",
    labels={LABEL_RUNTIME: kopf.PRESENT, LABEL_MANAGED_BY: MANAGER},
)
async def index_model(
    body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any
) -> dict[RuntimeKey, tuple[str, str | None]]:
    return {(namespace or "", labels[LABEL_RUNTIME]): reported_model(body)}


# The runtime's Deployment by its generation: the loop compares it with the generation it applied.
@kopf.index(
    "apps",
    "v1",
    "deployments",
    id="deployment_generations_by_runtime",
    labels={LABEL_RUNTIME: kopf.PRESENT, LABEL_MANAGED_BY: MANAGER},
)
async def index_deployment(
    body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any
) -> dict[RuntimeKey, int]:
    return {(namespace or "", labels[LABEL_RUNTIME]): int(body.get("metadata", {}).get("generation") or 0)}


# --- events: admit new tasks, wake the runtime loops ----------------------------------------------------------------
# kopf's handler protocols cannot name the indices (any handler may take any of them), so a handler that takes them as
# parameters does not match the protocol: hence the ignores on these two registrations.
@kopf.on.event(GROUP, VERSION, TASK_PLURAL)  # type: ignore[arg-type]  # indices as parameters, see above
async def task_event(
    type: str,
    body: kopf.Body,
    namespace: str | None,
    memo: OperatorMemo,
    tasks_by_runtime: kopf.Index[RuntimeKey, TaskView],
    runtimes_by_namespace: kopf.Index[str, RuntimeInfo],
    **_: Any,
) -> None:
    # Started by the first task event, not at startup: kopf calls resource handlers only once every index is filled,
    # and neither the housekeeper nor an admission may take a half-filled runtime index for deleted runtimes.
    admission_queue = memo.start_background(tasks_by_runtime, runtimes_by_namespace)
    view = task_view(body)
    logs.bind(namespace=namespace, task=view.name, runtime=view.runtime)  # kopf's worker task of this object
    memo.outcomes.observe(type, body)
    _set_timer(memo, type, view)
    if type != "DELETED" and view.phase is None:
        # Queued, not awaited: a waiting handler would hold kopf's worker of this task (see admission_queue).
        admission_queue.submit(view.uid, dict(body))
        return
    admission_queue.drop(view.uid)  # deleted, or admitted meanwhile
    if view.runtime and (state := memo.runtimes.get((view.namespace, view.runtime))):
        state.seen(view.name)  # the echo of an arrival's write, if it was one
    if view.phase not in FINISHED_PHASES or type == "DELETED":
        memo.wake_for_task(type, view)


def _set_timer(memo: OperatorMemo, type: str, view: TaskView) -> None:
    when, kind = (None, "") if type == "DELETED" else next_housekeeping(view, memo.config.finished_ttl_seconds)
    memo.timers.set((view.namespace, view.name), when, kind, view.uid)


@kopf.on.event("", "v1", "pods", labels={LABEL_RUNTIME: kopf.PRESENT, LABEL_MANAGED_BY: MANAGER})
async def pod_event(namespace: str | None, labels: kopf.Labels, memo: OperatorMemo, **_: Any) -> None:
    memo.wake(namespace, labels.get(LABEL_RUNTIME))


@kopf.on.event(
    LEASE_GROUP, LEASE_VERSION, LEASE_PLURAL, labels={LABEL_RUNTIME: kopf.PRESENT, LABEL_MANAGED_BY: MANAGER}
)
async def model_event(namespace: str | None, labels: kopf.Labels, memo: OperatorMemo, **_: Any) -> None:
    memo.wake(namespace, labels.get(LABEL_RUNTIME))


@kopf.on.event("apps", "v1", "deployments", labels={LABEL_RUNTIME: kopf.PRESENT, LABEL_MANAGED_BY: MANAGER})
async def deployment_event(namespace: str | None, labels: kopf.Labels, memo: OperatorMemo, **_: Any) -> None:
    memo.wake(namespace, labels.get(LABEL_RUNTIME))


@kopf.on.event(GROUP, VERSION, RUNTIME_PLURAL)
async def runtime_event(namespace: str | None, name: str, memo: OperatorMemo, **_: Any) -> None:
    memo.wake(namespace, name)


# --- one loop per runtime -------------------------------------------------------------------------------------------


# The backoff (just over one tick) lets the loop see `stopped` and clean up before kopf cancels it; kopf re-checks
# a stopping daemon only when the backoff ends, so a longer one would only delay the runtime's deletion.
@kopf.daemon(  # type: ignore[arg-type]  # indices as parameters, see task_event
    GROUP, VERSION, RUNTIME_PLURAL, cancellation_backoff=TICK_SECONDS * 1.5, cancellation_timeout=10
)
async def runtime_daemon(
    stopped: kopf.DaemonStopped,
    body: kopf.Body,
    namespace: str | None,
    name: str,
    memo: OperatorMemo,
    logger: kopf.Logger,
    tasks_by_runtime: kopf.Index[RuntimeKey, TaskView],
    pods_by_runtime: kopf.Index[RuntimeKey, PodView],
    deployment_generations_by_runtime: kopf.Index[RuntimeKey, int],
    models_by_runtime: kopf.Index[RuntimeKey, tuple[str, str | None]],
    **_: Any,
) -> None:
    namespace = namespace or ""  # SDRuntimes are namespaced; kopf's signature is generic
    logs.bind(namespace=namespace, runtime=name)  # the daemon is its own asyncio task: only its lines get these
    state = memo.state(namespace, name)
    loop = RuntimeLoop(memo.kube, memo.config, state, memo.callbacks)
    key = (namespace, name)
    failures = 0
    while not stopped:
        state.wake.clear()
        if body.get("metadata", {}).get("deletionTimestamp"):
            break
        fed = unfinished = 0
        began = asyncio.get_running_loop().time()
        try:
            generations = list(deployment_generations_by_runtime.get(key, []))
            tasks = list(tasks_by_runtime.get(key, []))
            unfinished = len(tasks)
            fed = await loop.reconcile(
                dict(body),
                tasks,
                with_models(list(pods_by_runtime.get(key, [])), dict(models_by_runtime.get(key, []))),
                generations[0] if generations else None,
            )
            failures = 0
        except Exception as error:  # a failed pass is retried; the loop itself must live on
            failures += 1
            logger.warning("runtime %s/%s: reconcile failed (%s); retrying", namespace, name, error)
            await asyncio.sleep(min(2**failures, 30))
        if rest := pass_rest(asyncio.get_running_loop().time() - began, fed, unfinished):
            await asyncio.sleep(rest)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(state.wake.wait(), timeout=TICK_SECONDS)
    deleted = stopped.reason is not None and bool(stopped.reason & kopf.DaemonStoppingReason.RESOURCE_DELETED)
    if deleted or body.get("metadata", {}).get("deletionTimestamp"):
        # Owner references would do this too, but the garbage collector notices a new CRD's deletions only after its
        # discovery resync (30 s and more); deleting here frees the GPUs at once.
        await memo.kube.delete_workloads(namespace, deployment_name(name))
    metrics.forget_runtime(namespace, name)
    memo.runtimes.pop(key, None)


# A floor on the housekeeper's sleep: timers a few milliseconds apart are served together, never by a busy loop.
MIN_HOUSEKEEPING_WAIT_SECONDS = 0.05


# --- housekeeping: deadlines, orphaned tasks, TTL -------------------------------------------------------------------
async def housekeeper(
    memo: OperatorMemo,
    tasks_by_runtime: kopf.Index[RuntimeKey, TaskView],
    runtimes_by_namespace: kopf.Index[str, RuntimeInfo],
) -> None:
    """TTLs and deadlines on timers (a pass costs what is due); orphans by a look at each runtime's queue every
    `housekeeping_interval_seconds` (a look per runtime, not per task)."""
    timers = memo.timers
    interval = memo.config.housekeeping_interval_seconds
    next_orphan_check = 0.0
    loop = asyncio.get_running_loop()
    while True:
        due: list[tuple[TaskKey, str, str]] = []  # a failed pass is not taken for a full batch (no sleep)
        try:
            now = dt.datetime.now(dt.UTC)
            due = timers.pop_due(now)
            if due:
                await run_due(memo.kube, due, memo.callbacks)
            if loop.time() >= next_orphan_check:
                next_orphan_check = loop.time() + interval
                # Crash leftovers (stranded dispatches, abandoned callbacks): over the index, which holds no settled
                # finished task.
                indexed = [view for key in list(tasks_by_runtime) for view in tasks_by_runtime.get(key, [])]
                await recover(memo.kube, indexed, memo.callbacks, now)
                runtimes = {
                    ns: {r.name for r in runtimes_by_namespace.get(ns, [])} for ns in list(runtimes_by_namespace)
                }
                gone = [k for k in list(tasks_by_runtime) if k[1] and k[1] not in runtimes.get(k[0], set())]
                if gone:
                    queues = {key: list(tasks_by_runtime.get(key, [])) for key in gone}
                    await fail_orphans(memo.kube, queues, runtimes, memo.callbacks)
        except Exception as error:  # keep housekeeping alive through API hiccups
            log.warning("housekeeping pass failed: %s", error)
        if due and len(due) >= 256:
            continue  # more are due: no sleep
        earliest = timers.next_at()
        wait = min(interval, next_orphan_check - loop.time())
        if earliest is not None:
            wait = min(wait, (earliest - dt.datetime.now(dt.UTC)).total_seconds())
        wait = max(wait, MIN_HOUSEKEEPING_WAIT_SECONDS)
        # A plain sleep: a timer set meanwhile waits at most `interval` (TTLs and deadlines need no finer grain), and
        # a wait_for on an Event per pass showed up in the burst's profile.
        await asyncio.sleep(wait)
