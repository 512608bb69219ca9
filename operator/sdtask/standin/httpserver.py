"""The stand-in's HTTP plumbing: a threading stdlib server that reads a body (Content-Length or chunked, capped)
and hands (method, path, body, headers) to the application, then writes its JSON answer."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import urlsplit

from sdtask.standin.errors import Payload

logger = logging.getLogger("sdtask.standin.server")

MAX_BODY_BYTES = 256 * 1024 * 1024


class Application(Protocol):
    def handle_request(
        self, method: str, path: str, body: bytes, headers: Mapping[str, str] | None = None
    ) -> tuple[int, Payload, dict[str, str]]: ...


class HTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # a client holding a keep-alive connection must not block stop()

    def __init__(self, address: tuple[str, int], app: Application) -> None:
        self.app = app
        super().__init__(address, _RequestHandler)

    def handle_error(self, request: object, client_address: object) -> None:
        logger.debug("stand-in Web UI: connection from %s failed", client_address, exc_info=True)


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as clients polling /progress expect
    server_version = "sdtask-standin/1"
    timeout = 300  # drop idle connections eventually
    # Headers and body go out in two writes; with Nagle's algorithm the second waits for a delayed ACK (~40 ms).
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        self._answer("GET")

    def do_POST(self) -> None:
        self._answer("POST")

    def do_PUT(self) -> None:
        self._answer("PUT")

    def do_DELETE(self) -> None:
        self._answer("DELETE")

    def _answer(self, method: str) -> None:
        body = self._read_body()
        if body is None:
            self.close_connection = True
            self._send(413, {"detail": "Request body too large"})
            return
        app = self.server.app if isinstance(self.server, HTTPServer) else None
        if app is None:  # pragma: no cover - the handler only runs under HTTPServer
            self._send(500, {"detail": "no application"})
            return
        status, payload, headers = app.handle_request(method, urlsplit(self.path).path, body, dict(self.headers))
        self._send(status, payload, headers)

    def _read_body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return self._read_chunked()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        if length > MAX_BODY_BYTES:
            return None
        return self.rfile.read(length) if length > 0 else b""

    def _read_chunked(self) -> bytes | None:
        chunks: list[bytes] = []
        total = 0
        for chunk in self._chunks():
            total += len(chunk)
            if total > MAX_BODY_BYTES:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    def _chunks(self) -> Iterator[bytes]:
        while True:
            size_line = self.rfile.readline(1024).split(b";", 1)[0].strip()
            size = int(size_line or b"0", 16)
            if size == 0:
                while self.rfile.readline(1024).strip():  # trailers, up to the blank line
                    pass
                return
            yield self.rfile.read(size)
            self.rfile.readline(1024)  # the CRLF after each chunk

    def _send(self, status: int, payload: Payload, headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(payload).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up waiting; nothing to tell it

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("stand-in Web UI: %s %s", self.address_string(), format % args)
