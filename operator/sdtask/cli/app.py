"""The `sdtask` command: one image, one entry point for the operator, the agent, the stand-in Web UI, and
the commands people use instead of kubectl (run, get, list, describe, wait, cancel, download, runtimes)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from sdtask.cli import runtimes, services, tasks
from sdtask.cli.state import settings

app = typer.Typer(
    name="sdtask",
    help=__doc__,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
for part in (services.app, tasks.app, runtimes.app):
    app.add_typer(part)


@app.callback()
def _global(
    log_level: Annotated[str, typer.Option(envvar="SDTASK_LOG_LEVEL", help="debug, info, warning or error")] = "info",
    log_format: Annotated[
        str, typer.Option(envvar="SDTASK_LOG_FORMAT", help="json, text, or auto (text on a terminal, else json)")
    ] = "auto",
) -> None:
    settings().log_level = log_level.lower()
    settings().log_format = log_format.lower()


def parse_command_line(argv: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """(command, its parameters) for a command line, without running it: lets the chart tests check the args they
    render."""
    group = typer.main.get_command(app)
    assert isinstance(group, TyperGroup)
    context = group.make_context("sdtask", list(argv), resilient_parsing=True)
    # The command name sits in the protected args (a private attribute in the click that typer vendors).
    protected = list(getattr(context, "protected_args", None) or getattr(context, "_protected_args", []))
    name, command, rest = group.resolve_command(context, protected + list(context.args))
    assert name is not None and command is not None
    return name, command.make_context(name, rest, parent=context).params


def main(argv: Sequence[str] | None = None) -> int:
    """Runs a command; usage errors exit 2, as the run command's bad input does."""
    try:
        app(args=list(argv) if argv is not None else None, prog_name="sdtask")
    except SystemExit as done:
        code = done.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0
