"""`sdtask runtimes`: each runtime's pods, their loaded models, and its queue."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from sdtask.api.runtime import CONDITION_DEGRADED
from sdtask.cli.client import ApiException
from sdtask.cli.common import Context, Kubeconfig, Namespace, cluster, err, fail, out
from sdtask.cli.views import EXIT_BAD_INPUT, EXIT_FAILED, age, api_rejection, created

app = typer.Typer()


def render_runtime(runtime: Mapping[str, Any], now: dt.datetime) -> RenderableType:
    meta, spec, status = runtime.get("metadata") or {}, runtime.get("spec") or {}, runtime.get("status") or {}
    serves = "any checkpoint (dynamic)" if spec.get("dynamicModel") else str(spec.get("checkpoint") or "")
    degraded = next(
        (
            c
            for c in status.get("conditions") or []
            if c.get("type") == CONDITION_DEGRADED and c.get("status") == "True"
        ),
        None,
    )
    queue = status.get("queue") or {}
    by_model = ", ".join(f"{q['model'] or 'any'}: {q['tasks']}" for q in queue.get("byModel") or [])
    lines = [
        Text.assemble((str(meta.get("name")), "bold"), f"  serves {serves}  age {age(created(runtime), now)}"),
        Text(
            f"  pods {status.get('readyReplicas') or 0} ready / {status.get('replicas') or 0}"
            f" (desired {status.get('desiredReplicas') or 0})   queue depth {status.get('queued') or 0}"
            f"   running {status.get('running') or 0}"
        ),
    ]
    if by_model:
        lines.append(Text(f"  queued by model: {by_model}"))
    if queue.get("head"):
        lines.append(Text(f"  next: {', '.join(queue['head'])}"))
    if degraded:
        lines.append(Text(f"  degraded: {degraded.get('reason')}: {degraded.get('message')}", style="red"))
    pods = status.get("pods") or []
    if pods:
        table = Table(box=None, header_style="bold", pad_edge=False, padding=(0, 2))
        for column in ("  POD", "PHASE", "READY", "BUSY", "TASK", "MODEL", "NODE"):
            table.add_column(column)
        for pod in pods:
            table.add_row(
                f"  {pod.get('name', '')}",
                pod.get("phase") or "",
                "yes" if pod.get("ready") else "no",
                "yes" if pod.get("busy") else "no",
                pod.get("task") or "-",
                pod.get("model") or "-",
                pod.get("node") or "-",
            )
        return Group(*lines, table)
    return Group(*lines, Text("  no pods (scaled to zero until a task arrives)"))


@app.command(rich_help_panel="Tasks")
def apply(
    files: Annotated[list[str], typer.Option("--filename", "-f", help="SDRuntime or SDTask YAML files")],
    namespace: Namespace = None,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
) -> None:
    """Create or update SDRuntimes and SDTasks from YAML files (server-side apply, like kubectl apply)."""
    kube = cluster(kubeconfig, context, namespace)
    for path in files:
        try:
            documents = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
        except (OSError, yaml.YAMLError) as error:
            fail(f"{path}: {error}", EXIT_BAD_INPUT)
        for document in documents:
            kind = document.get("kind") if isinstance(document, dict) else None
            if kind not in ("SDRuntime", "SDTask"):
                fail(f"{path}: only SDRuntime and SDTask objects, not {kind}", EXIT_BAD_INPUT)
            try:
                kube.apply(document)
            except ApiException as error:
                if error.status in (400, 422):
                    fail(str(api_rejection(path, str(error.body or ""))), EXIT_BAD_INPUT)
                raise
            out.print(f"{kind.lower()}/{document['metadata']['name']} applied", highlight=False)


@app.command(rich_help_panel="Tasks")
def runtimes(
    names: Annotated[list[str] | None, typer.Argument(help="SDRuntime names (default: all)")] = None,
    namespace: Namespace = None,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
) -> None:
    """Runtimes: pods, their loaded models, queue depth and the head of the queue."""
    kube = cluster(kubeconfig, context, namespace)
    listed = sorted(kube.list_runtimes(), key=lambda r: r["metadata"]["name"])
    if names:
        missing = set(names) - {r["metadata"]["name"] for r in listed}
        if missing:
            fail(f"no SDRuntime {', '.join(sorted(missing))} in namespace {kube.namespace}", EXIT_FAILED)
        listed = [r for r in listed if r["metadata"]["name"] in names]
    if not listed:
        err.print(f"no runtimes in namespace {kube.namespace}")
        return
    now = dt.datetime.now(dt.UTC)
    for index, runtime in enumerate(listed):
        if index:
            out.print()
        out.print(render_runtime(runtime, now))
