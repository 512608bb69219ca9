"""The job state behind /sdapi/v1/progress: the real server's `shared.state` (modules/shared_state.py) and the
progress formula of modules/progress.py."""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class JobState:
    """The real server's `shared.state`, as far as /progress shows it."""

    job: str = ""
    job_count: int = 0
    job_no: int = 0
    job_timestamp: str = "0"
    sampling_step: int = 0
    sampling_steps: int = 0
    interrupted: bool = False
    skipped: bool = False
    time_start: float = field(default_factory=time.monotonic)

    def begin(self, job: str, job_count: int, sampling_steps: int) -> None:
        self.job, self.job_count, self.job_no = job, job_count, 0
        self.sampling_step, self.sampling_steps = 0, sampling_steps
        self.interrupted = self.skipped = False
        self.job_timestamp = datetime.datetime.now().strftime("%Y%m%d%H%M%S")
        self.time_start = time.monotonic()

    def end(self) -> None:
        self.job, self.job_count = "", 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "skipped": self.skipped,
            "interrupted": self.interrupted,
            "stopping_generation": False,
            "job": self.job,
            "job_count": self.job_count,
            "job_timestamp": self.job_timestamp,
            "job_no": self.job_no,
            "sampling_step": self.sampling_step,
            "sampling_steps": self.sampling_steps,
        }

    def progress(self) -> dict[str, Any]:
        if self.job_count <= 0:
            return {
                "progress": 0.0,
                "eta_relative": 0.0,
                "state": self.as_dict(),
                "current_image": None,
                "textinfo": None,
            }
        # The real formula: a small head start so that the ETA never divides by zero.
        done = 0.01 + self.job_no / self.job_count
        if self.sampling_steps > 0:
            done += self.sampling_step / self.sampling_steps / self.job_count
        elapsed = time.monotonic() - self.time_start
        return {
            "progress": min(done, 1.0),
            "eta_relative": elapsed / done - elapsed,
            "state": self.as_dict(),
            "current_image": None,
            "textinfo": None,
        }
