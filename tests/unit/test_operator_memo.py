import asyncio
import copy

import kopf
import kubernetes.client

from sdtask.clients.kube import Kube
from sdtask.completion import CallbackPolicy
from sdtask.config import OperatorSettings
from sdtask.controller.main import OperatorMemo, RuntimesOnlyDiffBase


def memo() -> OperatorMemo:
    return OperatorMemo(
        config=OperatorSettings(),
        kube=Kube(kubernetes.client.ApiClient()),
        callbacks=CallbackPolicy(allow_private=False, allowed_hosts=frozenset()),
    )


def test_every_object_shares_the_operators_memo_so_one_housekeeper_serves_all_tasks() -> None:
    # kopf makes each object's memo with copy.copy of the operator's memo when it first sees the object. A memo
    # set on the first task's copy (the housekeeper, started by its first event) must be the one the next task sees,
    # or every task would start a housekeeper of its own.
    operator_memo = memo()
    first_task, second_task = copy.copy(operator_memo), copy.copy(operator_memo)

    async def start() -> None:
        first_task.housekeeper = asyncio.create_task(asyncio.sleep(0))
        await first_task.housekeeper

    asyncio.run(start())
    assert second_task.housekeeper is not None and second_task.housekeeper is first_task.housekeeper
    assert operator_memo.housekeeper is first_task.housekeeper


def test_a_runtime_keeps_one_state_and_waking_it_sets_its_event() -> None:
    shared = memo()
    state = shared.state("ns", "rt")
    assert copy.copy(shared).state("ns", "rt") is state
    shared.wake("ns", "rt")
    assert state.wake.is_set()
    shared.wake(None, "rt")  # a cluster-scoped or unlabelled object wakes nothing
    shared.wake("ns", "")
    assert set(shared.runtimes) == {("ns", "rt")}


def test_kopf_builds_no_diff_base_for_tasks_but_still_does_for_runtimes() -> None:
    """kopf's change detection copies every object on every event; SDTasks have no change-detecting handlers."""
    storage = RuntimesOnlyDiffBase(prefix="sdtask.io")
    task = kopf.Body({"kind": "SDTask", "metadata": {"name": "t"}, "spec": {"task": {"content": {"prompt": "x"}}}})
    runtime = kopf.Body({"kind": "SDRuntime", "metadata": {"name": "r"}, "spec": {"checkpoint": "m"}})
    assert storage.build(body=task) == {} and storage.fetch(body=task) == {}
    assert storage.build(body=runtime)["spec"] == {"checkpoint": "m"}
