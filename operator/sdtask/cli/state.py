"""Options given before the command (`sdtask --log-level debug operator`), shared by every command."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class GlobalSettings:
    log_level: str = "info"
    log_format: str = "auto"


_SETTINGS = GlobalSettings()


def settings() -> GlobalSettings:
    return _SETTINGS
