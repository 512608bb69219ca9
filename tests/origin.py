"""A local web server for the outbound tests (links and callbacks): scripted routes, hits counted per path.

Plain `http.server` on 127.0.0.1 (optionally TLS): a real socket and a real HTTP/1.1 peer for httpx, nothing mocked.
"""

from __future__ import annotations

import contextlib
import gzip
import ssl
import threading
import zlib
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PNG = b"\x89PNG\r\n\x1a\n" + b"cat" * 10
Route = Callable[[BaseHTTPRequestHandler], None]


def gzip_bomb(decoded_bytes: int, layers: int = 2) -> bytes:
    """`decoded_bytes` zeros, gzipped `layers` times, built in pieces so the test itself stays small in memory."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1024 * 1024)
    parts = []
    for _ in range(decoded_bytes // len(zeros)):
        parts.append(compressor.compress(zeros))
    parts.append(compressor.flush())
    data = b"".join(parts)
    for _ in range(layers - 1):
        data = gzip.compress(data, 9)
    return data


class Origin:
    """Routes by path; `extra` adds or overrides routes; `seen_hosts` records the Host header of each request."""

    def __init__(self, tls: ssl.SSLContext | None = None, extra: dict[str, Route] | None = None) -> None:
        self.hits: Counter[str] = Counter()
        self.seen_hosts: list[str] = []
        self.bodies: list[bytes] = []
        self.release = threading.Event()
        self.extra = extra or {}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = int(self.server.server_address[1])
        self.scheme = "https" if tls else "http"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)

    def __enter__(self) -> Origin:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        origin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                origin.hits[self.path] += 1
                origin.seen_hosts.append(self.headers.get("Host", ""))
                origin.route(self)

            def do_POST(self) -> None:
                origin.bodies.append(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                self.do_GET()

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def route(self, handler: BaseHTTPRequestHandler) -> None:
        path = handler.path.split("?", 1)[0]
        if path in self.extra:
            self.extra[path](handler)
        elif path == "/cat.png":
            reply(handler, 200, PNG, {"Content-Type": "image/png"})
        elif path == "/cat.png.gz":
            reply(handler, 200, gzip.compress(PNG), {"Content-Encoding": "gzip"})
        elif path == "/cat.png.deflate":  # raw deflate under the name "deflate", as some servers send it
            raw = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
            reply(handler, 200, raw.compress(PNG) + raw.flush(), {"Content-Encoding": "deflate"})
        elif path == "/cat.png.br":
            reply(handler, 200, b"\x0b\x02\x80cat\x03", {"Content-Encoding": "br"})
        elif path == "/thrice":
            body = gzip.compress(gzip.compress(gzip.compress(PNG)))
            reply(handler, 200, body, {"Content-Encoding": "gzip, gzip, gzip"})
        elif path == "/empty":
            reply(handler, 200, b"")
        elif path == "/big-announced":
            reply(handler, 200, b"x" * 1025)
        elif path == "/big-chunked":
            send_chunked(handler, [b"x" * 512] * 4)
        elif path == "/exact":
            send_chunked(handler, [b"x" * 512, b"y" * 512])
        elif path == "/redirect-to":
            reply(handler, 302, b"", {"Location": handler.path.split("?", 1)[1]})
        elif path == "/loop":
            reply(handler, 307, b"", {"Location": "/loop"})
        elif path == "/hang":
            self.release.wait(timeout=10)  # released at teardown: the client gives up first
            reply(handler, 200, PNG)
        else:
            reply(handler, 404, b"not here")


def reply(handler: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
    handler.send_response(status)
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client hung up once over its cap
        handler.wfile.write(body)


def send_chunked(handler: BaseHTTPRequestHandler, chunks: list[bytes]) -> None:
    """No Content-Length: only counting while reading can enforce the cap."""
    handler.send_response(200)
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    try:
        for chunk in chunks:
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        handler.wfile.write(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
