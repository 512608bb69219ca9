import datetime as dt

from sdtask.scheduling import IdlePod, QueuedTask, plan_assignments, queue_order, queue_positions, queue_summary

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def task(name: str, seconds: int = 0, priority: int = 0, model: str | None = None, **kw: object) -> QueuedTask:
    return QueuedTask(name=name, priority=priority, queued_at=T0 + dt.timedelta(seconds=seconds), model=model, **kw)  # type: ignore[arg-type]


def pairs(plan: list) -> dict[str, str]:
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


def test_queue_positions_follow_dispatch_order() -> None:
    tasks = [task("old-low", 0), task("new-high", 5, priority=10), task("mid-low", 2)]
    assert queue_positions(tasks) == {"new-high": 1, "old-low": 2, "mid-low": 3}


def test_queue_summary_has_the_head_and_a_count_per_model() -> None:
    tasks = [task(f"t{i}", i, model="a.safetensors" if i % 2 else None) for i in range(5)]
    summary = queue_summary(tasks, head_length=3)
    assert summary["head"] == ["t0", "t1", "t2"]
    assert summary["byModel"] == [{"model": "", "tasks": 3}, {"model": "a.safetensors", "tasks": 2}]
