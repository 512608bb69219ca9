"""Which task owns an output location `<prefix>/<id>` (pure decisions; the agent does the S3 and API calls).

Output keys are `<prefix>/<id>/...` only (the old system's layout, kept for its readers), so two SDTasks naming the
same prefix and id would overwrite each other's results. The first task to store there writes an owner marker with a
conditional put (`naming.owner_key`); a later task with another uid is refused (`OutputClaimed`) while the owner
still exists. A retry of the same task (same uid, a new attempt) overwrites its own outputs. When the owner is gone
(deleted: by a user, GitOps or its TTL), the next task takes the location over, with a put conditional on the marker
it read, so that `kubectl delete` then `kubectl apply` of a task with the same id works as users expect.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Owner:
    namespace: str
    name: str
    uid: str

    def marker(self) -> dict[str, str]:
        return {"namespace": self.namespace, "name": self.name, "uid": self.uid}

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name} (uid {self.uid})"


def owner_of(task: Mapping[str, Any]) -> Owner:
    meta = task.get("metadata") or {}
    return Owner(str(meta.get("namespace", "")), str(meta.get("name", "")), str(meta.get("uid", "")))


def stored_owner(marker: Any) -> Owner | None:
    """The owner a stored marker names; None when it names none (not a marker of ours: it may be replaced)."""
    if not isinstance(marker, dict):
        return None
    fields = [marker.get(key) for key in ("namespace", "name", "uid")]
    if not all(isinstance(value, str) and value for value in fields):
        return None
    return Owner(*(str(value) for value in fields))


class Claim(enum.Enum):
    OURS = "ours"  # this task owns the location (it just claimed it, or an earlier attempt did)
    CHECK_OWNER = "check-owner"  # another task in our namespace: ours to take only if that task is gone
    TAKE_OVER = "take-over"  # no valid owner recorded
    REFUSED = "refused"  # a task of another namespace: its existence can't be checked from here, so it keeps it


def decide(stored: Owner | None, me: Owner) -> Claim:
    if stored is None:
        return Claim.TAKE_OVER
    if stored.uid == me.uid:
        return Claim.OURS
    if stored.namespace != me.namespace:
        return Claim.REFUSED
    return Claim.CHECK_OWNER


def owner_exists(owner: Owner, found: Mapping[str, Any] | None) -> bool:
    """`found`: the task of that namespace and name now (None when there is none). A task re-created under the same
    name has a new uid: the owner is gone then too."""
    return found is not None and (found.get("metadata") or {}).get("uid") == owner.uid


def claimed_message(location: str, owner: Owner, *, checked: bool = True) -> str:
    if not checked:
        return (
            f"{location} holds the outputs of task {owner} of another namespace; give this task another "
            "metadata.id or prefix"
        )
    return (
        f"{location} holds the outputs of task {owner}, which still exists; give this task another "
        "metadata.id or prefix, or delete that task first"
    )
