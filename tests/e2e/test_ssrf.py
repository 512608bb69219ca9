"""SSRF, end to end, with the DEFAULT address policies: links and callbacks aimed at loopback, link-local (cloud
metadata), private, IPv4-mapped and 6to4 addresses, or led there by a redirect or by DNS, are refused, and nothing
reaches the target.

The rest of the e2e suite runs with loopback allowed (its image server and receiver live there); this module restarts
the operator with the default callback policy (the agents get it through their pod env) and gives its runtime the
default link policy. One host, 127.0.0.3, is allowed for links and callbacks alike: it plays a trusted server that
redirects to loopback, so the redirect's second hop is what the policy must catch. Traps listen on the loopback
addresses the links name, and must receive nothing.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from sdtask.devcluster.system import LocalSystem
from sdtask.devcluster.waiting import wait_for

from .conftest import Cluster, sample_png

MODEL = "v1-5-pruned-emaonly.safetensors"
TRUSTED_HOST = "127.0.0.3"


class Server(ThreadingHTTPServer):
    """Records every request; answers with `answer(path)`: (status, headers, body)."""

    def __init__(self, host: str, answer: Any, family: socket.AddressFamily = socket.AF_INET) -> None:
        self.address_family = family
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                server.requests.append(f"{self.command} {self.path}")
                status, headers, body = answer(self.path)
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _serve

            def log_message(self, *_: Any) -> None:
                pass

        super().__init__((host, 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])


@pytest.fixture(scope="module")
def trap() -> Iterator[Server]:
    """Where a refused request would land (127.0.0.1, and ::ffff:127.0.0.1 which is the same socket)."""
    server = Server("127.0.0.1", lambda _path: (200, {"Content-Type": "image/png"}, sample_png(7)))
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def trap6(trap: Server) -> Iterator[Server]:
    server = Server("::1", lambda _path: (200, {"Content-Type": "image/png"}, sample_png(7)), socket.AF_INET6)
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def trusted(trap: Server) -> Iterator[Server]:
    """An allowed host that serves an image, and redirects elsewhere to the trap."""

    def answer(path: str) -> tuple[int, dict[str, str], bytes]:
        if path.startswith("/to-loopback"):
            return 302, {"Location": f"http://127.0.0.1:{trap.port}/stolen.png"}, b""
        if path.startswith("/to-name"):
            return 307, {"Location": f"http://localhost:{trap.port}/stolen.png"}, b""
        return 200, {"Content-Type": "image/png"}, sample_png(3)

    server = Server(TRUSTED_HOST, answer)
    yield server
    server.shutdown()


def restart_operator_with(system: LocalSystem, env: dict[str, str | None]) -> dict[str, str | None]:
    """Restart the operator with `env` changed (None: unset); the previous values, to restore."""
    current = system.operator.env if system.operator.env is not None else {}
    previous = {key: current.get(key) for key in env}
    updated = {key: value for key, value in current.items() if key not in env}
    updated.update({key: value for key, value in env.items() if value is not None})
    system.operator.env = updated
    system.restart_operator(crash=False)
    return previous


@pytest.fixture(scope="module", autouse=True)
def default_policies(cluster: Cluster, trusted: Server) -> Iterator[None]:
    previous = restart_operator_with(
        cluster.system,
        {"SDTASK_ALLOW_PRIVATE_CALLBACKS": None, "SDTASK_ALLOWED_CALLBACK_HOSTS": TRUSTED_HOST},
    )
    try:
        cluster.models("guarded", MODEL)
        cluster.runtime(
            "guarded",
            "pool-a",
            checkpoint=MODEL,
            agent={"allowedLinkHosts": [TRUSTED_HOST]},  # otherwise the default: no private addresses
            scaling={"minReplicas": 2, "maxReplicas": 2},
        )
        yield
        cluster.delete_runtimes_and_wait()
    finally:
        restart_operator_with(cluster.system, previous)


def targets(trap: Server, trap6: Server, trusted: Server) -> dict[str, tuple[str, str]]:
    """name -> (URL, what the refusal must say)."""
    port = trap.port
    return {
        "loopback": (f"http://127.0.0.1:{port}/a.png", "127.0.0.1 is a loopback address"),
        "ipv6-loopback": (f"http://[::1]:{trap6.port}/a.png", "::1 is a loopback address"),
        "metadata": ("http://169.254.169.254/latest/meta-data/", "link-local"),
        "private": (f"http://10.1.2.3:{port}/a.png", "10.1.2.3 is a private address"),
        "ipv4-mapped": (f"http://[::ffff:127.0.0.1]:{port}/a.png", "IPv4-mapped"),
        "6to4": (f"http://[2002:7f00:1::]:{port}/a.png", "6to4 address embedding 127.0.0.1"),
        "dns-localhost": (f"http://localhost:{port}/a.png", "localhost resolves to 127.0.0.1"),
        "dns-vm": (f"http://vm:{port}/a.png", "vm resolves to 127.0.0.1"),
        "redirect-to-loopback": (f"http://{TRUSTED_HOST}:{trusted.port}/to-loopback", "127.0.0.1 is a loopback"),
        "redirect-to-name": (f"http://{TRUSTED_HOST}:{trusted.port}/to-name", "localhost resolves to 127.0.0.1"),
    }


def link_task(task_id: str, link: str) -> dict[str, Any]:
    return {
        "metadata": {"id": task_id, "runtime": "guarded", "tasktype": "image-to-image", "prefix": "ssrf"},
        "content": {"prompt": "p", "steps": 2, "width": 64, "height": 64, "init_images": [link]},
    }


def text_task(task_id: str) -> dict[str, Any]:
    return {
        "metadata": {"id": task_id, "runtime": "guarded", "tasktype": "text-to-image", "prefix": "ssrf"},
        "content": {"prompt": "p", "steps": 2, "width": 64, "height": 64},
    }


def test_links_to_internal_addresses_fail_the_task_and_reach_nothing(
    cluster: Cluster, trap: Server, trap6: Server, trusted: Server
) -> None:
    cases = targets(trap, trap6, trusted)
    for case, (url, _) in cases.items():
        cluster.submit(link_task(f"link-{case}", url))
    # The trusted host itself is reachable: its refusals above are the policy's, not a dead server's.
    cluster.submit(link_task("link-trusted", f"http://{TRUSTED_HOST}:{trusted.port}/ok.png"))

    assert cluster.wait_finished("link-trusted")["status"]["phase"] == "Succeeded"
    for case, (_, said) in cases.items():
        status = cluster.wait_finished(f"link-{case}")["status"]
        assert (status["phase"], status["reason"]) == ("Failed", "LinkFailed"), (case, status.get("message"))
        assert "refused" in status["message"] and said in status["message"], (case, status["message"])
        assert "allowPrivateLinks" in status["message"], status["message"]  # it says what would allow it
    assert trap.requests == [] and trap6.requests == []
    assert sorted(trusted.requests) == sorted(
        ["GET /ok.png", "GET /to-loopback", "GET /to-name"]
    )  # the redirects were answered, their targets never asked


def test_callbacks_to_internal_addresses_are_refused_and_reach_nothing(
    cluster: Cluster, trap: Server, trap6: Server, trusted: Server
) -> None:
    cases = targets(trap, trap6, trusted)
    before = len(trusted.requests)
    for case, (url, _) in cases.items():
        cluster.submit(text_task(f"cb-{case}"), callback={"url": url})

    for case, (_, said) in cases.items():
        name = f"cb-{case}"
        assert cluster.wait_finished(name)["status"]["phase"] == "Succeeded"  # a callback never changes the result

        def recorded(task: str = name) -> dict[str, Any] | None:
            callback = cluster.status(task).get("callback") or {}
            return callback if callback.get("state") not in (None, "Pending") else None

        callback = wait_for(recorded, 30, f"the callback of {name} to be recorded")
        assert callback["state"] == "Failed", (case, callback)
        if case.startswith("redirect"):  # a signed POST is never redirected: the receiver must answer itself
            assert callback["lastError"].startswith("HTTP 30"), (case, callback)
        else:
            assert "refused" in callback["lastError"] and said in callback["lastError"], (case, callback)
            assert "allowPrivateCallbacks" in callback["lastError"], callback
            assert callback["attempts"] == 1  # a refusal is final: no retries against an internal address
        cluster.wait_for_event(name, "Warning", "CallbackFailed")
    assert trap.requests == [] and trap6.requests == []
    assert sorted(trusted.requests[before:]) == ["POST /to-loopback", "POST /to-name"]
