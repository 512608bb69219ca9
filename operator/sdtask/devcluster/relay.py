"""TCP relays from the real node's pod bridge to services on loopback: the API server and S3 for pods.

The control plane and moto listen on 127.0.0.1 only, which a pod (its own network namespace) can't reach. Rather than
binding them to every interface, each gets a relay on the bridge's own address, which only the pods of this machine
see. The API server then is the `kubernetes` Service's endpoint (through kube-proxy, as on a real cluster) and the
S3 endpoint of the runtimes is `http://<bridge address>:<port>`.

    python -m sdtask.devcluster.relay 10.89.0.1:6443=127.0.0.1:40123 10.89.0.1:9000=127.0.0.1:40124

`Relay` runs one as a child process; the fault tests put one in front of S3 and stop it to play an S3 outage
(connections refused, open ones cut) without losing moto's in-memory objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from pathlib import Path

from sdtask.devcluster.processes import ManagedProcess, free_port


class Relay:
    """127.0.0.1:<port> relayed to `target_port` on loopback, as a process that can be stopped and started again
    on the same port."""

    def __init__(self, workdir: Path, target_port: int, name: str = "relay") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = ManagedProcess(
            name,
            [sys.executable, "-m", "sdtask.devcluster.relay", f"127.0.0.1:{self.port}=127.0.0.1:{target_port}"],
            workdir / f"{name}-{self.port}.log",
        )

    def start(self) -> Relay:
        self.process.start()
        self.process.wait_until(self._listening, 30, "listening")
        return self

    def stop(self) -> None:
        self.process.kill()  # an outage: no grace, connections cut

    def _listening(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1):
            return True


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


def _split(address: str) -> tuple[str, int]:
    host, port = address.rsplit(":", 1)
    return host, int(port)


async def _serve(listen: str, target: str) -> asyncio.Server:
    target_host, target_port = _split(target)

    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(target_host, target_port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(_pipe(client_reader, upstream_writer), _pipe(upstream_reader, client_writer))

    host, port = _split(listen)
    return await asyncio.start_server(handle, host, port, reuse_address=True)


async def _main(mappings: list[str]) -> None:
    servers = [await _serve(*mapping.split("=", 1)) for mapping in mappings]
    print(f"relaying {', '.join(mappings)}", flush=True)
    await asyncio.gather(*(server.serve_forever() for server in servers))


if __name__ == "__main__":
    if len(sys.argv) < 2 or not all("=" in arg for arg in sys.argv[1:]):
        sys.exit("usage: python -m sdtask.devcluster.relay LISTEN_HOST:PORT=TARGET_HOST:PORT ...")
    asyncio.run(_main(sys.argv[1:]))
