"""kopf registrations of the operator: a thin list; each use case lives in its own module.

Only event handlers, indices and daemons are used on SDTasks, never kopf's change-detecting handlers, so kopf never
copies a task's spec into an annotation (specs may be large) and never adds finalizers to tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import kopf

from sdtask import logs
from sdtask.clients.kube import Kube, load_api_client
from sdtask.completion import CallbackPolicy
from sdtask.config import OperatorSettings
from sdtask.constants import GROUP, LABEL_MANAGED_BY, LABEL_RUNTIME, MANAGER, RUNTIME_PLURAL, TASK_PLURAL, VERSION
from sdtask.controller import metrics
from sdtask.controller.runtimes import TICK_SECONDS, RuntimeLoop, RuntimeState
from sdtask.controller.tasks import admit_task, housekeep
from sdtask.controller.views import pod_view, runtime_info, task_view
from sdtask.deployment import deployment_name

log = logging.getLogger(__name__)


def _state(memo: Any, namespace: str, runtime: str) -> RuntimeState:
    states: dict[tuple[str, str], RuntimeState] = memo.runtimes
    return states.setdefault((namespace, runtime), RuntimeState())


def _wake(memo: Any, namespace: str | None, runtime: str | None) -> None:
    if namespace and runtime:
        _state(memo, namespace, runtime).wake.set()


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.finalizer = f"{GROUP}/operator"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    settings.posting.level = logging.WARNING  # our own Events tell the story; kopf's handler chatter would drown it
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 60
    config = OperatorSettings.from_env()
    memo.config = config
    memo.kube = Kube(load_api_client())
    memo.runtimes = {}
    memo.callbacks = CallbackPolicy(
        allow_private=config.allow_private_callbacks, allowed_hosts=config.allowed_callback_hosts
    )
    memo.housekeeper = None
    memo.outcomes = metrics.OutcomeRecorder()
    metrics.serve(config.metrics_port)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    task = memo.get("housekeeper")
    if task:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# --- indices: the operator's in-memory view of the cluster ---------------------------------------------------------
@kopf.index(GROUP, VERSION, TASK_PLURAL)
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
    if memo.get("housekeeper") is None:
        # kopf hands indices only to handlers, and they are live: the first task event gives them to the housekeeper.
        memo.housekeeper = asyncio.create_task(housekeeper(memo, task_index, runtime_index))
    view = task_view(body)
    logs.bind(namespace=namespace, task=view.name, runtime=view.runtime)  # kopf's worker task of this object
    memo.outcomes.observe(type, body)
    if type != "DELETED" and view.phase is None:
        await admit_task(memo.kube, dict(body), list(runtime_index.get(namespace or "", [])), memo.callbacks)
    _wake(memo, namespace, view.runtime)


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


# --- housekeeping: deadlines, orphaned tasks, TTL -------------------------------------------------------------------
async def housekeeper(
    memo: kopf.Memo, task_index: kopf.Index[tuple[str, str], Any], runtime_index: kopf.Index[str, Any]
) -> None:
    while True:
        try:
            runtimes = {ns: {r.name for r in runtime_index.get(ns, [])} for ns in list(runtime_index)}
            tasks = [view for key in list(task_index) for view in task_index.get(key, [])]
            await housekeep(memo.kube, tasks, runtimes, memo.callbacks)
        except Exception as error:  # keep housekeeping alive through API hiccups
            log.warning("housekeeping pass failed: %s", error)
        await asyncio.sleep(memo.config.housekeeping_interval_seconds)
