"""Finishing what a crash left half done. Decisions are pure; `recover` acts on them (from housekeeping).

A finished task whose callback is still `Pending` long after any sender would have given up (its agent crashed
before the delivery ended) gets it delivered from the operator's outbox: callbacks are delivered at least once.

(A dispatch is one status write, status.pod being what the agent watches: no crash leaves one half done.)
"""

from __future__ import annotations

import datetime as dt
import logging

from sdtask.callbacks import CallbackPolicy, shared_outbox
from sdtask.clients.kube import Kube, is_not_found
from sdtask.constants import FINISHED_PHASES, OPERATOR_NAME
from sdtask.controller.views import TaskView

log = logging.getLogger(__name__)
REDELIVERY_MARGIN_SECONDS = 60.0


def callback_abandoned(task: TaskView, now: dt.datetime, policy: CallbackPolicy) -> bool:
    """Pending past the sender's whole delivery deadline (plus a margin): nobody is delivering it any more."""
    if task.phase not in FINISHED_PHASES or task.callback_state != "Pending" or task.completion_time is None:
        return False
    return (now - task.completion_time).total_seconds() > policy.deadline + REDELIVERY_MARGIN_SECONDS


async def recover(kube: Kube, tasks: list[TaskView], policy: CallbackPolicy, now: dt.datetime) -> None:
    for task in tasks:
        try:
            if callback_abandoned(task, now, policy):
                body = await kube.get_task(task.namespace, task.name)
                status = body.get("status") or {}
                if (status.get("callback") or {}).get("state") == "Pending":
                    log.info("%s/%s: callback left Pending; redelivering", task.namespace, task.name)
                    shared_outbox(kube, policy, OPERATOR_NAME).submit(body, status)
        except Exception as error:  # one task must not stop the others' recovery
            if not is_not_found(error):
                log.warning("recovery of %s/%s failed: %s", task.namespace, task.name, error)
