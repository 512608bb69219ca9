"""The `sdtask` command line (see app.py)."""

from __future__ import annotations

from sdtask.cli.app import app, main, parse_command_line

__all__ = ["app", "main", "parse_command_line"]
