"""Child processes of the local stack: each logs to its own file and dies with its whole process group."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self


class StackError(RuntimeError):
    """A component of the local stack failed; the message names it and quotes the tail of its log."""

    def __init__(self, component: str, reason: str, log: Path | None = None) -> None:
        tail = log_tail(log) if log else ""
        message = f"{component}: {reason}"
        if tail:
            message += f"\n--- last lines of {log} ---\n{tail}"
        super().__init__(message)
        self.component = component


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    """A readiness probe for `ManagedProcess.wait_until` (which treats a refused connection as not ready yet)."""
    with urllib.request.urlopen(url, context=context, timeout=2) as response:
        return bool(response.status == 200)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_port_free(component: str, port: int) -> None:
    """Fail before starting a process that would only die later with a less clear bind error."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as error:
            raise StackError(component, f"port 127.0.0.1:{port} is already in use ({error.strerror})") from None


class ManagedProcess:
    def __init__(self, component: str, argv: Sequence[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.component = component
        self.argv = list(argv)
        self.log = log
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        executable = Path(self.argv[0])
        if executable.is_absolute() and not os.access(executable, os.X_OK):
            raise StackError(self.component, f"binary {executable} is missing or not executable")
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log_file:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(self.env or {})},
                start_new_session=True,  # its own process group, so teardown reaches its children too
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait(self, timeout: float) -> int:
        """The exit code, once the process has ended (it is killed after `timeout`)."""
        assert self.process is not None
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.process.wait()

    def wait_until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll `ready` until it holds; fail at once, with the log, if the process exits first."""
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            if not self.running():
                code = self.process.returncode if self.process else None
                raise StackError(self.component, f"exited with code {code} before {what}", self.log)
            with contextlib.suppress(Exception):
                if ready():
                    return
            if time.monotonic() > deadline:
                raise StackError(self.component, f"not {what} after {timeout:.0f}s", self.log)
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def kill(self) -> None:
        """No grace, as when the machine under the process dies."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self, grace: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=grace)


class LocalPart:
    """A part of the local cluster (control plane, real node, the stack, the system): `start` runs `_start` and, when
    that fails part way, stops what already runs before raising; a context manager. `_spawn` starts one child
    process logging to `<workdir>/logs/<component>.log` and keeps it in `processes`, for `stop` to end."""

    workdir: Path
    processes: list[ManagedProcess]

    def start(self) -> Self:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def _spawn(self, component: str, argv: list[str], env: dict[str, str] | None = None) -> ManagedProcess:
        process = ManagedProcess(component, argv, self.workdir / "logs" / f"{component}.log", env).start()
        self.processes.append(process)
        return process

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def run_folder_command(
    prog: str, run: Callable[[Path], int], option: str, default: str, help: str, argv: list[str] | None = None
) -> int:
    """The command line of `make dev` and `make demo`: one folder option and --log-level, then `run(folder)`."""
    from sdtask.logs import configure

    parser = argparse.ArgumentParser(prog=f"python -m {prog}", description=run.__doc__)
    parser.add_argument(option, default=default, help=help)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    configure(args.log_level, "auto", prog.rsplit(".", 1)[-1])
    return run(Path(getattr(args, option.lstrip("-").replace("-", "_"))))
