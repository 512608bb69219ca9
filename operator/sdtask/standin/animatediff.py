"""The sd-webui-animatediff extension as the stand-in plays it (its `alwayson_scripts` entry "AnimateDiff")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sdtask.standin.fields import int_field

MAX_ANIMATION_FRAMES = 64


@dataclass(frozen=True)
class Animation:
    """What the AnimateDiff extension was asked for, when it was asked for a GIF."""

    frames: int
    fps: int
    loop: int


def parse_animatediff(scripts: dict[str, Any]) -> Animation | None:
    """AnimateDiff's options from `alwayson_scripts`, or None unless it is enabled with GIF among its formats."""
    entry = next((value for key, value in scripts.items() if key.lower() == "animatediff"), None)
    args = entry.get("args") if isinstance(entry, dict) else None
    if not isinstance(args, list) or not args or not isinstance(args[0], dict):
        return None
    options = args[0]
    formats = options.get("format", ["GIF"])
    formats = [formats] if isinstance(formats, str) else formats
    wants_gif = isinstance(formats, list) and any(isinstance(item, str) and "gif" in item.lower() for item in formats)
    if not options.get("enable", True) or not wants_gif:
        return None
    frames = int_field(options, "video_length", 4)
    return Animation(
        frames=min(frames, MAX_ANIMATION_FRAMES) if frames > 0 else 4,
        fps=int_field(options, "fps", 8, minimum=1, maximum=100),
        loop=int_field(options, "loop_number", 0, minimum=0, maximum=65535),
    )
