import datetime as dt
from typing import Any

import pytest

from sdtask.constants import Phase
from sdtask.controller.decisions import (
    STATUS_MIN_INTERVAL_SECONDS,
    ArrivalSlot,
    Claim,
    PodWork,
    arrival_pod,
    arrival_slots,
    busy_pods,
    comparable_status,
    needs_apply,
    needs_prompt_pass,
    pass_rest,
    pod_work,
    pods_to_drain,
    queue_settled_up_to,
    runtime_conditions,
    runtime_status,
    runtime_structure,
    settled_claims,
    status_write_due,
    status_write_early,
    task_census,
)
from sdtask.controller.views import PodView, TaskView, task_view

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def pod(name: str, ready: bool = True, unschedulable: str = "") -> PodView:
    phase = "Running" if ready else "Pending"
    return PodView("ns", name, "rt", phase, ready, False, "node-1" if ready else "", None, unschedulable)


def by_type(conditions: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in conditions}


def test_an_idle_runtime_at_zero_is_ready() -> None:
    assert by_type(runtime_conditions(None, 0, [], NOW))["Ready"] == ("True", "ScaledToZero")


def test_pending_pods_without_gpus_degrade_the_runtime_with_the_scheduler_reason() -> None:
    pods = [pod("a"), pod("b"), pod("c", ready=False, unschedulable="0/3 nodes: Insufficient nvidia.com/gpu")]
    conditions = runtime_conditions(None, 3, pods, NOW)
    assert by_type(conditions)["Degraded"] == ("True", "Unschedulable")
    message = next(c["message"] for c in conditions if c["type"] == "Degraded")
    assert "no GPU capacity" in message and "Insufficient nvidia.com/gpu" in message
    assert by_type(conditions)["Ready"] == ("False", "PodsNotReady")


def test_a_pod_is_busy_while_its_task_is_scheduled_or_running_or_just_claimed() -> None:
    running = task_view({"metadata": {"name": "t"}, "status": {"phase": "Running", "pod": "p1"}})
    done = task_view({"metadata": {"name": "u"}, "status": {"phase": "Succeeded", "pod": "p2"}})
    work = pod_work([running, done], {"v": Claim("p3", None, NOW)}, {"p1": None, "p2": None, "p3": None})
    assert busy_pods(work) == {"p1", "p3"}


def test_a_pod_holds_its_running_task_and_the_one_assigned_ahead_and_will_have_that_ones_model() -> None:
    running = task_view({"metadata": {"name": "r"}, "status": {"phase": "Running", "pod": "p", "model": "a"}})
    ahead = task_view({"metadata": {"name": "s"}, "status": {"phase": "Scheduled", "pod": "p", "model": "b"}})
    work = pod_work([ahead, running], {}, {"p": "a [123]", "idle": "c"})
    assert (work["p"].load, work["p"].running, work["p"].model) == (2, "r", "b")
    assert (work["idle"].load, work["idle"].model) == (0, "c")
    # A claim (dispatched, not yet seen by the index) counts and names the model last.
    claimed = pod_work([running], {"c": Claim("p", "z", NOW)}, {"p": "a"})
    assert (claimed["p"].load, claimed["p"].model) == (2, "z")


def test_a_task_storing_its_outputs_while_the_next_generates_takes_no_slot_of_its_pod() -> None:
    def running(name: str, started: str, model: str) -> Any:
        status = {"phase": "Running", "pod": "p", "model": model, "startTime": f"2026-01-01T00:00:{started}Z"}
        return task_view({"metadata": {"name": name}, "status": status})

    finishing, generating = running("old", "01.5", "a.safetensors"), running("new", "02.25", "b.safetensors")
    work = pod_work([finishing, generating], {}, {"p": "b.safetensors [2]"})
    # One slot used, by the generating one: tasksAhead=1 still gives the pod its next task now.
    assert (work["p"].load, work["p"].running, work["p"].model) == (1, "new", "b.safetensors [2]")
    assert busy_pods(work) == {"p"}  # never taken by a scale-down meanwhile
    ahead = task_view({"metadata": {"name": "next"}, "status": {"phase": "Scheduled", "pod": "p", "model": "c"}})
    assert (pod_work([finishing, generating, ahead], {}, {}))["p"].load == 2


