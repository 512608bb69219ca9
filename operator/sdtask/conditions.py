"""Kubernetes-style conditions as pure functions over plain dicts (what status patches carry)."""

from __future__ import annotations

import datetime as dt
from typing import Any

Condition = dict[str, Any]


def now_iso(now: dt.datetime | None = None) -> str:
    moment = now or dt.datetime.now(dt.UTC)
    return moment.astimezone(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def set_condition(
    conditions: list[Condition] | None,
    type_: str,
    status: bool | str,
    reason: str,
    message: str,
    now: dt.datetime | None = None,
) -> list[Condition]:
    """Return a new list with the condition set; its transition time moves only when its status changes."""
    status_text = status if isinstance(status, str) else ("True" if status else "False")
    result = [dict(c) for c in conditions or []]
    for condition in result:
        if condition.get("type") == type_:
            if condition.get("status") != status_text:
                condition["lastTransitionTime"] = now_iso(now)
            condition.update(status=status_text, reason=reason, message=message)
            return result
    result.append(
        {"type": type_, "status": status_text, "reason": reason, "message": message, "lastTransitionTime": now_iso(now)}
    )
    return result


def condition_is(conditions: list[Condition] | None, type_: str, status: str = "True") -> bool:
    return any(c.get("type") == type_ and c.get("status") == status for c in conditions or [])
