"""The sd-webui-animatediff extension (v2) as the stand-in plays it: its `alwayson_scripts` entry "AnimateDiff".

Following `scripts/animatediff_ui.py` (`AnimateDiffProcess`, `_check`, `set_p`) and `scripts/animatediff_output.py`:
- the first of `args` is a dict turned into `AnimateDiffProcess(**args)`: an unknown key is a TypeError (500);
- nothing happens unless `enable` is true (its default is false);
- `_check`: `video_length >= 0` and `fps > 0`, and at least one of GIF, MP4, WEBP, WEBM, PNG among `format`
  (else an AssertionError, 500);
- `set_p`: the batch size becomes `max(video_length, batch_size)` (the context batch size, default 16), and a
  `video_length` of 0 becomes that batch size;
- the output, for each batch of frames: one file per video format in the fixed order GIF, MP4, WEBP, WEBM, made of
  `video_length` frames; for the API, `images` is then every video base64-encoded, followed by the last video's
  frames only when "Frame" is among the formats. Without any video format (only PNG/TXT) the frames stay as images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sdtask.standin.errors import ApiError, webui_error

VIDEO_FORMATS = ("GIF", "MP4", "WEBP", "WEBM")  # the order _save writes (and the API returns) them
CHECKED_FORMATS = frozenset({"GIF", "MP4", "WEBP", "WEBM", "PNG"})  # supported_save_formats[:-1]
MAX_FRAMES = 64  # the stand-in's own guard, as for batch sizes
# AnimateDiffProcess.__init__'s parameters and defaults (the ones the stand-in reads).
PARAMETERS: dict[str, Any] = {
    "model": "mm_sd15_v3.safetensors",
    "enable": False,
    "video_length": 0,
    "fps": 8,
    "loop_number": 0,
    "closed_loop": "R-P",
    "batch_size": 16,
    "stride": 1,
    "overlap": -1,
    "format": ["GIF", "PNG"],
    "interp": "Off",
    "interp_x": 10,
    "video_source": None,
    "video_path": "",
    "mask_path": "",
    "freeinit_enable": False,
    "freeinit_filter": "butterworth",
    "freeinit_ds": 0.25,
    "freeinit_dt": 0.25,
    "freeinit_iters": 3,
    "latent_power": 1,
    "latent_scale": 32,
    "last_frame": None,
    "latent_power_last": 1,
    "latent_scale_last": 32,
    "request_id": "",
}


@dataclass(frozen=True)
class Animation:
    """An enabled AnimateDiff request, after `set_p`."""

    video_length: int  # frames per video
    batch_size: int  # frames generated per batch (p.batch_size)
    fps: int
    loop: int
    formats: tuple[str, ...]
    model: str

    @property
    def videos(self) -> tuple[str, ...]:
        return tuple(kind for kind in VIDEO_FORMATS if kind in self.formats)

    @property
    def returns_frames(self) -> bool:
        return "Frame" in self.formats


def _error(kind: str, message: str) -> ApiError:
    return webui_error(500, kind, message)


def _number(options: dict[str, Any], key: str) -> int:
    value = options.get(key, PARAMETERS[key])
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _error("TypeError", f"'>=' not supported between instances of '{type(value).__name__}' and 'int'")
    return int(value)


def parse_animatediff(scripts: dict[str, Any]) -> Animation | None:
    """AnimateDiff's arguments from `alwayson_scripts` (key matched case-insensitively), or None when not enabled."""
    entry = next((value for key, value in scripts.items() if key.lower() == "animatediff"), None)
    args = entry.get("args") if isinstance(entry, dict) else None
    if not isinstance(args, list) or not args:
        return None  # the script runs with its UI defaults: not enabled
    options = args[0]
    if not isinstance(options, dict):
        raise _error("AttributeError", f"'{type(options).__name__}' object has no attribute 'enable'")
    unknown = next((key for key in options if key not in PARAMETERS), None)
    if unknown is not None:
        raise _error("TypeError", f"AnimateDiffProcess.__init__() got an unexpected keyword argument '{unknown}'")
    if not options.get("enable", False):
        return None
    video_length, fps = _number(options, "video_length"), _number(options, "fps")
    if not (video_length >= 0 and fps > 0):
        raise _error("AssertionError", "Video length and FPS should be positive.")
    formats = options.get("format", PARAMETERS["format"])
    # _check: `set(...).isdisjoint(self.format)`; a bare string ("GIF") is iterated as its characters, so it fails.
    if not isinstance(formats, list) or CHECKED_FORMATS.isdisjoint(f for f in formats if isinstance(f, str)):
        raise _error("AssertionError", "At least one saving format should be selected.")
    context = _number(options, "batch_size")
    batch_size = max(video_length, context)
    if batch_size > MAX_FRAMES:
        raise _error("ValueError", f"the stand-in renders at most {MAX_FRAMES} frames per batch")
    return Animation(
        video_length=video_length or batch_size,
        batch_size=batch_size,
        fps=fps,
        loop=_number(options, "loop_number"),
        formats=tuple(f for f in formats if isinstance(f, str)),
        model=str(options.get("model", PARAMETERS["model"])),
    )