def test_a_failing_fetch_model_init_container_degrades_the_runtime_naming_the_missing_object() -> None:
    from sdtask.controller.views import pod_view

    message = "ModelMissing: checkpoint absent.safetensors not found (s3://models/ckpt/absent.safetensors)"
    body: dict[str, Any] = {
        "metadata": {"name": "p1", "namespace": "ns", "labels": {"sdtask.io/runtime": "rt"}},
        "spec": {"nodeName": "n1"},
        "status": {
            "phase": "Pending",
            "initContainerStatuses": [
                {
                    "name": "fetch-model",
                    "ready": False,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": message}},
                }
            ],
        },
    }
    failing = pod_view(body)
    assert failing.init_failure == f"fetch-model: {message}" and not failing.ready
    conditions = runtime_conditions(None, 1, [failing], NOW)
    assert by_type(conditions)["Degraded"] == ("True", "ModelMissing")
    assert "s3://models/ckpt/absent.safetensors" in next(c["message"] for c in conditions if c["type"] == "Degraded")
    completed = {**body["status"], "initContainerStatuses": [{"name": "fetch-model", "ready": True}]}
    assert pod_view({**body, "status": completed}).init_failure == ""


# --- scale-down: which pods go -------------------------------------------------------------------------------------


def test_a_scale_down_drains_idle_pods_only_not_ready_ones_first_and_always_the_same_ones() -> None:
    live = [pod("c"), pod("a"), pod("b", ready=False), pod("d")]
    assert [p.name for p in pods_to_drain(live, busy={"a"}, count=2)] == ["b", "c"]
    assert [p.name for p in pods_to_drain(list(reversed(live)), busy={"a"}, count=2)] == ["b", "c"]


def test_a_scale_down_keeps_the_pods_it_picked_before_so_no_other_pod_is_starved() -> None:
    """Pass 1 picked b while a was busy; in pass 2 a is idle too: b stays the pick, a keeps taking tasks."""
    live = [pod("a"), pod("b")]
    assert [p.name for p in pods_to_drain(live, busy={"a"}, count=1)] == ["b"]
    assert [p.name for p in pods_to_drain(live, busy=set(), count=1, draining={"b"})] == ["b"]
    assert [p.name for p in pods_to_drain(live, busy=set(), count=1)] == ["a"]  # without memory: the other one


def test_a_scale_down_never_takes_a_busy_pod_even_when_asked_for_more() -> None:
    live = [pod("a"), pod("b")]
    assert pods_to_drain(live, busy={"a", "b"}, count=2) == []
    assert [p.name for p in pods_to_drain(live, busy={"a"}, count=5)] == ["b"]
    assert pods_to_drain(live, busy=set(), count=0) == []


# --- applying manifests --------------------------------------------------------------------------------------------


def test_a_manifest_is_applied_when_new_or_changed_and_not_again_when_the_same() -> None:
    assert needs_apply("Service", "h1", None, None)
    assert needs_apply("Service", "h2", ("h1", 0), None)
    assert not needs_apply("Service", "h1", ("h1", 0), None)


def test_the_deployment_is_applied_again_when_deleted_or_edited_by_someone_else() -> None:
    assert not needs_apply("Deployment", "h1", ("h1", 3), 3)
    assert needs_apply("Deployment", "h1", ("h1", 3), None)  # gone: the index shows no Deployment
    assert needs_apply("Deployment", "h1", ("h1", 3), 4)  # edited: its generation moved past ours
    assert needs_apply("Deployment", "h2", ("h1", 3), 3)


# --- the runtime's status ------------------------------------------------------------------------------------------


