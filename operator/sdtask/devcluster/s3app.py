"""The local S3 server: moto's S3 backend, served as `python -m moto.server` serves it, minus two per-request costs
of moto's general server that the benchmark's profile of it showed (a fifth of its CPU on a busy runtime):

- its dispatcher works out, per request, which of its hundred services a request is for (listing its module folders
  on disk each time); this server serves S3 only (and moto's own /moto-api);
- werkzeug writes an access-log line per request;
- werkzeug closes each connection after its response (S3 keeps them alive).

    python -m sdtask.devcluster.s3app --port N
"""

from __future__ import annotations

import argparse
import io
import signal
import sys
from typing import Any

from flask import Flask
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import run_simple

# Bodies read whole before moto runs: the tests' images and checkpoints are far smaller.
MAX_BUFFERED_BODY = 64 * 1024 * 1024


class S3Dispatcher(DomainDispatcherApplication):
    def __init__(self) -> None:
        super().__init__(create_backend_app)
        self.s3 = create_backend_app("s3")

    def get_application(self, environ: dict[str, Any]) -> Flask:
        if str(environ.get("PATH_INFO", "")).startswith("/moto-api"):
            return super().get_application(environ)
        return self.s3


class QuietRequestHandler(MotoRequestHandler):
    """No access log, and connections kept alive as S3 keeps them.

    werkzeug closes every connection after its response (`Connection: close`), because http.server cannot drain a
    request body the application left unread before reading the next request line; so every request of a client
    paid a new TCP connection on both sides (a tenth of an agent's CPU in its profile). Here the body is read whole
    before the application runs, so nothing is ever left unread; a chunked body or one over MAX_BUFFERED_BODY still
    gets werkzeug's own handling and a closed connection.
    """

    keep_alive = False

    def run_wsgi(self) -> None:
        length = self.headers.get("Content-Length") or "0"
        self.keep_alive = (
            length.isdigit()
            and int(length) <= MAX_BUFFERED_BODY
            and "chunked" not in self.headers.get("Transfer-Encoding", "").lower()
        )
        if not self.keep_alive:
            super().run_wsgi()
            return
        # botocore sends `Expect: 100-continue` with every PUT; http.server has answered it already (parse_request),
        # so the body is on its way. werkzeug would answer it a second time.
        del self.headers["Expect"]
        connection = self.rfile
        self.rfile = io.BytesIO(connection.read(int(length)))  # all werkzeug does with it is read
        try:
            super().run_wsgi()
        finally:
            self.rfile = connection

    def send_header(self, keyword: str, value: str) -> None:
        if self.keep_alive and keyword.lower() == "connection" and value.lower() == "close":
            return
        super().send_header(keyword, value)

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
