"""Logging of the operator and the agent: JSON lines for log collectors, or text for a terminal.

Every line carries the namespace, task and runtime it is about when there is one: from a context the code binds
(`log_context`, `bind`), and from kopf's own per-object loggers (their `k8s_ref`), so kopf's lines have them too.
kopf leaves logging alone unless told (`kopf.configure` is its CLI's setup); this module is the one setup for both.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

CONTEXT_FIELDS = ("namespace", "task", "runtime", "pod")
_context: ContextVar[dict[str, str]] = ContextVar("sdtask_log_context", default={})  # noqa: B039 - never mutated
# kopf's extras that only steer its Event posting.
_KOPF_EXTRAS = ("k8s_skip", "k8s_ref", "settings")
_KINDS = {"SDTask": "task", "SDRuntime": "runtime", "Pod": "pod"}
NOISY = ("botocore", "boto3", "urllib3", "httpx", "httpcore", "kubernetes", "s3transfer")


def bind(**fields: str | None) -> None:
    """Add fields to every later line of the current asyncio task or thread (e.g. a runtime's daemon)."""
    _context.set({**_context.get(), **{k: v for k, v in fields.items() if v}})


@contextlib.contextmanager
def log_context(**fields: str | None) -> Iterator[None]:
    """Fields on every line logged inside the block (e.g. while the agent runs one task)."""
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v}})
    try:
        yield
    finally:
        _context.reset(token)


def context_fields(record: logging.LogRecord) -> dict[str, str]:
    fields = dict(_context.get())
    ref = getattr(record, "k8s_ref", None)
    if isinstance(ref, dict):
        if ref.get("namespace"):
            fields.setdefault("namespace", str(ref["namespace"]))
        key = _KINDS.get(str(ref.get("kind")))
        if key and ref.get("name"):
            fields.setdefault(key, str(ref["name"]))
    return fields


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in context_fields(record).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class TextFormatter(logging.Formatter):
    """`time level logger [namespace/task runtime=...]: message`: short enough to read in a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        fields = {k: getattr(record, k) for k in CONTEXT_FIELDS if getattr(record, k, None)}
        where = "/".join(fields[k] for k in ("namespace", "task") if k in fields)
        extra = " ".join(f"{k}={fields[k]}" for k in ("runtime", "pod") if k in fields)
        record.context = f" [{' '.join(p for p in (where, extra) if p)}]" if fields else ""
        return super().format(record)


def make_formatter(fmt: str, component: str) -> logging.Formatter:
    if fmt == "text":
        return TextFormatter("%(asctime)s %(levelname)s %(name)s%(context)s: %(message)s")
    return JsonFormatter(
        "%(levelname)s %(name)s %(message)s",
        rename_fields={"levelname": "level", "name": "logger"},
        static_fields={"component": component},
        reserved_attrs=[*RESERVED_ATTRS, *_KOPF_EXTRAS],
        timestamp="time",  # ISO 8601 in UTC
    )


def resolve_format(fmt: str, stream: Any = None) -> str:
    """auto: text on a terminal, JSON elsewhere (a pod's log, a file)."""
    if fmt in ("json", "text"):
        return fmt
    stream = stream or sys.stderr
    return "text" if hasattr(stream, "isatty") and stream.isatty() else "json"


def configure(level: str = "info", fmt: str = "auto", component: str = "sdtask") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(make_formatter(resolve_format(fmt), component))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)
    if level.lower() != "debug":
        # As kopf's own setup does: asyncio's debug chatter only in debug mode.
        logging.getLogger("asyncio").setLevel(logging.WARNING)
