"""The commands that run the system's parts (the image's ENTRYPOINT is `sdtask`): operator, agent, the stand-in Web UI.
Their flags are a contract with the chart, the Makefile and the tests: keep them. The local dev tools (`make dev`,
`make demo`) are `python -m sdtask.devcluster.dev` / `.demo`: the product never imports the dev cluster."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from sdtask.cli.state import settings

app = typer.Typer()


def _logging(component: str) -> None:
    from sdtask.logs import configure

    configure(settings().log_level, settings().log_format, component)


@app.command(rich_help_panel="Services")
def operator(
    liveness: Annotated[str, typer.Option(help="kopf's liveness endpoint ('' = off)")] = "http://0.0.0.0:8081/healthz",
) -> None:
    """Run the operator (kopf)."""
    import kopf

    from sdtask.config import OperatorSettings
    from sdtask.controller.main import OperatorMemo  # the import registers the handlers

    config = OperatorSettings.from_env()
    _logging("operator")  # instead of kopf.configure: one format for kopf's lines and ours
    if settings().log_level != "debug":
        # kopf logs every handled event at INFO; our Events and logs already tell each task's story.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    kopf.run(
        standalone=True,  # one replica by design; no peering objects needed
        clusterwide=not config.namespaces,
        namespaces=config.namespaces,
        liveness_endpoint=liveness or None,
        memo=OperatorMemo.for_settings(config),
    )


@app.command(rich_help_panel="Services")
def agent() -> None:
    """Run the agent sidecar of a runtime pod."""
    from sdtask.agent.runner import run_agent
    from sdtask.config import AgentSettings

    _logging("agent")
    raise typer.Exit(asyncio.run(run_agent(AgentSettings.from_env())))


@app.command("fetch-model", rich_help_panel="Services")
def fetch_model() -> None:
    """Init container: fetch a static runtime's checkpoint from models.s3Prefix."""
    from sdtask.agent.models import run_fetch_model
    from sdtask.config import AgentSettings

    _logging("fetch-model")
    # The kubelet reads the container's termination message from here (terminationMessagePath's default).
    termination_log = Path(os.environ.get("SDTASK_TERMINATION_LOG", "/dev/termination-log"))
    raise typer.Exit(run_fetch_model(AgentSettings.from_env(), termination_log))


# Every argument after the command, options and --help included, is the stand-in's own.
@app.command(
    "webui-standin",
    rich_help_panel="Services",
    add_help_option=False,
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "allow_interspersed_args": False},
)
def webui_standin(ctx: typer.Context) -> None:
    """Run the stand-in SD Web UI (tests, dev); its options (the real Web UI's flags) follow; --help lists them."""
    # The stand-in is a test double, not product code: the CLI hands over to its own program (same process, so
    # signals and the exit code are the stand-in's) instead of importing it.
    os.execv(sys.executable, [sys.executable, "-m", "sdtask.standin", *ctx.args])


@app.command(rich_help_panel="Tasks")
def submit(
    file: Annotated[str, typer.Argument(help="JSON or YAML request body; - for stdin")],
    name: Annotated[str | None, typer.Option(help="SDTask name (default: derived from the task id)")] = None,
    namespace: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Print the SDTask for a request body (new or legacy form), for kubectl apply or GitOps."""
    import yaml

    from sdtask.submit import manifest_from_body, read_body

    manifest = manifest_from_body(read_body(file), name=name, namespace=namespace)
    sys.stdout.write(yaml.safe_dump(manifest, sort_keys=False))
