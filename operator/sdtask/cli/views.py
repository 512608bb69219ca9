"""What the commands show, as pure functions of API objects: table rows, the one-line state, queue positions, errors.

Kept free of I/O so each is unit-tested on plain dicts; the commands only fetch, call these and print.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from sdtask.api.task import SDTaskSpec
from sdtask.conditions import parse_time
from sdtask.constants import FINISHED_PHASES, Phase
from sdtask.scheduling import QueuedTask, queue_order

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

# Exit codes of `run` and `wait`, part of the CLI's contract for scripts.
EXIT_SUCCEEDED = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


class InputError(ValueError):
    """A request body the CLI refuses before creating anything: names the file and the field."""

    def __init__(self, source: str, field: str, message: str) -> None:
        super().__init__(source, field, message)
        self.source, self.field, self.message = source, field, message

    def __str__(self) -> str:
        where = f"{self.field}: " if self.field else ""
        return f"{self.source}: {where}{self.message}"


def _status(task: Mapping[str, Any]) -> Mapping[str, Any]:
    return task.get("status") or {}


def _meta(task: Mapping[str, Any]) -> Mapping[str, Any]:
    return task.get("metadata") or {}


def created(obj: Mapping[str, Any]) -> dt.datetime:
    return parse_time(_meta(obj).get("creationTimestamp")) or EPOCH


def age(since: dt.datetime | None, now: dt.datetime) -> str:
    """kubectl's short ages (its HumanDuration, simplified): 42s, 5m3s, 95m, 30h, 4d."""
    if since is None:
        return "-"
    seconds = max(int((now - since).total_seconds()), 0)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 600:
        return f"{seconds // 60}m{seconds % 60}s" if seconds % 60 else f"{seconds // 60}m"
    if seconds < 3 * 3600:
        return f"{seconds // 60}m"
    if seconds < 48 * 3600:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def runtime_of(task: Mapping[str, Any]) -> str:
    return str(_status(task).get("runtime") or "")


def phase_of(task: Mapping[str, Any]) -> str:
    return str(_status(task).get("phase") or Phase.PENDING)


def is_finished(task: Mapping[str, Any]) -> bool:
    return _status(task).get("phase") in FINISHED_PHASES


@dataclass(frozen=True)
class QueuePlace:
    position: int
    length: int
    runtime: str


def queue_places(tasks: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], QueuePlace]:
    """(namespace, name) -> place in its runtime's queue, in the operator's dispatch order (priority, then age).

    Computed from one list of the tasks, so showing positions costs no status write per queued task.
    """
    queues: dict[tuple[str, str], list[QueuedTask]] = {}
    for task in tasks:
        status = _status(task)
        runtime = runtime_of(task)
        if status.get("phase") != Phase.PENDING or not runtime:
            continue
        queued_task = QueuedTask(
            str(_meta(task).get("name")), int((task.get("spec") or {}).get("priority") or 0), created(task)
        )
        queues.setdefault((str(_meta(task).get("namespace") or ""), runtime), []).append(queued_task)
    places = {}
    for (namespace, runtime), queue in queues.items():
        for index, queued in enumerate(queue_order(queue), start=1):
            places[(namespace, queued.name)] = QueuePlace(index, len(queue), runtime)
    return places


def progress_fraction(task: Mapping[str, Any]) -> float:
    phase = _status(task).get("phase")
    if phase == Phase.SUCCEEDED:
        return 1.0
    if phase != Phase.RUNNING:
        return 0.0
    fraction = (_status(task).get("progress") or {}).get("fraction")
    return float(fraction) if isinstance(fraction, int | float) else 0.0


def eta(task: Mapping[str, Any]) -> str:
    if _status(task).get("phase") != Phase.RUNNING:
        return ""
    seconds = (_status(task).get("progress") or {}).get("etaSeconds")
    return f"ETA {seconds:.0f}s" if isinstance(seconds, int | float) else ""


