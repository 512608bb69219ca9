import datetime as dt

import pytest

from sdtask.scheduling import (
    AheadTask,
    Assignment,
    IdlePod,
    Policy,
    QueuedTask,
    plan_assignments,
    queue_order,
    queue_positions,
    queue_summary,
    reclaims,
)

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def task(
    name: str, seconds: int = 0, priority: int = 0, model: str | None = None, not_before: dt.datetime | None = None
) -> QueuedTask:
    return QueuedTask(
        name=name,
        priority=priority,
        queued_at=T0 + dt.timedelta(seconds=seconds),
        model=model,
        not_before=not_before,
    )


def pairs(plan: list[Assignment]) -> dict[str, str]:
    return {a.task.name: a.pod.name for a in plan}


def test_queue_is_ordered_by_priority_then_age() -> None:
    tasks = [task("old-low", 0), task("new-high", 5, priority=10), task("mid-low", 2)]
    assert [t.name for t in queue_order(tasks)] == ["new-high", "old-low", "mid-low"]


def test_one_task_per_idle_pod_in_queue_order() -> None:
    plan = plan_assignments([task("a", 0), task("b", 1), task("c", 2)], [IdlePod("p1"), IdlePod("p2")], T0)
    assert pairs(plan) == {"a": "p1", "b": "p2"}


def test_no_idle_pod_means_no_assignment() -> None:
    assert plan_assignments([task("a")], [], T0) == []


def test_backing_off_task_waits_until_not_before() -> None:
    later = T0 + dt.timedelta(seconds=30)
    backing_off = task("retry", 0, not_before=later)
    assert plan_assignments([backing_off], [IdlePod("p")], T0) == []
    assert pairs(plan_assignments([backing_off], [IdlePod("p")], later)) == {"retry": "p"}


def test_pod_with_loaded_model_takes_matching_task_instead_of_switching() -> None:
    tasks = [task("wants-b", 0, model="b.safetensors"), task("wants-a", 1, model="a.safetensors")]
    pods = [IdlePod("pod-a", "a.safetensors [abc]"), IdlePod("pod-b", "b")]
    assert pairs(plan_assignments(tasks, pods, T0)) == {"wants-b": "pod-b", "wants-a": "pod-a"}


def test_single_free_pod_prefers_a_task_for_its_model_within_the_window() -> None:
    tasks = [task("head-b", 0, model="b"), task("second-a", 1, model="a")]
    assert pairs(plan_assignments(tasks, [IdlePod("pod-a", "a")], T0)) == {"second-a": "pod-a"}


def test_affinity_never_jumps_a_higher_priority_task() -> None:
    tasks = [task("urgent-b", 5, priority=10, model="b"), task("normal-a", 0, model="a")]
    assert pairs(plan_assignments(tasks, [IdlePod("pod-a", "a")], T0)) == {"urgent-b": "pod-a"}


def test_affinity_is_bounded_by_the_window() -> None:
    tasks = [task(f"b{i}", i, model="b") for i in range(3)] + [task("far-a", 10, model="a")]
    plan = plan_assignments(tasks, [IdlePod("pod-a", "a")], T0, window=2)
    assert pairs(plan) == {"b0": "pod-a"}


def test_a_starving_task_is_served_before_affinity() -> None:
    tasks = [task("old-b", 0, model="b"), task("new-a", 200, model="a")]
    now = T0 + dt.timedelta(minutes=5)
    plan = plan_assignments(tasks, [IdlePod("pod-a", "a")], now, starvation_limit=dt.timedelta(minutes=2))
    assert pairs(plan) == {"old-b": "pod-a"}


def test_work_conserving_keeps_warm_pod_for_the_task_that_wants_it() -> None:
    # pod-a holds a model the queued a-task wants; the model-less head task should take the other pod.
    tasks = [task("any", 0), task("wants-a", 1, model="a")]
    pods = [IdlePod("pod-a", "a"), IdlePod("pod-z", "z")]
    assert pairs(plan_assignments(tasks, pods, T0)) == {"wants-a": "pod-a", "any": "pod-z"}


# --- pipelining: pods with a short queue of tasks assigned ahead ----------------------------------------------------
def test_a_pod_with_two_free_slots_takes_two_tasks_and_the_least_loaded_pod_goes_first() -> None:
    pods = [IdlePod("busy", free=1, load=1), IdlePod("idle", free=2, load=0)]
    plan = plan_assignments([task("a", 0), task("b", 1), task("c", 2)], pods, T0)
    assert [(a.task.name, a.pod.name) for a in plan] == [("a", "idle"), ("b", "busy"), ("c", "idle")]


