"""What every task command shares: the cluster options, the consoles, error exits."""

from __future__ import annotations

import os
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from sdtask.cli.client import Cluster, ClusterError, connect

# Results (response objects, tables) go to stdout; the live display and messages to stderr, so
# `sdtask run body.json > responses.jsonl` keeps only the results.
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

Namespace = Annotated[
    str | None, typer.Option("--namespace", "-n", help="namespace (default: the kube context's, else default)")
]
Kubeconfig = Annotated[
    str | None, typer.Option("--kubeconfig", envvar="KUBECONFIG", help="kubeconfig file (default: ~/.kube/config)")
]
Context = Annotated[str | None, typer.Option("--context", help="kube context (default: the current one)")]


def fail(message: str, code: int) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def cluster(kubeconfig: str | None, context: str | None, namespace: str | None) -> Cluster:
    # KUBECONFIG may list several files (kubectl merges them); the client library takes one: the first.
    if kubeconfig and os.pathsep in kubeconfig:
        kubeconfig = kubeconfig.split(os.pathsep)[0]
    try:
        client, default_namespace = connect(kubeconfig, context)
    except ClusterError as error:
        fail(str(error), 1)
    return Cluster(client, namespace or default_namespace)
