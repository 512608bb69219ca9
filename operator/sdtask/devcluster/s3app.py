"""The local S3 server: moto's S3 backend, served as `python -m moto.server` serves it, minus two per-request costs
of moto's general server that the benchmark's profile of it showed (a fifth of its CPU on a busy runtime):

- its dispatcher works out, per request, which of its hundred services a request is for (listing its module folders
  on disk each time); this server serves S3 only (and moto's own /moto-api);
- werkzeug writes an access-log line per request.

    python -m sdtask.devcluster.s3app --port N
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

from flask import Flask
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import run_simple


class S3Dispatcher(DomainDispatcherApplication):
    def __init__(self) -> None:
        super().__init__(create_backend_app)
        self.s3 = create_backend_app("s3")

    def get_application(self, environ: dict[str, Any]) -> Flask:
        if str(environ.get("PATH_INFO", "")).startswith("/moto-api"):
            return super().get_application(environ)
        return self.s3


class QuietRequestHandler(MotoRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """No access log: a line per request is CPU the benchmark would count."""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="moto's S3 on loopback, for the local stack")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    run_simple(args.host, args.port, S3Dispatcher(), threaded=True, request_handler=QuietRequestHandler)


if __name__ == "__main__":
    main()
