"""The `sdtask` command: one image, one entry point for the operator, the agent, the stand-in Web UI and dev tools."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("botocore", "urllib3", "httpx", "httpcore", "kubernetes"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _operator(args: argparse.Namespace) -> int:
    import kopf

    import sdtask.controller.main  # noqa: F401 - registers the handlers
    from sdtask.config import OperatorSettings

    settings = OperatorSettings.from_env()
    kopf.configure(verbose=args.log_level == "debug", debug=False)  # kopf sets up logging itself
    if args.log_level != "debug":
        # kopf logs every handled event at INFO; our Events and logs already tell each task's story.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    kopf.run(
        standalone=True,  # one replica by design; no peering objects needed
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        liveness_endpoint=args.liveness or None,
    )
    return 0


def _agent(args: argparse.Namespace) -> int:
    from sdtask.agent.runner import run_agent
    from sdtask.config import AgentSettings

    _logging(args.log_level)
    return asyncio.run(run_agent(AgentSettings.from_env()))


def _fetch_model(args: argparse.Namespace) -> int:
    from sdtask.agent.models import run_fetch_model
    from sdtask.config import AgentSettings

    _logging(args.log_level)
    # The kubelet reads the container's termination message from here (terminationMessagePath's default).
    return run_fetch_model(
        AgentSettings.from_env(), Path(os.environ.get("SDTASK_TERMINATION_LOG", "/dev/termination-log"))
    )


def _standin(args: argparse.Namespace) -> int:
    from sdtask.standin.cli import main as standin_main

    return standin_main(args.rest, prog="sdtask webui-standin")


def _dev(args: argparse.Namespace) -> int:
    from sdtask.localstack.dev import run_dev

    _logging(args.log_level)
    return run_dev(Path(args.state_dir))


def _demo(args: argparse.Namespace) -> int:
    from sdtask.localstack.demo import run_demo

    _logging(args.log_level)
    return run_demo(Path(args.out))


def _submit(args: argparse.Namespace) -> int:
    import yaml

    from sdtask.submit import manifest_from_body, read_body

    manifest = manifest_from_body(read_body(args.file), name=args.name, namespace=args.namespace)
    sys.stdout.write(yaml.safe_dump(manifest, sort_keys=False))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdtask", description=__doc__)
    parser.add_argument("--log-level", default="info")
    commands = parser.add_subparsers(dest="command", required=True)

    operator = commands.add_parser("operator", help="run the operator (kopf)")
    operator.add_argument("--liveness", default="http://0.0.0.0:8081/healthz", help="liveness endpoint ('' = off)")
    operator.set_defaults(handler=_operator)

    commands.add_parser("agent", help="run the agent sidecar of a runtime pod").set_defaults(handler=_agent)
    commands.add_parser(
        "fetch-model", help="init container: fetch a static runtime's checkpoint from models.s3Prefix"
    ).set_defaults(handler=_fetch_model)

    # Everything after the subcommand, --help included, goes to the stand-in's own parser (the real Web UI's flags);
    # see main(): argparse.REMAINDER would refuse a leading option such as --port.
    commands.add_parser(
        "webui-standin", help="run the stand-in SD Web UI (tests, dev); --help for its flags", add_help=False
    ).set_defaults(handler=_standin, rest=[])

    submit = commands.add_parser("submit", help="print the SDTask for a request body (new or legacy form)")
    submit.add_argument("file", help="JSON or YAML request body; - for stdin")
    submit.add_argument("--name", help="SDTask name (default: derived from the task id)")
    submit.add_argument("--namespace")
    submit.set_defaults(handler=_submit)

    dev = commands.add_parser("dev", help="run the whole system locally until Ctrl-C")
    dev.add_argument("--state-dir", default=".dev", help="where the kubeconfig, env file and logs go")
    dev.set_defaults(handler=_dev)

    demo = commands.add_parser("demo", help="run the seed image-to-image task end to end on a local stack")
    demo.add_argument("--out", default="demo-output", help="where the result images are downloaded")
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # The stand-in's flags (--port, --help, ...) are its own parser's business: they come back unparsed here.
    args, rest = parser.parse_known_args(argv)
    if args.command == "webui-standin":
        args.rest = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