def test_the_runtime_status_counts_replicas_and_tasks_lists_pods_by_name_and_heads_the_queue() -> None:
    runtime = {"metadata": {"name": "rt", "namespace": "ns", "generation": 7}, "status": {}}
    pods = [pod("p2"), pod("p1", ready=False), PodView("ns", "p0", "rt", "Running", True, True, "n", "m", "")]
    tasks = [
        task_view({"metadata": {"name": "r"}, "status": {"phase": "Running", "pod": "p2", "model": "m"}}),
        task_view(
            {"metadata": {"name": "q1", "creationTimestamp": "2026-01-01T00:00:01Z"}, "status": {"phase": "Pending"}}
        ),
        task_view(
            {
                "metadata": {"name": "q2", "creationTimestamp": "2026-01-01T00:00:02Z"},
                "spec": {"priority": 5},
                "status": {"phase": "Pending", "model": "x"},
            }
        ),
    ]
    work = {"p2": PodWork(1, "r", "m")}
    status = runtime_status(runtime, 3, pods, task_census(tasks, {}), work, NOW)
    assert (status["observedGeneration"], status["desiredReplicas"], status["replicas"], status["readyReplicas"]) == (
        7,
        3,
        2,  # p0 is being deleted
        1,
    )
    assert (status["queued"], status["running"]) == (2, 1)
    assert [p["name"] for p in status["pods"]] == ["p0", "p1", "p2"]
    assert status["pods"][2] == {
        "name": "p2",
        "ready": True,
        "busy": True,
        "task": "r",
        "model": "",
        "node": "node-1",
        "phase": "Running",
    }
    assert status["queue"]["head"] == ["q2", "q1"]  # priority first
    assert status["queue"]["byModel"] == [{"model": "", "tasks": 1}, {"model": "x", "tasks": 1}]
    assert by_type(status["conditions"])["Ready"] == ("False", "PodsNotReady")


def queued_view(name: str, second: int, priority: int = 0, model: str | None = None) -> TaskView:
    return task_view(
        {
            "metadata": {"name": name, "creationTimestamp": (NOW + dt.timedelta(seconds=second)).isoformat()},
            "spec": {"priority": priority},
            "status": {"phase": "Pending", "model": model},
        }
    )


def test_a_claimed_task_is_out_of_the_queue_the_loop_dispatches_from_yet_counted_in_the_runtime_status() -> None:
    running = task_view({"metadata": {"name": "r"}, "status": {"phase": "Running", "pod": "p", "model": "a"}})
    ahead = task_view({"metadata": {"name": "s"}, "status": {"phase": "Scheduled", "pod": "p", "model": "b"}})
    waiting, claimed = queued_view("w", 1, model="a"), queued_view("c", 2, model="c")
    census = task_census([running, ahead, waiting, claimed], {"c": Claim("p2", "c", NOW)})
    assert [t.name for t in census.queued] == ["w"]
    assert [t.name for t in census.claimed] == ["c"]
    assert [t.name for t in census.active] == ["r", "s"]
    assert census.models == 3
    assert census.queued_by_model == {"a": 1}  # what the queue metric (and a KEDA scaler) sees
    status = runtime_status({"metadata": {"name": "rt", "generation": 1}}, 1, [], census, {}, NOW)
    assert (status["queued"], status["running"]) == (2, 2)
    assert status["queue"]["byModel"] == [{"model": "a", "tasks": 1}, {"model": "c", "tasks": 1}]


def test_the_head_of_a_long_queue_is_its_first_tasks_in_dispatch_order() -> None:
    tasks = [queued_view(f"t{i}", i) for i in range(5000)] + [queued_view("urgent", 6000, priority=9)]
    status = runtime_status({"metadata": {"name": "rt"}}, 0, [], task_census(tasks[::-1], {}), {}, NOW)
    assert status["queue"]["head"][:4] == ["urgent", "t0", "t1", "t2"]
    assert status["queued"] == 5001


