"""The `sdtask` command: one image and one entry point for the operator, the agent, the stand-in and dev tools."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def _dev(args: argparse.Namespace) -> int:
    from sdtask.localstack.dev import run_dev

    return run_dev(Path(args.state_dir))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdtask", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    dev = commands.add_parser("dev", help="run the whole system locally until Ctrl-C")
    dev.add_argument("--state-dir", default=".dev", help="where the kubeconfig, env file and logs go")
    dev.set_defaults(handler=_dev)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
