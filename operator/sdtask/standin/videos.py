"""The stand-in's AnimateDiff videos: tiny files in each real container, so format detection by bytes is exercised.

sd-webui-animatediff (`scripts/animatediff_output.py`) writes GIF (Pillow), MP4 (PyAV, H.264), WEBP (Pillow,
animated) and WEBM (PyAV, VP9) and, for the API, returns each file base64-encoded. Encoding real H.264/VP9 is out of
reach without libraries and not needed: these files carry each container's real structure and magic bytes (GIF87a/89a;
an ISO-BMFF `ftyp` box with brand `isom` for MP4; `RIFF....WEBP` with `VP8X`/`ANIM`/`ANMF` chunks; an EBML header
`1A 45 DF A3` with DocType `webm`, then a Segment) plus the stand-in's JSON metadata, but frame payloads are pattern
bytes that a real decoder would reject.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from sdtask.standin.images import METADATA_KEY, metadata_text, pattern_digest, render_gif

EBML_MAGIC = b"\x1a\x45\xdf\xa3"


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def render_mp4(digest: bytes, metadata: dict[str, Any], *, frames: int) -> bytes:
    """ftyp (isom), a `free` box holding the metadata (as `sdtask-standin\\0{json}`), an `mdat` of frame bytes."""
    ftyp = _box(b"ftyp", b"isom" + struct.pack(">I", 0x200) + b"isomiso2avc1mp41")
    free = _box(b"free", METADATA_KEY.encode() + b"\0" + metadata_text(metadata).encode())
    mdat = _box(b"mdat", b"".join(pattern_digest(digest, "mp4", frame) for frame in range(frames)))
    return ftyp + free + mdat


def _riff_chunk(kind: bytes, payload: bytes) -> bytes:
    return kind + struct.pack("<I", len(payload)) + payload + (b"\0" if len(payload) % 2 else b"")


def render_webp(digest: bytes, metadata: dict[str, Any], *, frames: int, side: int = 64, fps: int = 8) -> bytes:
    """An animated WebP layout: VP8X (animation + XMP flags), ANIM, one ANMF per frame, metadata in an `XMP ` chunk."""
    canvas = struct.pack("<I", side - 1)[:3] * 2
    vp8x = _riff_chunk(b"VP8X", bytes([0x02 | 0x04, 0, 0, 0]) + canvas)
    anim = _riff_chunk(b"ANIM", b"\0\0\0\0" + struct.pack("<H", 0))
    duration = struct.pack("<I", max(1, round(1000 / max(1, fps))))[:3]
    anmf = b"".join(
        _riff_chunk(b"ANMF", b"\0" * 6 + canvas + duration + b"\0" + _riff_chunk(b"VP8L", pattern_digest(digest, n)))
        for n in range(frames)
    )
    xmp = _riff_chunk(b"XMP ", METADATA_KEY.encode() + b"\0" + metadata_text(metadata).encode())
    body = b"WEBP" + vp8x + anim + anmf + xmp
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _ebml_size(size: int) -> bytes:
    """An 8-byte EBML variable-size integer (marker 0x01, then 7 bytes), valid for any size here."""
    return bytes([0x01]) + size.to_bytes(7, "big")


def _ebml(element_id: bytes, payload: bytes) -> bytes:
    return element_id + _ebml_size(len(payload)) + payload


def render_webm(digest: bytes, metadata: dict[str, Any], *, frames: int) -> bytes:
    """EBML header (DocType webm), then a Segment whose Info carries the metadata as Title and a Void of frames."""
    header = _ebml(
        EBML_MAGIC,
        _ebml(b"\x42\x86", b"\x01")  # EBMLVersion
        + _ebml(b"\x42\xf7", b"\x01")  # EBMLReadVersion
        + _ebml(b"\x42\x82", b"webm")  # DocType
        + _ebml(b"\x42\x87", b"\x04")  # DocTypeVersion
        + _ebml(b"\x42\x85", b"\x02"),  # DocTypeReadVersion
    )
    info = _ebml(b"\x15\x49\xa9\x66", _ebml(b"\x7b\xa9", (METADATA_KEY + "\0" + metadata_text(metadata)).encode()))
    void = _ebml(b"\xec", b"".join(pattern_digest(digest, "webm", frame) for frame in range(frames)))
    return header + _ebml(b"\x18\x53\x80\x67", info + void)


def render_video(kind: str, digest: bytes, metadata: dict[str, Any], *, frames: int, fps: int, loop: int) -> bytes:
    """One AnimateDiff output file of `kind` (GIF, MP4, WEBP, WEBM)."""
    if kind == "GIF":
        return render_gif(digest, metadata, frames=frames, fps=fps, loop=loop)
    if kind == "MP4":
        return render_mp4(digest, metadata, frames=frames)
    if kind == "WEBP":
        return render_webp(digest, metadata, frames=frames, fps=fps)
    if kind == "WEBM":
        return render_webm(digest, metadata, frames=frames)
    raise ValueError(f"no video format {kind!r}")


def video_metadata(data: bytes) -> dict[str, Any] | None:
    """The stand-in metadata of an MP4, WebP or WebM made here, else None."""
    marker = METADATA_KEY.encode() + b"\0"
    if not (data[4:8] == b"ftyp" or (data[:4] == b"RIFF" and data[8:12] == b"WEBP") or data.startswith(EBML_MAGIC)):
        return None
    at = data.find(marker)
    if at < 0:
        return None
    text = data[at + len(marker) :]
    try:
        value, _ = json.JSONDecoder().raw_decode(text.decode("utf-8", errors="replace"))
    except ValueError:
        return None
    return value if isinstance(value, dict) and "endpoint" in value else None