def test_the_status_is_written_on_a_change_and_per_pod_changes_at_most_once_per_interval() -> None:
    runtime = {"metadata": {"name": "rt", "namespace": "ns", "generation": 1}}
    status = comparable_status(runtime_status(runtime, 1, [pod("p")], task_census([], {}), {}, NOW))
    later = comparable_status(
        runtime_status(runtime, 1, [pod("p")], task_census([], {}), {}, NOW + dt.timedelta(minutes=1))
    )
    assert later == status  # the conditions' times don't count as a change
    assert not status_write_due(status, status, 100.0)
    assert status_write_due(status, {}, 0.0)
    busy = {**status, "pods": [{**status["pods"][0], "busy": True}]}
    assert not status_write_due(busy, status, STATUS_MIN_INTERVAL_SECONDS / 2)
    assert status_write_due(busy, status, STATUS_MIN_INTERVAL_SECONDS)
    rescaled = {**status, "desiredReplicas": 2}
    assert status_write_due(rescaled, status, 0.0)  # a structural change is written at once


def test_the_queue_is_not_even_summarised_while_only_per_task_fields_could_be_written() -> None:
    runtime = {"metadata": {"name": "rt", "namespace": "ns", "generation": 1}, "status": {}}
    written = comparable_status(runtime_status(runtime, 1, [pod("p")], task_census([], {}), {}, NOW))
    same = runtime_structure(runtime, 1, [pod("p")], NOW)
    assert not status_write_early(same, written, STATUS_MIN_INTERVAL_SECONDS / 2)
    assert status_write_early(same, written, STATUS_MIN_INTERVAL_SECONDS)  # due again: computed in full
    assert status_write_early(runtime_structure(runtime, 2, [pod("p")], NOW), written, 0.0)  # a rescale: at once


# --- claims --------------------------------------------------------------------------------------------------------


def test_a_claim_settles_once_the_index_shows_the_task_dispatched_or_gone_or_after_its_ttl() -> None:
    pending = task_view({"metadata": {"name": "p"}, "status": {"phase": "Pending"}})
    scheduled = task_view({"metadata": {"name": "s"}, "status": {"phase": "Scheduled", "pod": "x"}})
    claims = {
        "p": Claim("x", None, NOW),
        "s": Claim("x", None, NOW),
        "gone": Claim("x", None, NOW),
        "old": Claim("x", None, NOW - dt.timedelta(minutes=5)),
    }
    old = task_view({"metadata": {"name": "old"}, "status": {"phase": "Pending"}})
    assert sorted(settled_claims(claims, [pending, scheduled, old], NOW)) == ["gone", "old", "s"]


def test_a_task_dispatched_on_arrival_keeps_its_pod_until_the_index_shows_it() -> None:
    # Not yet in the runtime's index (its first write is on the way): the pod stays taken, not freed as if deleted.
    arriving = {"new": Claim("x", None, NOW, arriving=True)}
    assert settled_claims(arriving, [], NOW) == []
    assert busy_pods(pod_work([], arriving, {"x": None, "y": None})) == {"x"}
    shown = task_view({"metadata": {"name": "new"}, "status": {"phase": "Scheduled", "pod": "x"}})
    assert settled_claims(arriving, [shown], NOW) == ["new"]
    assert settled_claims(arriving, [], NOW + dt.timedelta(minutes=5)) == ["new"]  # deleted before it showed


# --- dispatch on arrival ------------------------------------------------------------------------------------------


def test_without_tasks_ahead_only_ready_pods_holding_nothing_after_this_pass_take_arrivals() -> None:
    work = {"a": PodWork(0, "", "m1"), "b": PodWork(1, "t", "m2"), "c": PodWork(0, "", None), "d": PodWork(0, "", "m")}
    # d is not ready (or draining): left out by the caller; c got a task in this very pass.
    assert arrival_slots({"a", "b", "c"}, work, {"c": 1}, dynamic=True, queued=1, depth=1) == [ArrivalSlot("a", "m1")]
    both = [ArrivalSlot("a", None), ArrivalSlot("c", None)]
    assert arrival_slots({"a", "c"}, work, {}, dynamic=False, queued=0, depth=1) == both


