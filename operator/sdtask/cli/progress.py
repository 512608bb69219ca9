"""Waiting for tasks with a live display: phase, queue position, the Web UI's progress and ETA, attempt.

One list call per refresh gives every watched task and the queue positions at once. On a terminal the display is a
set of rich progress bars; piped into a file it is one line per change instead (no control codes in logs).
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn

from sdtask.cli.client import Cluster
from sdtask.cli.common import err
from sdtask.cli.views import eta, is_finished, phase_of, progress_fraction, queue_places, state_line
from sdtask.constants import Phase

PHASE_STYLE: dict[str, str] = {
    Phase.SUCCEEDED: "green",
    Phase.FAILED: "red",
    Phase.RUNNING: "cyan",
    Phase.SCHEDULED: "blue",
    Phase.PENDING: "yellow",
}


def _gone(name: str) -> dict[str, Any]:
    """A task deleted while we waited (`sdtask cancel`, kubectl delete, its TTL)."""
    return {
        "metadata": {"name": name},
        "status": {"phase": Phase.FAILED.value, "reason": "Deleted", "message": "task deleted"},
    }


class Waiter:
    def __init__(self, cluster: Cluster, names: list[str], *, timeout: float | None, interval: float = 0.5) -> None:
        self.cluster = cluster
        self.names = names
        self.timeout = timeout
        self.interval = interval
        self.latest: dict[str, dict[str, Any]] = {}

    def _poll(self) -> dict[str, str]:
        """Refresh `latest`; returns each task's state line."""
        listed = self.cluster.list_tasks()
        by_name = {t["metadata"]["name"]: t for t in listed}
        places = queue_places(listed)
        lines = {}
        for name in self.names:
            previous = self.latest.get(name)
            task = by_name.get(name) or (previous if previous and is_finished(previous) else _gone(name))
            self.latest[name] = task
            lines[name] = state_line(task, places.get((self.cluster.namespace, name)))
        return lines

    def done(self) -> bool:
        return all(is_finished(self.latest[name]) for name in self.names)

    def wait(self) -> bool:
        """True when every task finished; False when the timeout came first."""
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        if err.is_terminal:
            return self._wait_live(deadline)
        return self._wait_plain(deadline)

    def _expired(self, deadline: float | None) -> bool:
        return deadline is not None and time.monotonic() > deadline

    def _wait_live(self, deadline: float | None) -> bool:
        columns = (
            TextColumn("[bold]{task.fields[name]}"),
            TextColumn("{task.fields[phase]}"),
            BarColumn(bar_width=30),
            TaskProgressColumn(),
            TextColumn("{task.fields[eta]}"),
            TextColumn("{task.fields[state]}"),
        )
        with Progress(*columns, console=err, refresh_per_second=8) as bars:
            ids: dict[str, TaskID] = {
                name: bars.add_task("", total=1.0, name=name, phase="", eta="", state="") for name in self.names
            }
            while True:
                lines = self._poll()
                for name, task_id in ids.items():
                    task = self.latest[name]
                    phase = phase_of(task)
                    style = PHASE_STYLE.get(phase, "")
                    bars.update(
                        task_id,
                        completed=progress_fraction(task),
                        phase=f"[{style}]{phase}[/]" if style else phase,
                        eta=eta(task),
                        state=lines[name],
                    )
                if self.done():
                    return True
                if self._expired(deadline):
                    return False
                time.sleep(self.interval)

    def _wait_plain(self, deadline: float | None) -> bool:
        shown: dict[str, tuple[str, str]] = {}
        while True:
            lines = self._poll()
            for name in self.names:
                task = self.latest[name]
                # Progress percentages change every refresh: a plain log gets the phase and state changes only.
                key = (phase_of(task), lines[name] if phase_of(task) != Phase.RUNNING else "")
                if shown.get(name) != key:
                    shown[name] = key
                    stamp = dt.datetime.now().strftime("%H:%M:%S")
                    err.print(f"{stamp} {name} {phase_of(task)} {lines[name]}".rstrip(), highlight=False)
            if self.done():
                return True
            if self._expired(deadline):
                return False
            time.sleep(self.interval)
