"""The task commands: run, get, list, describe, wait, cancel, download. Thin: fetch, call `views`, print."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.table import Table

from sdtask.cli.client import ApiException, Cluster, download_outputs, s3_client_for
from sdtask.cli.common import Context, Kubeconfig, Namespace, cluster, err, fail, out
from sdtask.cli.progress import Waiter
from sdtask.cli.views import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    InputError,
    api_rejection,
    exit_code,
    matches,
    phase_of,
    queue_places,
    result_object,
    state_line,
    task_row,
    validate_manifest,
)
from sdtask.constants import FINISHED_PHASES, Phase
from sdtask.request import is_legacy_body
from sdtask.submit import manifest_from_body, read_body

app = typer.Typer()

Timeout = Annotated[float | None, typer.Option(help="seconds to wait at most (default: no limit)")]
OutDir = Annotated[Path | None, typer.Option("--out", help="download each task's outputs into OUT/<task name>/")]
S3Endpoint = Annotated[
    str | None,
    typer.Option(
        "--s3-endpoint", envvar="SDTASK_S3_ENDPOINT", help="S3-compatible endpoint (default: the runtime's, else AWS)"
    ),
]
Output = Annotated[str, typer.Option("--output", "-o", help="table, json or yaml")]
TaskNames = Annotated[list[str], typer.Argument(help="SDTask names")]


def load_request(source: str, name: str | None) -> dict[str, Any]:
    """A request body file (or - for stdin) -> a validated SDTask manifest; InputError names the bad field."""
    try:
        body = read_body(source)
    except FileNotFoundError:
        raise InputError(source, "", "no such file") from None
    except (ValueError, yaml.YAMLError) as error:
        raise InputError(source, "", f"not a JSON or YAML object: {error}") from None
    legacy = is_legacy_body(body)
    try:
        manifest = manifest_from_body(body, name=name)
    except ValueError as error:  # the legacy conversion names its field in the message
        raise InputError(source, "", str(error)) from None
    except (KeyError, TypeError):
        raise InputError(source, "task.metadata.id", "is missing") from None
    validate_manifest(source, manifest, legacy)
    return manifest


def _no_such_task(kube: Cluster, names: list[str]) -> str:
    return f"no SDTask {', '.join(names)} in namespace {kube.namespace}"


def _task_or_fail(kube: Cluster, name: str) -> dict[str, Any]:
    """The task, or exit 1 naming it and the namespace."""
    try:
        return kube.get_task(name)
    except ApiException as error:
        if error.status == 404:
            fail(_no_such_task(kube, [name]), EXIT_FAILED)
        raise


def _outputs_endpoint(kube: Cluster, task: dict[str, Any], endpoint: str | None) -> str | None:
    if endpoint:
        return endpoint
    runtime = kube.get_runtime(str((task.get("status") or {}).get("runtime") or ""))
    configured: str | None = ((runtime or {}).get("spec") or {}).get("output", {}).get("endpoint")
    return configured


def _download(kube: Cluster, task: dict[str, Any], folder: Path, endpoint: str | None) -> None:
    status = task.get("status") or {}
    uris = [*status.get("images", []), *([status["output_url"]] if status.get("output_url") else [])]
    if not uris:
        return
    try:
        saved = download_outputs(s3_client_for(_outputs_endpoint(kube, task, endpoint)), uris, folder)
    except Exception as error:  # botocore's many error types; the task itself succeeded
        fail(f"{task['metadata']['name']}: downloading {uris[0]}: {error}", EXIT_FAILED)
    for path in saved:
        err.print(f"downloaded {path}", highlight=False)


def _finish(kube: Cluster, tasks: list[dict[str, Any]], out_dir: Path | None, endpoint: str | None) -> int:
    for task in tasks:
        out.print(json.dumps(result_object(task)), highlight=False)
        if phase_of(task) == Phase.FAILED:
            err.print(f"[red]{task['metadata']['name']} failed:[/] {state_line(task, None)}", highlight=False)
    for task in tasks:
        if out_dir is not None and phase_of(task) == Phase.SUCCEEDED:
            _download(kube, task, out_dir / task["metadata"]["name"], endpoint)
    return exit_code(tasks)


def _wait(kube: Cluster, names: list[str], timeout: float | None, out_dir: Path | None, endpoint: str | None) -> int:
    waiter = Waiter(kube, names, timeout=timeout)
    if not waiter.wait():
        pending = [n for n in names if phase_of(waiter.latest[n]) not in FINISHED_PHASES]
        fail(f"timed out after {timeout:g}s waiting for {', '.join(pending)}", EXIT_FAILED)
    return _finish(kube, [waiter.latest[n] for n in names], out_dir, endpoint)


@app.command(rich_help_panel="Tasks")
def run(
    files: Annotated[list[str], typer.Argument(help="request bodies (JSON or YAML; - for stdin), old API format")],
    name: Annotated[str | None, typer.Option(help="SDTask name (one file only; default: from the task id)")] = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="create the tasks and return")] = False,
    out_dir: OutDir = None,
    timeout: Timeout = None,
    s3_endpoint: S3Endpoint = None,
    namespace: Namespace = None,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
) -> None:
    """Create SDTasks from request bodies of the old API (the {task: ...} envelope or the legacy flat body), wait with
    a live display, print each response object, and download the outputs.

    Exit codes: 0 all succeeded, 1 a task failed (its reason is printed), 2 bad input (the field is named).
    """
    if name and len(files) > 1:
        fail("--name needs exactly one file", EXIT_BAD_INPUT)
    try:  # every body is checked before the first task is created: a batch is all or nothing at this stage
        manifests = [(source, load_request(source, name)) for source in files]
    except InputError as error:
        fail(str(error), EXIT_BAD_INPUT)
    kube = cluster(kubeconfig, context, namespace)
    names = []
    for source, manifest in manifests:
        try:
            kube.create_task(manifest)
        except ApiException as error:
            if error.status == 409:
                fail(f"{source}: SDTask {manifest['metadata']['name']} already exists (pass --name)", EXIT_BAD_INPUT)
            if error.status in (400, 422):
                fail(str(api_rejection(source, str(error.body or ""))), EXIT_BAD_INPUT)
            raise
        names.append(manifest["metadata"]["name"])
        err.print(f"sdtask/{manifest['metadata']['name']} created", highlight=False)
    if no_wait:
        return
    raise typer.Exit(_wait(kube, names, timeout, out_dir, s3_endpoint))


@app.command(rich_help_panel="Tasks")
def wait(
    names: TaskNames,
    out_dir: OutDir = None,
    timeout: Timeout = None,
    s3_endpoint: S3Endpoint = None,
    namespace: Namespace = None,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
) -> None:
    """Wait for tasks to finish with the live display; exit 0 when all succeeded, 1 otherwise."""
    kube = cluster(kubeconfig, context, namespace)
    raise typer.Exit(_wait(kube, names, timeout, out_dir, s3_endpoint))


def _table(rows: list[dict[str, str]], columns: list[str]) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in columns:
        table.add_column(column, no_wrap=column in ("NAME", "OUTPUT"))
    for row in rows:
        table.add_row(*(row[c] for c in columns))
    return table


COLUMNS = ["NAME", "PHASE", "RUNTIME", "MODEL", "PROGRESS", "ATTEMPTS", "AGE", "OUTPUT"]


def _print_tasks(tasks: list[dict[str, Any]], listed: list[dict[str, Any]], output: str) -> None:
    if output in ("json", "yaml"):
        document: Any = tasks[0] if len(tasks) == 1 else {"apiVersion": "v1", "kind": "List", "items": tasks}
        text = json.dumps(document, indent=2) if output == "json" else yaml.safe_dump(document, sort_keys=False)
        out.print(text, highlight=False, markup=False)
        return
    if output != "table":
        fail(f"--output must be table, json or yaml, not {output!r}", EXIT_BAD_INPUT)
    now = dt.datetime.now(dt.UTC)
    places = queue_places(listed)
    rows = [task_row(t, places.get((t["metadata"].get("namespace", ""), t["metadata"]["name"])), now) for t in tasks]
    out.print(_table(rows, COLUMNS))


@app.command(rich_help_panel="Tasks")
def get(
    names: TaskNames,
    output: Output = "table",
    namespace: Namespace = None,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
) -> None:
    """Show tasks: phase, runtime, model, progress or queue position, age, output."""
    kube = cluster(kubeconfig, context, namespace)
    listed = kube.list_tasks()
    by_name = {t["metadata"]["name"]: t for t in listed}
    missing = [n for n in names if n not in by_name]
    if missing:
        fail(_no_such_task(kube, missing), EXIT_FAILED)
    _print_tasks([by_name[n] for n in names], listed, output)


@app.command("list", rich_help_panel="Tasks")
def list_tasks(
    phase: Annotated[list[str], typer.Option(help="only tasks in this phase (repeatable)")] = [],  # noqa: B006
    runtime: Annotated[str | None, typer.Option(help="only tasks of this runtime")] = None,
    selector: Annotated[str | None, typer.Option("--selector", "-l", help="label selector")] = None,
    all_namespaces: Annotated[bool, typer.Option("--all-namespaces", "-A")] = False,
    output: Output = "table",
    namespace: Namespace = None,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
) -> None:
    """List tasks, oldest first, with filters."""
    kube = cluster(kubeconfig, context, namespace)
    # The API server filters by runtime (a selectable field): a runtime's tasks without fetching every task.
    by_runtime = f"status.runtime={runtime}" if runtime else None
    listed = kube.list_tasks(selector, all_namespaces=all_namespaces, field_selector=by_runtime)
    chosen = sorted(
        (t for t in listed if matches(t, phases=phase, runtime=runtime)),
        key=lambda t: (t["metadata"].get("creationTimestamp") or "", t["metadata"]["name"]),
    )
    if not chosen and output == "table":
        err.print(f"no tasks in {'any namespace' if all_namespaces else 'namespace ' + kube.namespace}")
        return
    _print_tasks(chosen, listed, output)


@app.command(rich_help_panel="Tasks")
def describe(
    name: Annotated[str, typer.Argument(help="SDTask name")],
    namespace: Namespace = None,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
) -> None:
    """The story of a task: state, attempts, result, callback, conditions and Events."""
    from sdtask.cli.describe import render_task

    kube = cluster(kubeconfig, context, namespace)
    task = _task_or_fail(kube, name)
    places = queue_places(kube.list_tasks()) if phase_of(task) == Phase.PENDING else {}
    events = kube.events(name, task["metadata"].get("uid"))
    out.print(render_task(task, places.get((kube.namespace, name)), events, dt.datetime.now(dt.UTC)))


@app.command(rich_help_panel="Tasks")
def cancel(
    names: TaskNames,
    namespace: Namespace = None,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
) -> None:
    """Cancel tasks: a queued one just goes, a running one has its generation interrupted and nothing uploaded."""
    kube = cluster(kubeconfig, context, namespace)
    code = 0
    for name in names:
        try:
            kube.delete_task(name)
        except ApiException as error:
            if error.status != 404:
                raise
            err.print(f"[red]{_no_such_task(kube, [name])}[/]", highlight=False)
            code = EXIT_FAILED
            continue
        out.print(f"sdtask/{name} cancelled", highlight=False)
    raise typer.Exit(code)


@app.command(rich_help_panel="Tasks")
def download(
    names: TaskNames,
    out_dir: Annotated[Path, typer.Option("--out", help="into OUT/<task name>/")] = Path("."),
    s3_endpoint: S3Endpoint = None,
    namespace: Namespace = None,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
) -> None:
    """Download the images and the .out record of succeeded tasks."""
    kube = cluster(kubeconfig, context, namespace)
    for name in names:
        task = _task_or_fail(kube, name)
        if phase_of(task) != Phase.SUCCEEDED:
            fail(f"{name} has no outputs: {phase_of(task)} {state_line(task, None)}", EXIT_FAILED)
        _download(kube, task, out_dir / name, s3_endpoint)


__all__ = ["app", "load_request"]