def test_with_tasks_ahead_arrivals_fill_idle_pods_first_then_the_queues_of_busy_ones() -> None:
    # A burst on busy pods: the arrivals a pass would have given them ahead go there at once, in their one write,
    # instead of a write to queue them and another when the next pass dispatches them.
    work = {"a": PodWork(1, "t1", None), "b": PodWork(0, "", None), "c": PodWork(2, "t2", None)}
    slots = arrival_slots({"a", "b", "c"}, work, {}, dynamic=False, queued=0, depth=2)
    assert [s.pod for s in slots] == ["b", "a", "b"]  # c is full (running one, one ahead)
    assert [s.pod for s in arrival_slots({"a", "b", "c"}, work, {"b": 1}, False, queued=1, depth=2)] == ["a", "b"]


def test_on_a_dynamic_runtime_no_arrival_goes_behind_what_this_pass_gave_a_pod() -> None:
    # The pass may have given pod a a switch to m2 that `work` doesn't show yet: an m1 task behind it would switch back.
    work = {"a": PodWork(1, "t1", "m1"), "b": PodWork(1, "t2", "m1")}
    slots = arrival_slots({"a", "b"}, work, {"a": 1}, dynamic=True, queued=1, depth=3)
    assert slots == [ArrivalSlot("b", "m1", behind=True), ArrivalSlot("b", "m1", behind=True)]


def test_an_arrival_goes_behind_a_busy_pod_only_with_the_model_it_will_have_loaded() -> None:
    slots = [ArrivalSlot("a", "m1.safetensors", behind=True), ArrivalSlot("b", None, behind=True)]
    assert arrival_pod(slots, "m1.safetensors") == slots[0]
    assert arrival_pod(slots, "m2.safetensors") is None  # a switch is the loop's decision, and never queued ahead
    assert arrival_pod(slots, None) == slots[0]


def test_no_arrival_skips_the_queue_while_a_task_the_pass_saw_still_waits() -> None:
    # One task backing off (not assigned) or waiting for a pod with its model: pods idle, yet arrivals queue.
    work = {"a": PodWork(0, "", None), "b": PodWork(0, "", None)}
    assert arrival_slots({"a", "b"}, work, {}, dynamic=False, queued=1, depth=2) == []
    assert arrival_slots({"a", "b"}, work, {"a": 1}, dynamic=False, queued=2, depth=2) == []
    assert arrival_slots({"a", "b"}, work, {"a": 1}, dynamic=False, queued=1, depth=1) == [ArrivalSlot("b", None)]


def test_an_arrival_goes_to_a_pod_with_its_model_else_to_one_without_any_never_to_a_switch() -> None:
    idle = [ArrivalSlot("a", "other.safetensors [1]"), ArrivalSlot("b", None), ArrivalSlot("c", "want.safetensors [2]")]
    assert arrival_pod(idle, "want.safetensors") == ArrivalSlot("c", "want.safetensors [2]")
    assert arrival_pod(idle, "third.safetensors") == ArrivalSlot("b", None)
    assert arrival_pod([ArrivalSlot("a", "other.safetensors")], "want.safetensors") is None
    assert arrival_pod(idle, None) == ArrivalSlot("a", "other.safetensors [1]")  # no model asked: any pod
    assert arrival_pod([], None) is None


