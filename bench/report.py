"""The benchmark's figures as the table README's "Keep every GPU busy" shows, with their targets."""

from __future__ import annotations

from typing import Any


def table(results: dict[str, Any]) -> str:
    lat, hist, api, busy = results["latency"], results["latency_with_history"], results["api"], results["busy"]
    policy, fifo, burst = results["switching"]["policy"], results["switching"]["fifo"], results["burst"]
    cold = results["scale_from_zero"]
    ratio = fifo["makespan_seconds"] / policy["makespan_seconds"]
    end = lat["created -> Succeeded"]
    rows = [
        (
            "create -> Succeeded, 4 warm pods, 0 s service",
            f"p50 {end['p50_ms']} ms, p99 {end['p99_ms']} ms",
            "p50 <= 50 ms, p99 <= 150 ms",
        ),
        *[
            (f"  {step}", f"p50 {v['p50_ms']} ms, p99 {v['p99_ms']} ms", "")
            for step, v in lat.items()
            if "->" in step and step != "created -> Succeeded"
        ],
        (
            "same with 10,000 finished tasks present",
            f"p50 {hist['created -> Succeeded']['p50_ms']} ms, p99 {hist['created -> Succeeded']['p99_ms']} ms",
            "as above",
        ),
        (
            "busy fraction, 8 pods, 160 x 0.5 s",
            f"{busy['busy_fraction']} (makespan {busy['makespan_seconds']} s)",
            ">= 0.95",
        ),
        (
            "switching, project policy",
            f"makespan {policy['makespan_seconds']} s, {policy['switches']} switches",
            "<= 24 s, <= 10 switches",
        ),
        ("switching, plain FIFO", f"makespan {fifo['makespan_seconds']} s, {fifo['switches']} switches", ""),
        ("FIFO makespan / policy makespan", f"{ratio:.2f}x", ">= 3x"),
        ("200 at once, 4 pods: pod time per task", f"{api['pod_ms_per_task']} ms", "<= 100 ms"),
        ("API requests per task (sdtasks + events)", f"{api['api_requests_per_task']}", "<= 7"),
        (
            "10,000 tasks at once: admitted",
            f"{burst['admitted_seconds']} s ({burst['admission_rate_per_second']}/s)",
            "<= 60 s",
        ),
        (
            "operator RSS with 10,000 tasks",
            f"{burst['operator_rss_mib']['history']} MiB (queued {burst['operator_rss_mib']['queued']})",
            "<= 250 MiB",
        ),
        ("RSS growth per 1,000 tasks", f"{burst['rss_growth_mib_per_1000_tasks']} MiB", "reported"),
        (
            "scale from zero: first pod / task done",
            f"{cold['first_pod_seconds']} s / {cold['task_succeeded_seconds']} s",
            "first pod <= 2 s",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    lines = [f"{'figure':<{width}}  {'measured':<{value_width}}  target", "-" * (width + value_width + 30)]
    lines += [f"{a:<{width}}  {b:<{value_width}}  {c}" for a, b, c in rows]
    return "\n".join(lines)