def state_line(task: Mapping[str, Any], place: QueuePlace | None) -> str:
    """One line of what is happening now: queue position while Pending, pod and steps while Running, the reason when
    it ended."""
    status = _status(task)
    phase = phase_of(task)
    attempt = f"attempt {status.get('attempts')}" if status.get("attempts") else ""
    if phase == Phase.PENDING:
        if place is not None:
            return f"queued: position {place.position} of {place.length} on {place.runtime}"
        return str(status.get("message") or "waiting to be routed")
    if phase == Phase.SCHEDULED:
        return ", ".join(p for p in (f"assigned to {status.get('pod')}", attempt) if p)
    if phase == Phase.RUNNING:
        progress = status.get("progress") or {}
        steps = f"step {progress['step']}/{progress['steps']}" if progress.get("steps") else ""
        jobs = f"batch {progress['job']}/{progress['jobs']}" if (progress.get("jobs") or 0) > 1 else ""
        return ", ".join(p for p in (f"on {status.get('pod')}", attempt, steps, jobs) if p)
    if phase == Phase.SUCCEEDED:
        return str(status.get("output_location") or "")
    return f"{status.get('reason') or 'Failed'}: {status.get('message') or ''}".rstrip(": ")


def task_row(task: Mapping[str, Any], place: QueuePlace | None, now: dt.datetime) -> dict[str, str]:
    status = _status(task)
    progress = status.get("progress") or {}
    shown_progress = str(progress.get("summary") or "") if status.get("phase") == Phase.RUNNING else ""
    if place is not None:
        shown_progress = f"#{place.position} of {place.length} in queue"
    return {
        "NAME": str(_meta(task).get("name") or ""),
        "PHASE": phase_of(task),
        "RUNTIME": runtime_of(task) or "-",
        "MODEL": str(status.get("model") or "-"),
        "PROGRESS": shown_progress or "-",
        "ATTEMPTS": str(status.get("attempts") or 0),
        "AGE": age(created(task), now),
        "OUTPUT": str(status.get("output_location") or "-"),
    }


def matches(task: Mapping[str, Any], *, phases: Iterable[str] = (), runtime: str | None = None) -> bool:
    wanted = {p.lower() for p in phases}
    if wanted and phase_of(task).lower() not in wanted:
        return False
    return not runtime or runtime_of(task) == runtime


def exit_code(tasks: Iterable[Mapping[str, Any]]) -> int:
    return EXIT_SUCCEEDED if all(phase_of(t) == Phase.SUCCEEDED for t in tasks) else EXIT_FAILED


def result_object(task: Mapping[str, Any]) -> dict[str, Any]:
    """The old API's response object; a failed task adds `error` (the reason and message), as its callback does."""
    status = _status(task)
    response = dict(status.get("response") or {})
    if status.get("phase") == Phase.FAILED:
        meta_id = ((task.get("spec") or {}).get("task") or {}).get("metadata", {}).get("id", "")
        response.setdefault("id", meta_id)
        response["error"] = state_line(task, None)
    return response


# --- input ----------------------------------------------------------------------------------------------------------


def _field_path(location: Iterable[Any]) -> str:
    parts = [str(p) for p in location]
    path = ""
    for part in parts:
        path += f"[{part}]" if part.isdigit() else (f".{part}" if path else part)
    return path


def validate_manifest(source: str, manifest: Mapping[str, Any], legacy: bool) -> None:
    """Refuse what the API server would refuse, with the field as the user wrote it (`task.content.steps`, or the
    legacy body's own `steps`)."""
    try:
        SDTaskSpec.model_validate(manifest.get("spec") or {})
    except ValidationError as error:
        first = error.errors()[0]
        location = list(first["loc"])
        if legacy and location[:2] == ["task", "content"]:
            location = location[2:]
        raise InputError(source, _field_path(location), first["msg"]) from None


def api_rejection(source: str, body: str) -> InputError:
    """The API server's 422 (its CEL rules and schema): the first cause's field and message."""
    import json

    try:
        status = json.loads(body)
    except ValueError:
        return InputError(source, "", body.strip()[:500])
    causes = (status.get("details") or {}).get("causes") or []
    if causes:
        field = str(causes[0].get("field") or "").removeprefix("spec.")
        return InputError(source, field, str(causes[0].get("message") or status.get("message") or ""))
    return InputError(source, "", str(status.get("message") or body)[:500])
