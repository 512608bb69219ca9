"""How many replicas a runtime wants. Pure; the operator feeds it the queue and the pods it sees."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

from sdtask.api.runtime import ScalingSpec

_DEFAULTS = ScalingSpec()  # the defaults are the model's (and so the CRD's)


@dataclass(frozen=True)
class ScalingPolicy:
    min_replicas: int = _DEFAULTS.min_replicas
    max_replicas: int = _DEFAULTS.max_replicas
    tasks_per_replica: int = _DEFAULTS.tasks_per_replica
    scale_down_delay: dt.timedelta = dt.timedelta(seconds=_DEFAULTS.scale_down_delay_seconds)

    @classmethod
    def from_spec(cls, scaling: ScalingSpec) -> ScalingPolicy:
        return cls(
            min_replicas=scaling.min_replicas,
            max_replicas=scaling.max_replicas,
            tasks_per_replica=scaling.tasks_per_replica,
            scale_down_delay=dt.timedelta(seconds=scaling.scale_down_delay_seconds),
        )


def demand(queued: int, running: int, tasks_per_replica: int, models: int = 0) -> int:
    """Pods the work asks for: one per `tasks_per_replica` tasks, and on a dynamic runtime at least one per model
    among them, since a pod serves one model at a time and a switch costs a load."""
    return max(math.ceil((queued + running) / max(tasks_per_replica, 1)), models if queued + running else 0)


def desired_replicas(
    policy: ScalingPolicy,
    *,
    queued: int,
    running: int,
    busy_pods: int,
    current: int,
    last_needed: dt.datetime | None,
    now: dt.datetime,
    models: int = 0,
) -> int:
    """ceil((queued + running) / tasksPerReplica), at least the number of `models` wanted, clamped to min..max.

    Up at once; down only after `scale_down_delay` without demand for the current size (`last_needed` is when demand
    last reached it), and never below the number of busy pods, so a scale-down can only take idle pods.
    """
    wanted = demand(queued, running, policy.tasks_per_replica, models)
    target = min(max(wanted, policy.min_replicas), policy.max_replicas)
    target = max(target, busy_pods)
    if target >= current:
        return target
    if last_needed is not None and now - last_needed < policy.scale_down_delay:
        return current
    return target
