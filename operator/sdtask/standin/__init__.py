"""A stand-in for the AUTOMATIC1111 Stable Diffusion Web UI API: a real HTTP server, no GPU, stdlib only.

Used as the test double for the Web UI in tests, `make dev` and `make demo`. See `server.StandinWebUI`.
"""

from sdtask.standin.images import read_standin_metadata
from sdtask.standin.server import Checkpoint, StandinWebUI, main

__all__ = ["Checkpoint", "StandinWebUI", "main", "read_standin_metadata"]
