"""The whole system running locally: the stack, the CRDs, the operator, and the pods' sidecars (agent + stand-in)."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from sdtask.devcluster.crds import install_crds
from sdtask.devcluster.processes import LocalPart, ManagedProcess, free_port, http_ok
from sdtask.devcluster.sidecars import SidecarSimulator, StandinTiming
from sdtask.devcluster.stack import DevStack
from sdtask.standin.weights import checkpoint_bytes

REPO_CRDS = Path(__file__).resolve().parents[3] / "crds"
# The checkpoint store the examples' runtimes name (models.s3Prefix: s3://sdtask-models/checkpoints/), played by the
# local S3 server with a loadable stand-in checkpoint, so their fetch-model init container has something to fetch.
MODEL_STORE_BUCKET = "sdtask-models"
MODEL_STORE_PREFIX = "checkpoints/"
EXAMPLE_CHECKPOINTS = ("v1-5-pruned-emaonly.safetensors",)


class LocalSystem(LocalPart):
    def __init__(
        self,
        stack: DevStack,
        *,
        crds: Path = REPO_CRDS,
        timing: StandinTiming | None = None,
        operator_env: dict[str, str] | None = None,
        agent_env: dict[str, str] | None = None,
    ) -> None:
        self.stack = stack
        self.crds = crds
        self.workdir = stack.workdir / "system"
        self.metrics_port = free_port()
        # Local test hosts (image servers, callback receivers) live on loopback: allowed here, refused by default.
        env = {
            "KUBECONFIG": str(stack.kubeconfig),
            "SDTASK_METRICS_PORT": str(self.metrics_port),
            "SDTASK_ALLOW_PRIVATE_CALLBACKS": "true",
            "SDTASK_RETRY_BACKOFF_SECONDS": "1",
            "SDTASK_HOUSEKEEPING_SECONDS": "1",
            **(operator_env or {}),
        }
        self.operator = ManagedProcess(
            "operator",
            [sys.executable, "-m", "sdtask.cli", "operator", "--liveness", ""],
            self.workdir / "operator.log",
            env=env,
        )
        self.sidecars = SidecarSimulator(
            kubeconfig=stack.kubeconfig,
            workdir=self.workdir,
            models_root=self.workdir / "models",
            timing=timing or StandinTiming(),
            extra_agent_env=agent_env or {},
            # What a pod without an S3 endpoint or credentials gets from its identity in a cloud: here, local S3.
            default_agent_env={
                "SDTASK_S3_ENDPOINT": stack.s3.url,
                "AWS_ACCESS_KEY_ID": stack.s3.access_key_id,
                "AWS_SECRET_ACCESS_KEY": stack.s3.secret_access_key,
            },
        )

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def _start(self) -> None:
        self.seed_model_store()
        with self.stack.api_client() as client:
            install_crds(client, self.crds)
        self._start_operator()
        self.sidecars.start()

    def seed_model_store(self) -> None:
        s3 = self.stack.s3_client()
        with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists):
            s3.create_bucket(Bucket=MODEL_STORE_BUCKET)
        for name in EXAMPLE_CHECKPOINTS:
            s3.put_object(Bucket=MODEL_STORE_BUCKET, Key=f"{MODEL_STORE_PREFIX}{name}", Body=checkpoint_bytes(name))

    def restart_operator(self, crash: bool = True) -> None:
        """Kill (or stop) the operator and start it again, as a node failure or a rollout would."""
        if crash:
            self.operator.kill()
        else:
            self.operator.stop()
        self._start_operator()

    def _start_operator(self) -> None:
        self.operator.start()
        self.operator.wait_until(lambda: http_ok(self.metrics_url), 60, "serving metrics")

    def stop(self) -> None:
        self.sidecars.stop()
        self.operator.stop()