def test_a_pod_without_a_free_slot_takes_nothing_but_still_serves_its_model() -> None:
    # pod-a is full but on model a: the free pod-b switches to b, which nobody serves, rather than to a.
    pods = [IdlePod("pod-a", "a", free=0, load=2), IdlePod("pod-b", "z")]
    tasks = [task("a1", 0, model="a"), task("a2", 1, model="a"), task("b1", 2, model="b")]
    assert pairs(plan_assignments(tasks, pods, T0)) == {"b1": "pod-b"}


def test_the_model_a_pod_will_have_loaded_is_that_of_its_last_assigned_task() -> None:
    # One free pod, two slots: after it takes b1 (a switch) its next slot goes to b2, not back to its old model a.
    tasks = [task("b1", 0, model="b"), task("a1", 1, model="a"), task("b2", 2, model="b")]
    plan = plan_assignments(tasks, [IdlePod("pod", "z", free=2)], T0)
    assert [a.task.name for a in plan] == ["b1", "b2"]
    assert plan[1].pod.model == "b"


# --- switch-aware placement -----------------------------------------------------------------------------------------
def test_a_pod_stays_on_its_model_while_that_model_has_queued_work_even_behind_older_tasks() -> None:
    tasks = [task("b1", 0, model="b"), task("b2", 1, model="b"), task("a1", 2, model="a")]
    assert pairs(plan_assignments(tasks, [IdlePod("pod-a", "a")], T0)) == {"a1": "pod-a"}


def test_a_switch_goes_to_the_model_with_most_queued_work_not_the_oldest_task() -> None:
    tasks = [task("c1", 0, model="c")] + [task(f"b{i}", 1 + i, model="b") for i in range(5)]
    assert pairs(plan_assignments(tasks, [IdlePod("pod", "a")], T0)) == {"b0": "pod"}


def test_switching_pods_spread_over_the_queued_models() -> None:
    tasks = [task(f"{m}{i}", i * 3 + n, model=m) for i in range(4) for n, m in enumerate("bcd")]
    plan = plan_assignments(tasks, [IdlePod(f"pod-{i}", "a") for i in range(3)], T0)
    assert sorted(a.task.model or "" for a in plan) == ["b", "c", "d"]


def test_no_switch_to_a_model_served_elsewhere_for_fewer_than_min_switch_tasks() -> None:
    pods = [IdlePod("pod-a", "a", free=0, load=2), IdlePod("pod-z", "z")]
    tasks = [task(f"a{i}", i, model="a") for i in range(3)]
    assert plan_assignments(tasks, pods, T0, min_switch_tasks=4) == []
    # With enough of its work queued, a second pod does load it.
    many = [task(f"a{i}", i, model="a") for i in range(10)]
    assert pairs(plan_assignments(many, pods, T0, min_switch_tasks=4)) == {"a0": "pod-z"}


def test_priorities_stay_strict_under_switch_aware_placement() -> None:
    tasks = [task("low-a", 0, model="a"), task("high-b", 5, priority=1, model="b")]
    assert pairs(plan_assignments(tasks, [IdlePod("pod-a", "a")], T0)) == {"high-b": "pod-a"}


def test_fifo_follows_arrival_order_even_when_that_switches_models() -> None:
    tasks = [task("b1", 0, model="b"), task("a1", 1, model="a")]
    plan = plan_assignments(tasks, [IdlePod("pod-a", "a")], T0, policy=Policy.FIFO)
    assert pairs(plan) == {"b1": "pod-a"}


def test_fifo_still_prefers_a_free_pod_holding_the_model() -> None:
    tasks = [task("b1", 0, model="b")]
    plan = plan_assignments(tasks, [IdlePod("pod-a", "a"), IdlePod("pod-b", "b")], T0, policy=Policy.FIFO)
    assert pairs(plan) == {"b1": "pod-b"}


