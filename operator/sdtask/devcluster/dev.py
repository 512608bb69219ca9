"""`make dev` (`python -m sdtask.devcluster.dev`): the whole system running locally until Ctrl-C or SIGTERM."""

from __future__ import annotations

import shlex
import shutil
import signal
import threading
from pathlib import Path

from sdtask.devcluster.processes import StackError, run_folder_command
from sdtask.devcluster.stack import DevStack
from sdtask.devcluster.system import LocalSystem


def write_env_file(path: Path, env: dict[str, str]) -> None:
    path.write_text("".join(f"export {key}={shlex.quote(value)}\n" for key, value in sorted(env.items())))
    path.chmod(0o600)


def run_dev(state_dir: Path) -> int:
    """Run the whole system locally until Ctrl-C."""
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    state_dir = state_dir.resolve()
    shutil.rmtree(state_dir / "stack", ignore_errors=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    with DevStack(workdir=state_dir / "stack") as stack, LocalSystem(stack) as system:
        kubeconfig = state_dir / "kubeconfig"
        shutil.copyfile(stack.kubeconfig, kubeconfig)
        kubeconfig.chmod(0o600)
        env = {**stack.env(), "KUBECONFIG": str(kubeconfig.resolve())}
        write_env_file(state_dir / "env", env)
        print(f"local system is up: control plane, GPU pools, S3, operator (logs in {state_dir / 'stack'})")
        for key, value in sorted(env.items()):
            print(f"  {key}={value}")
        print(f"  operator metrics: {system.metrics_url}")
        print(
            f"try:  source {state_dir / 'env'} && kubectl get nodes -L sdtask.io/pool\n"
            "      kubectl apply -f examples/runtime-static.yaml && kubectl get sdr\n"
            "Ctrl-C stops everything.",
            flush=True,
        )
        while not stopping.wait(1.0):
            if stack.control_plane:
                stack.control_plane.check_alive()
            if not system.operator.running():
                raise StackError("operator", "exited", system.operator.log)
    print("local stack stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_folder_command(
        "sdtask.devcluster.dev", run_dev, "--state-dir", ".dev", "where the kubeconfig, env file and logs go", argv
    )


if __name__ == "__main__":
    raise SystemExit(main())
