"""A real S3-protocol server (moto's, see s3app.py) on loopback, as its own process so agents in other processes reach
it too."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from sdtask.devcluster.processes import ManagedProcess, ensure_port_free, free_port, http_ok

# moto accepts any credentials; fixed ones keep .dev/env stable and obviously fake.
LOCAL_ACCESS_KEY = "sdtask-local"
LOCAL_SECRET_KEY = "sdtask-local-secret"
LOCAL_REGION = "us-east-1"


@dataclass(frozen=True)
class S3Endpoint:
    url: str
    region: str = LOCAL_REGION
    access_key_id: str = LOCAL_ACCESS_KEY
    secret_access_key: str = LOCAL_SECRET_KEY


class LocalS3Server:
    def __init__(self, workdir: Path, port: int = 0) -> None:
        if port:
            ensure_port_free("s3 (moto)", port)
        self.port = port or free_port()
        self.process = ManagedProcess(
            "s3 (moto)",
            [sys.executable, "-m", "sdtask.devcluster.s3app", "--port", str(self.port)],
            workdir / "logs" / "s3.log",
        )
        self.endpoint = S3Endpoint(url=f"http://127.0.0.1:{self.port}")

    def start(self) -> LocalS3Server:
        self.process.start()
        self.process.wait_until(lambda: http_ok(self.endpoint.url + "/moto-api/"), 60, "serving")
        return self

    def stop(self) -> None:
        self.process.stop()
