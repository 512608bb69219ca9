import datetime as dt

from sdtask.scaling import ScalingPolicy, desired_replicas

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
POLICY = ScalingPolicy(min_replicas=0, max_replicas=4, tasks_per_replica=2, scale_down_delay=dt.timedelta(seconds=60))


def desired(
    queued: int = 0,
    running: int = 0,
    busy_pods: int = 0,
    current: int = 0,
    last_needed: dt.datetime | None = None,
    models: int = 0,
) -> int:
    return desired_replicas(
        POLICY,
        queued=queued,
        running=running,
        busy_pods=busy_pods,
        current=current,
        last_needed=last_needed,
        now=NOW,
        models=models,
    )


def test_scales_from_zero_as_soon_as_a_task_arrives() -> None:
    assert desired(queued=1) == 1


def test_replicas_follow_queue_depth_per_tasks_per_replica() -> None:
    assert desired(queued=3, running=2) == 3


def test_clamped_to_max() -> None:
    assert desired(queued=100) == 4


def test_held_at_min() -> None:
    assert (
        desired_replicas(
            ScalingPolicy(min_replicas=2, max_replicas=4),
            queued=0,
            running=0,
            busy_pods=0,
            current=2,
            last_needed=None,
            now=NOW,
        )
        == 2
    )


def test_scale_down_waits_for_the_delay() -> None:
    recent = NOW - dt.timedelta(seconds=30)
    assert desired(current=2, last_needed=recent) == 2
    assert desired(current=2, last_needed=NOW - dt.timedelta(seconds=61)) == 0


def test_never_below_busy_pods() -> None:
    assert desired(running=1, busy_pods=3, current=3, last_needed=NOW - dt.timedelta(hours=1)) == 3


def test_a_dynamic_runtime_wants_a_pod_per_queued_model_within_max() -> None:
    # 6 tasks at 2 per replica ask for 3 pods; over 4 models they ask for 4 (each model on its own pod, no switching).
    assert desired(queued=6, models=4) == 4
    assert desired(queued=6, models=9) == 4  # clamped to max
    assert desired(queued=0, models=0) == 0
