"""`sdtask describe`: a task's story as a person reads it (kubectl describe, focused on what matters here)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from sdtask.api.task import DEFAULT_MAX_RETRIES
from sdtask.cli.views import QueuePlace, age, phase_of, runtime_of, state_line
from sdtask.conditions import parse_time
from sdtask.constants import Phase


def _fields(rows: list[tuple[str, Any]]) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    for label, value in rows:
        if value not in (None, "", [], {}):
            table.add_row(label, Text(str(value)))
    return table


def _when(value: Any, now: dt.datetime) -> str:
    moment = parse_time(value)
    return f"{value} ({age(moment, now)} ago)" if moment else ""


def _event_time(event: Any) -> dt.datetime | None:
    moment = event.event_time or event.last_timestamp or event.first_timestamp
    return moment if isinstance(moment, dt.datetime) else None


def render_task(
    task: Mapping[str, Any], place: QueuePlace | None, events: list[Any], now: dt.datetime
) -> RenderableType:
    meta, spec, status = task.get("metadata") or {}, task.get("spec") or {}, task.get("status") or {}
    request = (spec.get("task") or {}).get("metadata") or {}
    callback_spec = spec.get("callback") or {}
    callback = status.get("callback") or {}
    progress = status.get("progress") or {}
    retries = spec.get("maxRetries", DEFAULT_MAX_RETRIES)
    parts: list[RenderableType] = [
        _fields(
            [
                ("Name:", meta.get("name")),
                ("Namespace:", meta.get("namespace")),
                ("Task id:", request.get("id")),
                ("Type:", request.get("tasktype")),
                ("Phase:", phase_of(task)),
                ("Now:", state_line(task, place)),
                ("Reason:", status.get("reason")),
                ("Message:", status.get("message")),
                ("Runtime:", runtime_of(task)),
                ("Model:", status.get("model")),
                ("Pod:", status.get("pod")),
                ("Attempts:", f"{status.get('attempts') or 0} (retries allowed: {retries})"),
                ("Priority:", spec.get("priority", 0)),
                ("Progress:", progress.get("summary") if phase_of(task) == Phase.RUNNING else ""),
                ("Created:", _when(meta.get("creationTimestamp"), now)),
                ("Started:", _when(status.get("startTime"), now)),
                ("Completed:", _when(status.get("completionTime"), now)),
                ("Output:", status.get("output_location")),
                ("Images:", "\n".join(status.get("images") or [])),
                ("Record:", status.get("output_url")),
                ("Response:", json.dumps(status["response"]) if status.get("response") else ""),
            ]
        )
    ]
    if callback_spec:
        parts.append(Text("\nCallback", style="bold underline"))
        parts.append(
            _fields(
                [
                    ("URL:", callback_spec.get("url")),
                    ("Signed:", "yes" if callback_spec.get("secretRef") else "no"),
                    ("On start:", "yes" if callback_spec.get("onStart") else "no"),
                    ("State:", callback.get("state")),
                    ("Attempts:", callback.get("attempts")),
                    ("Last error:", callback.get("lastError")),
                    ("Last attempt:", _when(callback.get("lastAttemptTime"), now)),
                ]
            )
        )
    conditions = status.get("conditions") or []
    if conditions:
        table = Table(title=None, box=None, header_style="bold", pad_edge=False)
        for column in ("TYPE", "STATUS", "REASON", "AGE", "MESSAGE"):
            table.add_column(column)
        for condition in conditions:
            table.add_row(
                condition.get("type", ""),
                condition.get("status", ""),
                condition.get("reason", ""),
                age(parse_time(condition.get("lastTransitionTime")), now),
                Text(condition.get("message", "")),
            )
        parts += [Text("\nConditions", style="bold underline"), table]
    parts.append(Text("\nEvents", style="bold underline"))
    if events:
        table = Table(box=None, header_style="bold", pad_edge=False)
        for column in ("TYPE", "REASON", "AGE", "FROM", "MESSAGE"):
            table.add_column(column)
        for event in events:
            source = event.reporting_component or (event.source.component if event.source else "") or ""
            when = age(_event_time(event), now)
            table.add_row(event.type or "", event.reason or "", when, source, Text(event.message or ""))
        parts.append(table)
    else:
        parts.append(Text("<none>"))
    return Group(*parts)
