"""A stand-in for the AUTOMATIC1111 Stable Diffusion Web UI API: a real HTTP server, no GPU, stdlib only.

Used as the test double for the Web UI in tests, `make dev` and `make demo`. See `server.StandinWebUI`, the command
line in `cli.py` (the real Web UI's launch flags) and `weights.write_checkpoint` for checkpoint files that load.
"""

from sdtask.standin.checkpoints import CheckpointInfo
from sdtask.standin.cli import main
from sdtask.standin.images import read_standin_metadata
from sdtask.standin.server import StandinWebUI
from sdtask.standin.weights import checkpoint_bytes, write_checkpoint

__all__ = [
    "CheckpointInfo",
    "StandinWebUI",
    "checkpoint_bytes",
    "main",
    "read_standin_metadata",
    "write_checkpoint",
]