def simulate(
    policy: Policy,
    *,
    pods: int = 4,
    models: int = 8,
    count: int = 64,
    switch: float = 5.0,
    image: float = 0.5,
    arrival: float = 0.0,
) -> tuple[float, int]:
    """Discrete-event run of the bench's switching scenario over the planner: (makespan, switches).

    Pods hold up to two tasks (one running, one assigned ahead); each starts on the first model; the planner runs
    whenever a task arrives (one every `arrival` seconds) or ends, as the operator's loop does.
    """
    names = [f"m{i}" for i in range(models)]
    arrivals = [
        (i * arrival, QueuedTask(f"t{i:03}", 0, T0 + dt.timedelta(seconds=i * arrival), names[i % models]))
        for i in range(count)
    ]
    queue: list[QueuedTask] = []
    loaded = {f"p{i}": names[0] for i in range(pods)}
    assigned: dict[str, list[QueuedTask]] = {p: [] for p in loaded}
    ends: dict[str, float] = {}  # pod -> when its running task ends
    clock, switches = 0.0, 0

    def start(pod: str) -> None:
        nonlocal switches
        head = assigned[pod][0]
        cost = image + (switch if head.model != loaded[pod] else 0.0)
        switches += head.model != loaded[pod]
        loaded[pod] = head.model or loaded[pod]
        ends[pod] = clock + cost

    while arrivals or queue or ends:
        while arrivals and arrivals[0][0] <= clock:
            queue.append(arrivals.pop(0)[1])
        slots = [
            IdlePod(p, assigned[p][-1].model if assigned[p] else loaded[p], 2 - len(assigned[p]), len(assigned[p]))
            for p in loaded
        ]
        for a in plan_assignments(queue, slots, T0 + dt.timedelta(seconds=clock), policy=policy):
            queue.remove(a.task)
            assigned[a.pod.name].append(a.task)
        for pod in loaded:
            if assigned[pod] and pod not in ends:
                start(pod)
        if arrivals and (not ends or arrivals[0][0] < min(ends.values())):
            clock = arrivals[0][0]
            continue
        assert ends, "work queued but nothing planned"
        pod = min(ends, key=lambda p: ends[p])
        clock = ends.pop(pod)
        assigned[pod].pop(0)
        if assigned[pod]:
            start(pod)
    return clock, switches


@pytest.mark.parametrize("arrival", [0.0, 0.01, 0.05])
def test_the_bench_scenario_meets_its_targets_and_beats_fifo_threefold(arrival: float) -> None:
    makespan, switches = simulate(Policy.SWITCH_AWARE, arrival=arrival)
    fifo_makespan, fifo_switches = simulate(Policy.FIFO, arrival=arrival)
    print(f"switch-aware {makespan} s, {switches} switches; fifo {fifo_makespan} s, {fifo_switches} switches")
    assert makespan <= 24 and switches <= 10, (makespan, switches)
    assert fifo_makespan >= 3 * makespan, (fifo_makespan, makespan, fifo_switches)


# --- taking back tasks assigned ahead -------------------------------------------------------------------------------
def ahead(name: str, priority: int = 0, seconds: int = 0) -> AheadTask:
    return AheadTask(name, f"pod-of-{name}", priority, T0 + dt.timedelta(seconds=seconds))


def test_a_higher_priority_arrival_takes_back_the_lowest_task_assigned_ahead() -> None:
    taken = reclaims([task("urgent", 5, priority=10)], [ahead("low", -5), ahead("normal", 0)], 0, T0)
    assert [a.name for a in taken] == ["low"]


def test_nothing_is_taken_back_for_equal_priority_or_when_a_slot_is_free() -> None:
    assert reclaims([task("same", 5)], [ahead("queued-ahead")], 0, T0) == []
    assert reclaims([task("urgent", 5, priority=10)], [ahead("low", -5)], 1, T0) == []


def test_each_waiting_urgent_task_takes_back_one() -> None:
    waiting = [task("u1", 1, priority=9), task("u2", 2, priority=9), task("u3", 3, priority=9)]
    taken = reclaims(waiting, [ahead("a", 0, 1), ahead("b", 0, 2)], 0, T0)
    assert [a.name for a in taken] == ["b", "a"]  # the most recently assigned first


def test_queue_positions_follow_dispatch_order() -> None:
    tasks = [task("old-low", 0), task("new-high", 5, priority=10), task("mid-low", 2)]
    assert queue_positions(tasks) == {"new-high": 1, "old-low": 2, "mid-low": 3}


def test_queue_summary_lists_the_head_in_dispatch_order_and_the_counts_by_model() -> None:
    head = [task("t2", 2), task("t0", 0), task("late-high", 9, priority=5)]
    summary = queue_summary(head, {"a.safetensors": 2, "": 3})
    assert summary["head"] == ["late-high", "t0", "t2"]
    assert summary["byModel"] == [{"model": "", "tasks": 3}, {"model": "a.safetensors", "tasks": 2}]
