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
from collections.abc import Callable, Coroutine
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
    TASK_PLURAL,
    VERSION,
)
from sdtask.controller import metrics
from sdtask.controller.recovery import recover
from sdtask.controller.runtimes import TICK_SECONDS, RuntimeLoop, RuntimeState
from sdtask.controller.tasks import Timers, admit_task, fail_orphans, next_housekeeping, run_due
from sdtask.controller.views import pod_view, runtime_info, task_view
from sdtask.deployment import deployment_name

log = logging.getLogger(__name__)
API_SERVER_MAX_JSON_DEPTH = 10_000


def _state(memo: Any, namespace: str, runtime: str) -> RuntimeState:
    states: dict[tuple[str, str], RuntimeState] = memo.runtimes
    return states.setdefault((namespace, runtime), RuntimeState())


def _wake(memo: Any, namespace: str | None, runtime: str | None) -> None:
    if namespace and runtime:
        _state(memo, namespace, runtime).wake.set()


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # kopf decodes each watch event with json.loads, which fails near 1,000 levels of nesting at the default limit:
    # one deeply nested task would then break the watch of every task. The API server accepts JSON up to 10,000
    # levels (Go's decoder limit), so the operator must decode that far; admission then refuses the task
    # (ContentTooDeep) at 64 levels, long before anything recursive of ours touches it.
    sys.setrecursionlimit(max(sys.getrecursionlimit(), API_SERVER_MAX_JSON_DEPTH * 2 + 1000))
    settings.persistence.finalizer = f"{GROUP}/operator"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    settings.posting.level = logging.WARNING  # our own Events tell the story; kopf's handler chatter would drown it
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 60
    # A quiet object's worker goes after 1 s instead of 5: a burst of thousands of new tasks holds fewer at once.
    settings.batching.idle_timeout = 1.0
    config = OperatorSettings.from_env()
    memo.config = config
    # The blocking Kubernetes client runs in threads: enough of them that a burst of admissions (bounded below) and
    # the dispatches never queue behind each other in asyncio's default pool (cores + 4 threads).
    asyncio.get_running_loop().set_default_executor(
        concurrent.futures.ThreadPoolExecutor(THREADS, thread_name_prefix="kube")
    )
    memo.kube = Kube(load_api_client())
    memo.admissions = asyncio.Semaphore(THREADS // 2)
    memo.timers = Timers()
    memo.runtimes = {}
    memo.callbacks = CallbackPolicy(
        allow_private=config.allow_private_callbacks, allowed_hosts=config.allowed_callback_hosts
    )
    # kopf gives every object a shallow copy of this memo: an attribute set later on one object's memo is that
    # object's alone, so whatever must exist once per operator lives in a container created here (shared by all).
    memo.singletons = {}
    memo.outcomes = metrics.OutcomeRecorder()
    metrics.serve(config.metrics_port)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    task = memo.singletons.get("housekeeper")
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


# Unfinished tasks only: finished ones need nothing but their TTL timer, and would make every pass and the operator's
# memory grow with the history. A filter, not a None result: kopf keeps an object's old entry when the handler
# returns None, and drops it when the object stops matching the filter.
@kopf.index(GROUP, VERSION, TASK_PLURAL, when=_unfinished)
def task_index(body: kopf.Body, **_: Any) -> dict[tuple[str, str], Any]:
    view = task_view(body)
    return {(view.namespace, view.runtime): view}


@kopf.index(GROUP, VERSION, RUNTIME_PLURAL)
def runtime_index(body: kopf.Body, namespace: str | None, **_: Any) -> dict[str, Any]:
    return {namespace or "": runtime_info(body)}


@kopf.index("", "v1", "pods", labels={LABEL_RUNTIME: kopf.PRESENT, LABEL_MANAGED_BY: MANAGER})
def pod_index(body: kopf.Body, **_: Any) -> dict[tuple[str, str], Any]:
    view = pod_view(body)
    return {(view.namespace, view.runtime): view}


@kopf.index("apps", "v1", "deployments", labels={LABEL_RUNTIME: kopf.PRESENT, LABEL_MANAGED_BY: MANAGER})
def deployment_index(
    body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any
) -> dict[tuple[str, str], int]:
    return {(namespace or "", labels[LABEL_RUNTIME]): int(body.get("metadata", {}).get("generation") or 0)}


# --- events: admit new tasks, wake the runtime loops ----------------------------------------------------------------
@kopf.on.event(GROUP, VERSION, TASK_PLURAL)
async def task_event(type: str, body: kopf.Body, namespace: str | None, memo: kopf.Memo, **kwargs: Any) -> None:
    # kopf passes indices by their function names; its handler protocol has no typed slot for them.
    runtime_index: kopf.Index[str, Any] = kwargs["runtime_index"]
    task_index: kopf.Index[tuple[str, str], Any] = kwargs["task_index"]
    # kopf hands indices only to handlers, and they are live: the first task event gives them to the housekeeper.
    start_once(memo.singletons, "housekeeper", lambda: housekeeper(memo, task_index, runtime_index))
    view = task_view(body)
    logs.bind(namespace=namespace, task=view.name, runtime=view.runtime)  # kopf's worker task of this object
    memo.outcomes.observe(type, body)
    _set_timer(memo, type, view)
    if type != "DELETED" and view.phase is None:
        async with memo.admissions:
            await admit_task(memo.kube, dict(body), list(runtime_index.get(namespace or "", [])), memo.callbacks)
    if view.phase not in FINISHED_PHASES or type == "DELETED":
        _wake(memo, namespace, view.runtime)


def start_once(
    singletons: dict[str, asyncio.Task[None]], name: str, start: Callable[[], Coroutine[Any, Any, None]]
) -> asyncio.Task[None]:
    """The operator's one task called `name`, started by the first caller. `singletons` is the dict the startup
    handler put in the memo: shared by every object's copy of the memo, unlike an attribute set on one copy (which
    started one housekeeper per task object, each doing every pass)."""
    task = singletons.get(name)
    if task is None:
        task = singletons[name] = asyncio.create_task(start())
    return task


def _set_timer(memo: Any, type: str, view: Any) -> None:
    timers: Timers = memo.timers
    when, kind = (None, "") if type == "DELETED" else next_housekeeping(view, memo.config.finished_ttl_seconds)
    timers.set((view.namespace, view.name), when, kind, view.uid)


@kopf.on.event("", "v1", "pods", labels={LABEL_RUNTIME: kopf.PRESENT, LABEL_MANAGED_BY: MANAGER})
def pod_event(namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
    _wake(memo, namespace, labels.get(LABEL_RUNTIME))


@kopf.on.event("apps", "v1", "deployments", labels={LABEL_RUNTIME: kopf.PRESENT, LABEL_MANAGED_BY: MANAGER})
def deployment_event(namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
    _wake(memo, namespace, labels.get(LABEL_RUNTIME))


@kopf.on.event(GROUP, VERSION, RUNTIME_PLURAL)
def runtime_event(namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    _wake(memo, namespace, name)


# --- one loop per runtime -------------------------------------------------------------------------------------------
# The backoff (just over one tick) lets the loop see `stopped` and clean up before kopf cancels it; kopf re-checks
# a stopping daemon only when the backoff ends, so a longer one would only delay the runtime's deletion.
@kopf.daemon(GROUP, VERSION, RUNTIME_PLURAL, cancellation_backoff=TICK_SECONDS * 1.5, cancellation_timeout=10)
async def runtime_daemon(
    stopped: kopf.DaemonStopped,
    body: kopf.Body,
    namespace: str | None,
    name: str,
    memo: kopf.Memo,
    logger: Any,
    **kwargs: Any,
) -> None:
    task_index: kopf.Index[tuple[str, str], Any] = kwargs["task_index"]
    pod_index: kopf.Index[tuple[str, str], Any] = kwargs["pod_index"]
    deployment_index: kopf.Index[tuple[str, str], int] = kwargs["deployment_index"]
    namespace = namespace or ""  # SDRuntimes are namespaced; kopf's signature is generic
    logs.bind(namespace=namespace, runtime=name)  # the daemon is its own asyncio task: only its lines get these
    state = _state(memo, namespace, name)
    loop = RuntimeLoop(memo.kube, memo.config, state, memo.callbacks)
    key = (namespace, name)
    failures = 0
    while not stopped:
        state.wake.clear()
        if body.get("metadata", {}).get("deletionTimestamp"):
            break
        try:
            generations = list(deployment_index.get(key, []))
            await loop.reconcile(
                dict(body),
                list(task_index.get(key, [])),
                list(pod_index.get(key, [])),
                generations[0] if generations else None,
            )
            failures = 0
        except Exception as error:  # a failed pass is retried; the loop itself must live on
            failures += 1
            logger.warning("runtime %s/%s: reconcile failed (%s); retrying", namespace, name, error)
            await asyncio.sleep(min(2**failures, 30))
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
    memo: kopf.Memo, task_index: kopf.Index[tuple[str, str], Any], runtime_index: kopf.Index[str, Any]
) -> None:
    """TTLs and deadlines on timers (a pass costs what is due); orphans by a look at each runtime's queue every
    `housekeeping_interval_seconds` (a look per runtime, not per task)."""
    timers: Timers = memo.timers
    interval = memo.config.housekeeping_interval_seconds
    next_orphan_check = 0.0
    loop = asyncio.get_running_loop()
    while True:
        try:
            now = dt.datetime.now(dt.UTC)
            due = timers.pop_due(now)
            if due:
                await run_due(memo.kube, due, memo.callbacks)
            if loop.time() >= next_orphan_check:
                next_orphan_check = loop.time() + interval
                # Crash leftovers (stranded dispatches, abandoned callbacks): over the index, which holds no settled
                # finished task.
                indexed = [view for key in list(task_index) for view in task_index.get(key, [])]
                await recover(memo.kube, indexed, memo.callbacks, now)
                runtimes = {ns: {r.name for r in runtime_index.get(ns, [])} for ns in list(runtime_index)}
                gone = [k for k in list(task_index) if k[1] and k[1] not in runtimes.get(k[0], set())]
                if gone:
                    queues = {key: list(task_index.get(key, [])) for key in gone}
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
