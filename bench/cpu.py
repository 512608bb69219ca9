"""Who used the CPU during a bench phase: CPU seconds per component of the stack, from /proc (Linux only).

On a 2-core machine the figures of the bench are bounded by the CPU that the stack's own parts take (API server, etcd,
kwok, the agents, the stand-ins, the S3 server, the bench's own clients); this says how much each took, so a figure
can be read against that limit.
"""

from __future__ import annotations

import os
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")

# First match wins; matched against the process's command line.
COMPONENTS = (
    ("kube-apiserver", "apiserver"),
    ("etcd", "etcd"),
    ("kube-controller-manager", "controller-manager"),
    ("kube-scheduler", "scheduler"),
    ("kwok", "kwok"),
    ("sdtask.devcluster.s3app", "s3 (moto)"),
    ("sdtask.cli operator", "operator"),
    ("sdtask.cli agent", "agents"),
    ("webui-standin", "stand-ins"),
    ("sdtask.standin", "stand-ins"),
    ("sdtask.cli", "other sdtask"),
)


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat[stat.rindex(")") + 2 :].split()[1])
        tree.setdefault(parent, []).append(int(entry.name))
    return tree


def _cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def _component(pid: int) -> str:
    if pid == os.getpid():
        return "bench (clients, watch, pod simulator)"
    command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    for needle, name in COMPONENTS:
        if needle in command:
            return name
    return "other"


def snapshot() -> dict[str, float]:
    """CPU seconds used so far by this process and every descendant still alive, per component."""
    tree = _children()
    totals: dict[str, float] = {}
    stack = [os.getpid()]
    while stack:
        pid = stack.pop()
        stack.extend(tree.get(pid, []))
        try:
            name = _component(pid)
            totals[name] = totals.get(name, 0.0) + _cpu_seconds(pid)
        except (OSError, ValueError):
            continue  # ended meanwhile
    return totals


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far: other users' load shows as busy beyond ours."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    total = sum(fields[:8])
    return (total - idle) / TICKS, total / TICKS


class CpuMeter:
    """CPU per component between start() and stop(), as cores used (CPU seconds / wall seconds)."""

    def __init__(self) -> None:
        self.before: dict[str, float] = {}
        self.machine_before = (0.0, 0.0)
        self.began = 0.0

    def start(self) -> CpuMeter:
        import time

        self.before, self.machine_before, self.began = snapshot(), machine_busy(), time.monotonic()
        return self

    def stop(self) -> dict[str, object]:
        import time

        wall = time.monotonic() - self.began
        after, (busy, total) = snapshot(), machine_busy()
        # Processes that ended during the phase (pods of a deleted runtime) are lost from `after`: counted as 0.
        used = {k: max(after.get(k, 0.0) - self.before.get(k, 0.0), 0.0) for k in after}
        ours = sum(used.values())
        machine = busy - self.machine_before[0]
        span = total - self.machine_before[1]
        return {
            "wall_seconds": round(wall, 1),
            "cores": len(os.sched_getaffinity(0)),
            "machine_busy_fraction": round(machine / span, 3) if span else 0.0,
            "stack_cpu_seconds": round(ours, 1),
            "others_cpu_seconds": round(max(machine - ours, 0.0), 1),
            "by_component_cpu_seconds": {k: round(v, 1) for k, v in sorted(used.items(), key=lambda i: -i[1]) if v},
        }