def test_arrivals_wake_the_loop_unless_they_can_only_join_a_queue_no_pod_has_room_for() -> None:
    full = {"a": PodWork(2, "t1", None), "b": PodWork(2, "t2", None)}
    # Tasks left waiting, every place taken, one task of priority 5 assigned ahead: only an arrival above 5 needs a
    # pass now (to take that one back); the rest join the queue, and the next tick counts them.
    bound = queue_settled_up_to({"a", "b"}, full, {}, queued=3, depth=2, ahead_priorities=[5, 7])
    assert bound == 5
    assert not needs_prompt_pass(None, 5, bound)  # a new task
    assert not needs_prompt_pass(Phase.PENDING, 0, bound)  # the echo of its admission, or a requeued one
    assert needs_prompt_pass(None, 6, bound)
    # Nothing assigned ahead: no arrival can take a place back; any priority joins the queue.
    assert not needs_prompt_pass(None, 1000, queue_settled_up_to({"a"}, full, {}, 3, 2, []))
    # Scale from zero: no pods at all, tasks queued.
    assert not needs_prompt_pass(None, 0, queue_settled_up_to(set(), {}, {}, 1, 2, []))
    # A task ending, starting or failing always wakes the loop (it frees or takes a place).
    for phase in (Phase.SCHEDULED, Phase.RUNNING, Phase.SUCCEEDED, Phase.FAILED):
        assert needs_prompt_pass(phase, 0, bound)


def test_every_arrival_wakes_the_loop_while_a_pass_could_place_it() -> None:
    room = {"a": PodWork(1, "t1", None), "b": PodWork(2, "t2", None)}
    assert queue_settled_up_to({"a", "b"}, room, {}, queued=3, depth=2, ahead_priorities=[]) is None  # a has room
    # b is full, a is not ready (draining or starting): no place a pass could give
    assert queue_settled_up_to({"b"}, room, {}, queued=3, depth=2, ahead_priorities=[]) is not None
    assert queue_settled_up_to({"b"}, room, {}, queued=0, depth=2, ahead_priorities=[]) is None  # an empty queue
    # This pass gave pods tasks: their priorities are not among those ahead yet.
    full = {"a": PodWork(2, "t1", None)}
    assert queue_settled_up_to({"a"}, full, {"a": 1}, queued=3, depth=2, ahead_priorities=[]) is None
    assert needs_prompt_pass(None, 0, None)


# --- spec parts through the models -------------------------------------------------------------------------------


def test_a_runtime_spec_is_read_through_its_model_with_the_models_defaults() -> None:
    from sdtask.api.runtime import ScalingSpec, SchedulingSpec
    from sdtask.controller.decisions import scaling_policy, scheduling_settings
    from sdtask.scaling import ScalingPolicy
    from sdtask.scheduling import Policy

    defaults = ScalingSpec()
    assert scaling_policy({}) == ScalingPolicy() == ScalingPolicy.from_spec(defaults)
    assert scaling_policy({}).scale_down_delay == dt.timedelta(seconds=defaults.scale_down_delay_seconds)
    tuned = scaling_policy({"scaling": {"maxReplicas": 4, "tasksPerReplica": 2, "fromANewerCrd": True}})
    assert (tuned.min_replicas, tuned.max_replicas, tuned.tasks_per_replica) == (defaults.min_replicas, 4, 2)
    assert scaling_policy({"scaling": {"maxReplicas": 0}}) == ScalingPolicy()  # refused by the model: its defaults
    settings = scheduling_settings({})
    assert (settings.policy, settings.depth, settings.min_switch_tasks) == (
        Policy(SchedulingSpec().policy),
        1 + SchedulingSpec().tasks_ahead,
        SchedulingSpec().min_tasks_per_switch,
    )
    fifo = scheduling_settings({"scheduling": {"policy": "fifo", "tasksAhead": 0}})
    assert (fifo.policy, fifo.depth) == (Policy.FIFO, 1)


def test_a_pass_that_fed_no_pod_rests_for_its_cost_and_for_the_length_of_the_queue_it_walked() -> None:
    assert pass_rest(0.004, fed=0, unfinished=10) < 0.001  # a short queue: a pod that frees is fed at once
    assert pass_rest(0.004, fed=0, unfinished=10_000) == pytest.approx(0.1)  # cheap, yet not once per event
    assert pass_rest(0.02, fed=0, unfinished=100) == pytest.approx(0.16)  # several times what it took
    assert pass_rest(1.0, fed=0, unfinished=100) == 0.25  # never longer than a quarter second
    assert pass_rest(1.0, fed=3, unfinished=10_000) == 0.0  # it fed pods: the next pass may feed more
