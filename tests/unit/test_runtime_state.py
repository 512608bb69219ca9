"""A runtime's in-memory state between passes: the pods it offers to arriving tasks, and their claims."""

import datetime as dt

from sdtask.controller.decisions import ArrivalSlot, busy_pods, pod_work, settled_claims
from sdtask.controller.runtimes import RuntimeState
from sdtask.controller.views import task_view

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def test_an_arrival_takes_an_idle_pod_once_and_a_failed_write_gives_it_back() -> None:
    state = RuntimeState(slots=[ArrivalSlot("a", None), ArrivalSlot("b", None)])
    assert state.take_slot("t1", None, NOW) == "a"
    assert state.take_slot("t2", None, NOW) == "b"
    assert state.take_slot("t3", None, NOW) is None  # no pod twice: t3 waits in the queue
    state.give_back("t2")
    assert set(state.claims) == {"t1"}


def test_once_an_arrival_waits_in_the_queue_no_later_one_skips_it() -> None:
    # Dynamic runtime: "b" finds no pod with its model and queues; "a", arriving after it, must not take the idle
    # pod the next pass may switch for "b".
    state = RuntimeState(slots=[ArrivalSlot("p", "a.safetensors")])
    assert state.take_slot("wants-b", "b.safetensors", NOW) is None
    assert state.take_slot("wants-a", "a.safetensors", NOW) is None


def test_a_fast_task_that_ended_before_any_pass_saw_it_frees_its_pod() -> None:
    # A task of 0 s ends before a pass sees it Scheduled: the index never shows it. Once an event showed it after
    # its arrival write, its absence means it ended, not that the index is behind: its pod is free again.
    state = RuntimeState(slots=[ArrivalSlot("a", None)])
    state.take_slot("fast", None, NOW)
    assert settled_claims(state.claims, [], NOW) == []  # not yet seen: the pod stays taken
    state.seen("fast")
    assert settled_claims(state.claims, [], NOW) == ["fast"]
    shown = task_view({"metadata": {"name": "other"}, "status": {"phase": "Pending"}})
    for name in settled_claims(state.claims, [shown], NOW):
        del state.claims[name]
    assert busy_pods(pod_work([shown], state.claims, {"a": None})) == set()
