"""Media format detection and base64 image decoding (pure).

The Web UI returns images as base64 strings; the real format (PNG by default, GIF/MP4/WebP/WebM from animation
extensions such as AnimateDiff, JPEG/WebP when the Web UI is configured so) decides the S3 key extension and
Content-Type.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class MediaFormat:
    extension: str
    content_type: str


PNG = MediaFormat("png", "image/png")
GIF = MediaFormat("gif", "image/gif")
JPEG = MediaFormat("jpg", "image/jpeg")
WEBP = MediaFormat("webp", "image/webp")
MP4 = MediaFormat("mp4", "video/mp4")
WEBM = MediaFormat("webm", "video/webm")
AVIF = MediaFormat("avif", "image/avif")

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_GIF_MAGICS = (b"GIF87a", b"GIF89a")
_EBML_MAGIC = b"\x1a\x45\xdf\xa3"  # Matroska/WebM; AnimateDiff's WEBM format
# ISO-BMFF brands that mean a still image, not a video: those share the `ftyp` box with MP4.
_AVIF_BRANDS = (b"avif", b"avis")

_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]*)*?),", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")


def detect_format(data: bytes) -> MediaFormat:
    """Format of `data` from its magic bytes; PNG when unknown (what the Web UI produces by default)."""
    if data.startswith(_PNG_MAGIC):
        return PNG
    if data.startswith(_GIF_MAGICS):
        return GIF
    if data.startswith(_JPEG_MAGIC):
        return JPEG
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return WEBP
    if len(data) >= 12 and data[4:8] == b"ftyp":
        return AVIF if data[8:12] in _AVIF_BRANDS else MP4
    if data.startswith(_EBML_MAGIC):
        return WEBM
    return PNG


def decode_image_payload(value: str) -> bytes:
    """Bytes of a base64 image, with or without a `data:<mime>;base64,` prefix.

    Raises ValueError with a short description (never the whole payload) when `value` is not base64.
    """
    if not isinstance(value, str):
        raise ValueError(f"image payload must be a base64 string, got {type(value).__name__}")
    text = value.strip()
    if text[:5].lower() == "data:":
        text = _strip_data_uri(text)
    # The Web UI and some clients wrap base64 at 76 columns; padding is sometimes dropped.
    text = _WHITESPACE.sub("", text)
    if not text:
        raise ValueError("image payload is empty")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"image payload is not valid base64 ({_preview(value)}): {exc}") from None


def _strip_data_uri(text: str) -> str:
    match = _DATA_URI.match(text)
    if match is None:
        raise ValueError(f"malformed data URI ({_preview(text)}): no ',' after the media type")
    params = match.group("params").lower().split(";")
    if "base64" not in params:
        raise ValueError(f"data URI is not base64-encoded ({_preview(text)})")
    return text[match.end() :]


def _preview(value: str, limit: int = 24) -> str:
    shown = value[:limit]
    more = f"... ({len(value)} chars)" if len(value) > limit else ""
    return f"{shown!r}{more}"
